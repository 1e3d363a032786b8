"""A real headless browser for tests of pages the node serves: Debian's ``chromium`` driven by
its ``chromium-driver`` through selenium, both installed by ``scripts/bootstrap``.

Nothing is downloaded: the browser and the driver are given by path, so selenium's own
driver manager is never consulted (``SE_OFFLINE`` keeps it off as well). Chromium runs as root
here, so it needs ``--no-sandbox``; a fresh profile directory per test, and no background
traffic (component updates, sync, first-run pages) to anything but the node under test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--window-size=1500,1300")
PAGE_WAIT_S = 30.0
"""Longest a page condition is awaited (the explorer polls every 2 s)."""


@contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """A selenium WebDriver on the system's chromium, with a fresh profile in ``profile``."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: run scripts/bootstrap (installs Debian's chromium and chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_in_page(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = PAGE_WAIT_S) -> Any:
    """Wait until ``condition(driver)`` is truthy (selenium's WebDriverWait, which polls), naming
    what was awaited and showing the page's text when it never comes."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(f"the page never showed {what} within {timeout} s; it shows:\n{body[:3000]}") from None
