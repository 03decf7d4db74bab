"""Shared fixtures (a tiny trained model, real Redis and PostgreSQL servers) and the real-data rule.

Tests that read ../shared/data are marked ``real_data`` (per module). Without the data those tests are
skipped with the reason, and the rest run; with BLOODCELL_REQUIRE_DATA=1 (scripts/test, so CI) missing
data stops the run instead.

Browser tests take ``browser`` (one headless Chromium for the session) or ``page`` (the same browser, with
its cookies cleared after each test); a test that fails with either saves a screenshot named after it in
``browser.artifacts_dir()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from browser import MISSING, artifacts_dir, chromium, have_chromium, screenshot
from helpers import DATA, KAGGLE5, PBC8, have_real_data
from servers import PostgresServer, RedisServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("BLOODCELL_REQUIRE_DATA") == "1" and not have_real_data():
        raise pytest.UsageError(f"the real datasets are expected at {DATA} (../shared/data beside the project)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if have_real_data():
        return
    skip = pytest.mark.skip(reason=f"needs the real datasets at {DATA}")
    for item in items:
        if item.get_closest_marker("real_data"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pbc8_index():
    from bloodcell_core.ml.dataset import index_dataset

    return index_dataset(PBC8, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact_cnn trained for one epoch on 12 real images per class: fast, and real end to end."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    train(TrainingPlan("compact_cnn", KAGGLE5, out, epochs=1, max_per_class=12), progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    directory = Path(tempfile.mkdtemp(prefix="bloodcell-pg-"))  # /tmp: reachable by the postgres user
    server = PostgresServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed browser test leaves a screenshot of what the browser showed, named after the test."""
    report = yield
    driver = getattr(item, "funcargs", {}).get("browser")
    if report.failed and report.when in ("setup", "call") and driver is not None:
        try:
            path = screenshot(driver, artifacts_dir(), f"FAILED-{item.nodeid}")
            report.sections.append(("browser screenshot", str(path)))
        except Exception as error:  # a crashed browser: the test's own failure is what matters
            report.sections.append(("browser screenshot", f"none: {error!r}"))
    return report


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, driven by Selenium) for the whole session."""
    if not have_chromium():
        pytest.fail(MISSING, pytrace=False)
    driver = chromium(artifacts_dir())
    yield driver
    driver.quit()


@pytest.fixture
def page(browser):
    """The session's browser for one test: cookies (every site's) are cleared and the tab is blank afterwards."""
    yield browser
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    browser.get("about:blank")
