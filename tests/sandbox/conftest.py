"""Fixtures for the sandbox's pure tests: the NVML recordings (real H200 data, see their README)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

NVML_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"


@pytest.fixture(scope="session")
def _nvml_cache():
    return {}


@pytest.fixture
def nvml_recording(_nvml_cache):
    """Load a recording by file name; each call returns a fresh copy that a test may change."""

    def load(name: str):
        if name not in _nvml_cache:
            _nvml_cache[name] = json.loads((NVML_FIXTURES / name).read_text())
        return copy.deepcopy(_nvml_cache[name])

    return load
