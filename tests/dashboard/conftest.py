"""The dashboard's tests: ``cli_helpers`` (tests/integration) made importable, and a headless Chromium.

Browser tests need Debian's ``chromium`` and ``chromium-driver`` and ``selenium``; where one is missing they
skip with the reason, except under SUANLI_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

if "cli_helpers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "cli_helpers", Path(__file__).parent.parent / "integration" / "cli_helpers.py")
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["cli_helpers"] = _module
    _spec.loader.exec_module(_module)


def _missing(why: str) -> None:
    if os.environ.get("SUANLI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SUANLI_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromium-driver, with the page's console kept (``get_log("browser")``)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _missing("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
