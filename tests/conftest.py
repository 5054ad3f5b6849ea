"""Shared fixtures: deterministic keys and honest evidence to break in tests."""

from __future__ import annotations

import pytest

from settlement.testing import key_from_label, make_chain


@pytest.fixture
def provider_key():
    return key_from_label("provider")


@pytest.fixture
def buyer_key():
    return key_from_label("buyer")


@pytest.fixture
def evidence(provider_key, buyer_key):
    return make_chain(provider_key, buyer_key, 4)
