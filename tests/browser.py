"""A real browser for the tests: headless Chromium from the Debian packages, driven by Selenium.

The browser and its driver are the Debian ``chromium`` and ``chromium-driver`` packages (scripts/install-services);
nothing is ever downloaded. Selenium Manager (Selenium's own downloader) is never run: it is called only when the
driver's path is not given (selenium.webdriver.common.driver_finder.DriverFinder), and here it always is.
The fixtures (``browser``, ``page``, a screenshot of each failed test) are in ``conftest.py``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from helpers import PROJECT
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")  # Debian package chromium
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian package chromium-driver
MISSING = f"Chromium is missing ({CHROMIUM}, {CHROMEDRIVER}): run scripts/install-services (as root or with sudo)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

T = TypeVar("T")


def have_chromium() -> bool:
    return all(path.is_file() and os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER))


def artifacts_dir() -> Path:
    """Where screenshots (and the driver's log) go: $BLOODCELL_TEST_ARTIFACTS, else runs/test-artifacts (git-ignored)."""
    directory = Path(os.environ.get("BLOODCELL_TEST_ARTIFACTS") or PROJECT / "runs" / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Chromium(webdriver.Chrome):
    """webdriver.Chrome that removes its temporary profile when it quits."""

    profile: Path

    def quit(self) -> None:
        try:
            super().quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def chromium(artifacts: Path) -> webdriver.Chrome:
    """A fresh headless Chromium on a profile of its own; chromedriver logs to ARTIFACTS/chromedriver.log."""
    if not have_chromium():
        raise RuntimeError(MISSING)
    # Selenium Manager is not called (the driver's path is given); were it ever, no statistics and no downloads
    os.environ["SE_AVOID_STATS"] = "true"
    os.environ["SE_OFFLINE"] = "true"
    os.environ.pop("SE_CHROMEDRIVER", None)  # a driver named there would take precedence over CHROMEDRIVER
    artifacts.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="bloodcell-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",  # no component updates, safe-browsing lists or other calls out
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(artifacts / "chromedriver.log"))
    try:
        driver = Chromium(options=options, service=service)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.profile = profile
    driver.implicitly_wait(0)
    driver.set_page_load_timeout(30)
    return driver


def screenshot(driver: webdriver.Chrome, artifacts: Path, name: str) -> Path:
    """Save what the browser shows as ARTIFACTS/NAME.png (NAME made safe for a file name); its path."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removesuffix(".png")).strip("._") or "screenshot"
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"{stem[:150]}.png"
    data = driver.get_screenshot_as_png()
    assert data.startswith(PNG_SIGNATURE), "the browser returned no PNG screenshot"
    path.write_bytes(data)
    return path


def docs_screenshot(driver: webdriver.Chrome, name: str, scale: float = 0.6, colours: int = 96) -> Path | None:
    """With $BLOODCELL_DOCS_SCREENSHOTS set (scripts/screenshots), what the browser shows as docs/NAME.png: scaled down
    and reduced to a palette, so that it stays small in the repository; None without it."""
    if not os.environ.get("BLOODCELL_DOCS_SCREENSHOTS"):
        return None
    from PIL import Image

    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    small = shot.resize((round(shot.width * scale), round(shot.height * scale)), Image.Resampling.LANCZOS)
    path = PROJECT / "docs" / f"{name}.png"
    small.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def wait_for(driver: webdriver.Chrome, condition_fn: Callable[[webdriver.Chrome], T], timeout: float = 30, message: str = "") -> T:
    """Poll CONDITION_FN(driver) until it returns something truthy (missing or stale elements count as not yet); that value."""
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    return wait.until(condition_fn, message or f"condition not met after {timeout} s")


def wait_text(driver: webdriver.Chrome, css: str, text: str, timeout: float = 30) -> WebElement:
    """Wait until the element at CSS selector CSS shows TEXT (a substring of its visible text); the element."""

    def shown(d: webdriver.Chrome) -> WebElement | bool:
        element = d.find_element(By.CSS_SELECTOR, css)
        return element if text in element.text else False

    try:
        return wait_for(driver, shown, timeout)
    except TimeoutException:
        elements = driver.find_elements(By.CSS_SELECTOR, css)
        seen = repr(elements[0].text) if elements else "no such element"
        raise TimeoutException(f"{css!r} did not show {text!r} after {timeout} s (it shows {seen})") from None
