"""The review console in a real browser (Debian's headless Chromium): a technologist's and a supervisor's day,
and what must be refused, against a real API process, worker, Redis and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from browser import artifacts_dir, screenshot, wait_for, wait_text
from helpers import DEFAULT_MODEL, encode, run_cli, unseen_images
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from servers import Stack, free_port, settings_for, start_api_server

from bloodcell_core.ml.artifacts import read_metadata

pytestmark = pytest.mark.real_data

PASSWORD = "correct horse battery"
INJECTED = "<img src=x onerror=window.pwned=1>"


@pytest.fixture(scope="module")
def console(redis_server, postgres_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home-console")
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/13",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/14",
        "BLOODCELL_DATABASE_URL": postgres_server.create_database("bloodcell_console"),
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
        "BLOODCELL_LOGIN_ATTEMPTS": "3",
        "BLOODCELL_LOGIN_LOCKOUT_MINUTES": "0.1",  # 6 s: throttled, then let in again
    }
    run_cli("db", "upgrade", env=env)
    for name, role in (("tech", "technologist"), ("sup", "supervisor"), ("admin", "admin")):
        subprocess.run(
            [str(Path(sys.executable).parent / "bloodcell"), "users", "create", name, "--role", role, "--password-stdin"],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
            env={**__import__("os").environ, **env},
        )
    stack = Stack(env=env, settings=settings_for(env))
    stack.start_worker("console-w1")
    server = start_api_server(env, home / "api.log")
    yield f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}", stack
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    stack.stop_workers()


def log_in(page, url: str, name: str, password: str = PASSWORD) -> None:
    page.get(f"{url}/ui/login")
    page.find_element(By.ID, "name").send_keys(name)
    page.find_element(By.ID, "password").send_keys(password + Keys.ENTER)


def log_out(page) -> None:
    page.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(page, lambda d: "/ui/login" in d.current_url)


def wait_classified(page) -> None:
    wait_for(page, lambda d: d.find_element(By.ID, "sample").get_attribute("data-status") not in ("queued", "running"), timeout=180)


def needs_review(page) -> list:
    return page.find_elements(By.CSS_SELECTOR, "button.cell.needs-review")


def test_a_day_in_the_console(page, console, tmp_path):
    url, stack = console
    shots = artifacts_dir() / "console"  # these show dataset images: runs/ is never committed
    classes = read_metadata(DEFAULT_MODEL).classes

    page.get(f"{url}/ui/")
    assert "/ui/login" in page.current_url  # no page without a session
    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")

    # submit real cells: blasts among them, so the sample gets the blast flag
    files = unseen_images("myeloblast", 4) + unseen_images("neutrophil", 3) + unseen_images("lymphocyte", 2)
    page.get(f"{url}/ui/submit")
    page.find_element(By.ID, "accession_id").send_keys("S-UI-1")
    page.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
    wait_text(page, "#chosen", "9 file(s) chosen")
    screenshot(page, shots, "1-submit")
    page.find_element(By.ID, "send").click()
    wait_for(page, lambda d: "/ui/samples/S-UI-1" in d.current_url)
    wait_classified(page)  # the page polls and reloads itself when the report is ready
    screenshot(page, shots, "2-sample")
    assert page.find_element(By.ID, "blast-banner").text.startswith("BLAST FLAG")
    assert len(page.find_elements(By.CSS_SELECTOR, "button.cell")) == 9
    assert page.find_elements(By.CSS_SELECTOR, "#differential tbody tr")

    # relabel with the keyboard: the first cell has the focus; a class's number opens the form on it
    first = page.switch_to.active_element
    assert "cell" in first.get_attribute("class")
    sha = first.get_attribute("data-sha")
    new_label = "monocyte" if first.get_attribute("data-label") != "monocyte" else "lymphocyte"
    first.send_keys(str(classes.index(new_label) + 1))
    reason = page.switch_to.active_element
    assert reason.get_attribute("id") == "relabel-reason"
    reason.send_keys("nucleus kidney-shaped" + Keys.ENTER)
    wait_text(page, f"#cell-{sha[:16]}", f"reviewed: {new_label} (tech)")
    # every other cell waiting for review gets its own label confirmed, by keyboard too
    while needs_review(page):
        cell = needs_review(page)[0]
        other = cell.get_attribute("data-sha")
        cell.click()
        page.find_element(By.ID, "relabel-reason").send_keys("checked on the smear" + Keys.ENTER)
        wait_text(page, f"#cell-{other[:16]}", "reviewed:")

    # a technologist may not sign off a sample with blasts
    page.find_element(By.ID, "signoff").click()
    wait_text(page, "#error", "signing it off needs the supervisor role")
    screenshot(page, shots, "3-refused")
    page.get(f"{url}/ui/")
    log_out(page)

    log_in(page, url, "sup")
    page.get(f"{url}/ui/samples/S-UI-1")
    page.find_element(By.ID, "signoff-comment").send_keys("blasts confirmed, haematologist informed")
    page.find_element(By.ID, "signoff").click()  # 9 cells, under BLOODCELL_SIGNOFF_MIN_LEUKOCYTES: confirm first
    wait_text(page, "#error", "confirm to sign off anyway")
    page.get(f"{url}/ui/samples/S-UI-1")
    page.find_element(By.ID, "signoff-comment").send_keys("blasts confirmed, haematologist informed")
    page.find_element(By.ID, "signoff-confirm").click()
    page.find_element(By.ID, "signoff").click()
    wait_text(page, "#report-status", "final")
    assert page.find_element(By.ID, "signed-off-by").text == "sup"
    wait_text(page, "#signoff-comment-shown", "blasts confirmed, haematologist informed")
    assert "leukocytes were classified" in page.find_element(By.ID, "signoff-history").text
    screenshot(page, shots, "4-signed-off")
    page.get(f"{url}/ui/samples/S-UI-1/export/fhir-r4")
    bundle = json.loads(page.find_element(By.TAG_NAME, "body").text)
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["status"] == "final"
    page.get(f"{url}/ui/")
    log_out(page)

    log_in(page, url, "admin")
    page.get(f"{url}/ui/audit?subject=S-UI-1")
    rows = [row.text for row in page.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert any("user:tech" in row and "cell.relabelled" in row for row in rows), rows
    assert any("user:sup" in row and "sample.signed_off" in row for row in rows), rows
    assert any("user:tech" in row and "sample.submitted" in row for row in rows), rows
    screenshot(page, shots, "5-audit")


def test_what_the_console_refuses(page, console, tmp_path):
    url, stack = console
    for path in ("/ui/", "/ui/submit", "/ui/review", "/ui/model", "/ui/audit", "/ui/users", "/ui/samples/S-UI-1"):
        page.get(url + path)
        assert "/ui/login" in page.current_url, path
    form_post = httpx.post(f"{url}/ui/samples/S-UI-1/sign-off", data={"comment": "x"})  # a form: to the login page
    assert form_post.status_code == 303 and form_post.headers["location"].startswith("/ui/login")
    script_post = httpx.post(f"{url}/ui/samples/S-UI-1/sign-off", headers={"X-Requested-With": "console"})
    assert script_post.status_code == 401

    # throttling: after 3 failed logins even the right password waits
    for _ in range(3):
        log_in(page, url, "sup", "wrong password!")
        wait_text(page, "#error", "unknown user name or wrong password")
    log_in(page, url, "sup")
    wait_text(page, "#error", "too many failed logins")  # counted by name and by address: everyone here waits
    time.sleep(6.5)

    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")
    cookie = next(c for c in page.get_cookies() if c["name"] == "bloodcell_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get(f"{url}/ui/audit")
    wait_text(page, "#error", "needs the admin role")

    # injected markup in a file name and a reason is shown as text, never run
    image = np.full((128, 128, 3), (196, 214, 238), np.uint8)
    cv2.circle(image, (64, 64), 30, (150, 50, 95), -1)
    named = tmp_path / f"{INJECTED}.png"
    named.write_bytes(encode(image))
    page.get(f"{url}/ui/submit")
    page.find_element(By.ID, "accession_id").send_keys("S-UI-XSS")
    page.find_element(By.ID, "files").send_keys(str(named))
    page.find_element(By.ID, "send").click()
    wait_for(page, lambda d: "/ui/samples/S-UI-XSS" in d.current_url)
    wait_classified(page)
    page.find_element(By.CSS_SELECTOR, "button.cell").click()
    page.find_element(By.ID, "relabel-reason").send_keys(f"<script>window.pwned=2</script>{INJECTED}" + Keys.ENTER)
    wait_for(page, lambda d: "reviewed" in d.find_element(By.CSS_SELECTOR, "button.cell").get_attribute("class"))
    assert page.execute_script("return window.pwned") is None
    assert INJECTED not in page.page_source and "&lt;img src=x" in page.page_source

    # a stale CSRF token is refused, and nothing changes
    page.execute_script("document.querySelector('#signoff-form input[name=csrf_token]').value = 'stale'")
    page.find_element(By.ID, "signoff").click()
    wait_text(page, "#error", "stale or missing CSRF token")
    page.get(f"{url}/ui/samples/S-UI-XSS")
    assert page.find_element(By.ID, "report-status").text == "preliminary"

    # thumbnails are cached by their sha256
    sha = page.find_element(By.CSS_SELECTOR, "button.cell").get_attribute("data-sha")
    cookies = {"bloodcell_session": cookie["value"]}
    first = httpx.get(f"{url}/ui/images/{sha}", cookies=cookies)
    assert first.status_code == 200 and first.headers["etag"] == f'"{sha}"' and "max-age" in first.headers["cache-control"]
    again = httpx.get(f"{url}/ui/images/{sha}", cookies=cookies, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    screenshot(page, artifacts_dir() / "console", "6-escaped")
    shutil.rmtree(tmp_path, ignore_errors=True)
