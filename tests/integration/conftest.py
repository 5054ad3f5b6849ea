"""Makes ``cli_helpers`` importable by this directory's tests: the suite imports test modules with
``--import-mode=importlib``, which puts no test directory on ``sys.path``. Loaded by pytest before
any test module here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "cli_helpers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("cli_helpers", Path(__file__).with_name("cli_helpers.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["cli_helpers"] = _module
    _spec.loader.exec_module(_module)
