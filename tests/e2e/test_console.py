"""The review console in a real browser (Debian's headless Chromium): a technologist's and a supervisor's day,
and what must be refused, against a real API process, worker, Redis and PostgreSQL."""

from __future__ import annotations

import json
import re
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
from browser import artifacts_dir, docs_screenshot, screenshot, wait_for, wait_text
from helpers import BCCD, DEFAULT_MODEL, encode, png_header, run_cli, unseen_images
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from servers import Stack, free_port, settings_for, start_api_server

from bloodcell_core.ml.artifacts import read_metadata
from bloodcell_core.ml.smear_fields import read_fields
from bloodcell_core.service.results import Report

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


def submit_login(page, url: str, name: str, password: str = PASSWORD) -> None:
    page.get(f"{url}/ui/login")
    page.find_element(By.ID, "name").send_keys(name)
    page.find_element(By.ID, "password").send_keys(password + Keys.ENTER)


def log_in(page, url: str, name: str, password: str = PASSWORD) -> None:
    """Log in and wait for the page that follows: a `page.get` sent before the login's answer has set the session
    cookie lands on the login page instead (it failed CI once)."""
    submit_login(page, url, name, password)
    wait_text(page, "#who", f"{name} (")


def log_out(page) -> None:
    page.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(page, lambda d: "/ui/login" in d.current_url)


def wait_classified(page) -> None:
    wait_for(page, lambda d: d.find_element(By.ID, "sample").get_attribute("data-status") not in ("queued", "running"), timeout=180)


def needs_review(page) -> list:
    return page.find_elements(By.CSS_SELECTOR, "button.cell.needs-review")


def confirm_every_cell(page) -> None:
    """Confirm the label of every cell waiting for review, as a technologist does before sign-off."""
    while needs_review(page):
        cell = needs_review(page)[0]
        sha = cell.get_attribute("data-sha")
        cell.click()
        page.find_element(By.ID, "relabel-reason").send_keys("checked on the smear" + Keys.ENTER)
        wait_text(page, f"#cell-{sha[:16]}", "reviewed:")


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
    confirm_every_cell(page)

    # a technologist may not sign off a sample with blasts: the button says so before anyone clicks
    assert not page.find_element(By.ID, "signoff").is_enabled()
    assert "needs the supervisor role (you are technologist)" in page.find_element(By.ID, "signoff-refused").text
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
        submit_login(page, url, "sup", "wrong password!")
        wait_text(page, "#error", "unknown user name or wrong password")
    submit_login(page, url, "sup")
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

    # a stale CSRF token is refused, and nothing changes (the button is enabled by hand: the drawn cell may count as a blast)
    page.execute_script("document.getElementById('signoff').disabled = false")
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


# --- the console a technologist expects ------------------------------------------------------------------

RAW_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d|\d\d:\d\d:\d\d\.\d+")  # ISO as stored, or with microseconds
NOT_AN_IMAGE = b"this is not an image, only text named .png"


def drawn_cell() -> bytes:
    """A purple disc on a pale ground: a cell the model has never seen the like of, so it goes to review."""
    image = np.full((128, 128, 3), (196, 214, 238), np.uint8)
    cv2.circle(image, (64, 64), 30, (150, 50, 95), -1)
    return encode(image)


def submitted(stack, accession_id: str, images: list[tuple[str, bytes]], fields: list[tuple[str, bytes]] = ()) -> Report:
    client = stack.client()
    client.submit(accession_id, images, "user:tech", fields=list(fields))
    return client.wait(accession_id, timeout=300)


def real(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in paths]


def box_of(page, element) -> dict:
    return page.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return {top: r.top, left: r.left, bottom: r.bottom};", element
    )


def visible_text(page) -> str:
    return page.find_element(By.TAG_NAME, "body").text


@pytest.fixture(scope="module")
def review_samples(console):
    """A blast sample with a drawn cell and a file that is no image, a sample of which no image is an image, and
    a sample of two whole fields, classified before the browser looks at them."""
    _url, stack = console
    cells = real(unseen_images("myeloblast", 4) + unseen_images("neutrophil", 3) + unseen_images("lymphocyte", 2))
    blasts = submitted(stack, "S-TECH-1", cells + [("drawn.png", drawn_cell()), ("notes.png", NOT_AN_IMAGE)])
    failed = submitted(stack, "S-FAILED-1", [("a.png", NOT_AN_IMAGE), ("b.jpg", NOT_AN_IMAGE + b"!")])
    fields = [f for f in read_fields(BCCD, "test") if len(f.white_cells) == 1][:2]
    located = submitted(stack, "S-FIELDS-1", [], real([f.image_path for f in fields]))
    return blasts, failed, located


def test_the_sample_page_a_technologist_expects(page, console, review_samples):
    url, _stack = console
    blasts, _failed, _located = review_samples
    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")
    page.get(f"{url}/ui/samples/S-TECH-1")
    wait_classified(page)

    # the review threshold in words, with the number the cells' percentages are compared with
    threshold = f"{round(100 * blasts.review_threshold, 1)} %"
    rule = page.find_element(By.ID, "review-rule").text
    assert f"less than {threshold} sure" in rule, rule
    # how many cells are left to review, and they come first
    cells = page.find_elements(By.CSS_SELECTOR, "button.cell")
    to_review = needs_review(page)
    assert to_review, "the drawn cell at least needs review"
    assert f"{len(to_review)} of {blasts.n_classified} cells left to review" in page.find_element(By.ID, "review-left").text
    assert [c.get_attribute("id") for c in cells[: len(to_review)]] == [c.get_attribute("id") for c in to_review]
    # the immature warning gives its figures
    immature = next(b.text for b in page.find_elements(By.CSS_SELECTOR, ".banner.warn") if "immature" in b.text)
    assert re.search(r"myeloblast \d+\.\d % = \d+\.\d % of the leukocytes, over the 5 %", immature), immature
    # the image that is no image: a placeholder and plain words, not a broken thumbnail or Python's bytes
    failed = page.find_element(By.CSS_SELECTOR, ".cell.failed")
    assert failed.find_element(By.CSS_SELECTOR, ".placeholder").text == "no picture"
    assert not failed.find_elements(By.TAG_NAME, "img")
    assert "not an image file: 42 bytes in no image format this service reads" in failed.text, failed.text
    assert "b'" not in visible_text(page)
    # no time as raw ISO, let alone with microseconds
    assert not RAW_TIME.search(visible_text(page))

    # arrows: down goes to the nearest cell of the row below, right to the next cell
    first = cells[0]
    first.click()
    page.find_element(By.ID, "relabel-cancel").click()
    assert page.switch_to.active_element == first
    first.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element == cells[1]
    cells[1].send_keys(Keys.ARROW_LEFT)
    start = box_of(page, first)
    below = [(box_of(page, c), c) for c in cells if box_of(page, c)["top"] >= start["bottom"]]
    next_row = min(b["top"] for b, _ in below)
    expected = min((abs(b["left"] - start["left"]), c.get_attribute("id")) for b, c in below if b["top"] == next_row)[1]
    first.send_keys(Keys.ARROW_DOWN)
    assert page.switch_to.active_element.get_attribute("id") == expected
    assert box_of(page, page.switch_to.active_element)["top"] > start["top"]

    # a relabelled cell keeps its original class, the model's confidence in it, who changed it and why
    confident = next(c for c in cells if "needs-review" not in c.get_attribute("class"))
    sha, original = confident.get_attribute("data-sha"), confident.get_attribute("data-label")
    new_label = "monocyte" if original != "monocyte" else "lymphocyte"
    page.execute_script("arguments[0].focus()", confident)
    confident.send_keys(str(read_metadata(DEFAULT_MODEL).classes.index(new_label) + 1))
    page.find_element(By.ID, "relabel-reason").send_keys("kidney-shaped nucleus" + Keys.ENTER)
    tile = wait_text(page, f"#cell-{sha[:16]}", f"reviewed: {new_label} (tech)")
    assert re.search(rf"model: {original} \d+(\.\d)? %", tile.text), tile.text
    assert "kidney-shaped nucleus" in tile.text

    # the blast sample's sign-off is closed to a technologist, and the page says why
    assert blasts.blast_flag
    assert not page.find_element(By.ID, "signoff").is_enabled()
    assert "needs the supervisor role (you are technologist)" in page.find_element(By.ID, "signoff-refused").text
    page.set_window_size(1400, 1500)
    page.execute_script("window.scrollTo(0, 0)")
    docs_screenshot(page, "console-sample")
    page.set_window_size(1400, 1000)

    # the field view: the first field under its heading, boxes explained by a legend
    page.get(f"{url}/ui/samples/S-FIELDS-1")
    heading = page.find_element(By.CSS_SELECTOR, "#fields h2")
    figure = page.find_element(By.CSS_SELECTOR, "#fields figure.field")
    assert box_of(page, figure)["top"] >= box_of(page, heading)["bottom"]
    legend = page.find_element(By.ID, "field-legend").text
    assert "to review" in legend and "cut by the field's edge" in legend and "classified" in legend

    # the model page's confusion matrix is large, and opens at full size
    page.get(f"{url}/ui/model")
    matrix = page.find_element(By.CSS_SELECTOR, "#plot-confusion_matrix img")
    assert matrix.size["width"] >= 600
    assert page.find_element(By.ID, "plot-confusion_matrix").get_attribute("href").endswith("/ui/model/plots/confusion_matrix.png")
    assert not RAW_TIME.search(visible_text(page))


def test_the_review_queue_follows_sign_off(page, console, review_samples):
    url, _stack = console
    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")
    page.get(f"{url}/ui/review")
    queued = {row.get_attribute("data-sample"): row for row in page.find_elements(By.CSS_SELECTOR, "#review-queue tbody tr")}
    assert {"S-TECH-1", "S-FAILED-1"} <= set(queued)
    why = queued["S-FAILED-1"].find_element(By.CSS_SELECTOR, ".why").text  # a sample of which nothing could be read, and why
    assert "no image of the sample could be classified" in why and "a.png: not an image file" in why, why
    assert "blasts" in queued["S-TECH-1"].find_element(By.CSS_SELECTOR, ".why").text
    assert "b'" not in visible_text(page)
    docs_screenshot(page, "console-review")
    page.get(f"{url}/ui/")
    log_out(page)

    log_in(page, url, "sup")
    page.get(f"{url}/ui/samples/S-TECH-1")
    confirm_every_cell(page)
    assert "No cell left to review" in page.find_element(By.ID, "review-left").text
    page.find_element(By.ID, "signoff-comment").send_keys("blasts confirmed")
    page.find_element(By.ID, "signoff-confirm").click()  # a few cells, under BLOODCELL_SIGNOFF_MIN_LEUKOCYTES: confirmed
    page.find_element(By.ID, "signoff").click()
    wait_text(page, "#report-status", "final")
    assert page.find_element(By.ID, "status").text == "signed off"
    page.get(f"{url}/ui/")
    row = page.find_element(By.CSS_SELECTOR, "tr[data-sample='S-TECH-1']")
    assert "signed off" in row.text and "needs review" not in row.text, row.text
    assert not RAW_TIME.search(visible_text(page))
    page.get(f"{url}/ui/review")
    left = [r.get_attribute("data-sample") for r in page.find_elements(By.CSS_SELECTOR, "#review-queue tbody tr")]
    assert "S-TECH-1" not in left and "S-FAILED-1" in left, left


def test_error_pages_keep_the_way_and_what_was_typed(page, console, review_samples, tmp_path):
    url, _stack = console
    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")

    # 413: a 20000 x 20000 PNG is refused with the configured pixel limit; the accession id typed is kept
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(20_000, 20_000))
    page.get(f"{url}/ui/submit")
    page.find_element(By.ID, "accession_id").send_keys("S-HUGE-1")
    page.find_element(By.ID, "files").send_keys(str(huge))
    page.find_element(By.ID, "send").click()
    message = wait_text(page, "#error", "BLOODCELL_MAX_IMAGE_PIXELS").text
    assert "over 16,777,216 pixels" in message and "decompression" not in message.lower(), message
    assert page.find_element(By.CSS_SELECTOR, "header nav a[href='/ui/review']")  # the console's navigation
    page.find_element(By.ID, "go-back").click()
    wait_for(page, lambda d: d.find_element(By.ID, "accession_id").get_attribute("value") == "S-HUGE-1")

    # 403: a sign-off forced past the disabled button; the comment typed is kept
    page.get(f"{url}/ui/samples/S-FAILED-1")
    page.execute_script("document.getElementById('signoff').disabled = false")
    page.execute_script("document.querySelector('#signoff-form input[name=csrf_token]').value = 'stale'")
    page.find_element(By.ID, "signoff-comment").send_keys("a comment worth keeping")
    page.find_element(By.ID, "signoff").click()
    wait_text(page, "#error", "stale or missing CSRF token")
    assert page.find_element(By.CSS_SELECTOR, "header nav a[href='/ui/']")
    assert "tech (technologist)" in page.find_element(By.ID, "who").text
    page.find_element(By.ID, "go-back").click()
    wait_for(page, lambda d: d.find_element(By.ID, "signoff-comment").get_attribute("value") == "a comment worth keeping")

    # 404: the service's message whole, its closing quote included
    page.get(f"{url}/ui/samples/NOPE-404")
    assert page.find_element(By.ID, "error").text == "no sample 'NOPE-404'"
    assert page.find_element(By.CSS_SELECTOR, "header nav a[href='/ui/review']") and not page.find_elements(By.ID, "go-back")
    page.get(f"{url}/ui/")
    log_out(page)

    # 409: a user that exists already; the name typed is kept
    log_in(page, url, "admin")
    page.get(f"{url}/ui/users")
    page.find_element(By.ID, "new-user-name").send_keys("tech")
    page.find_element(By.CSS_SELECTOR, "#new-user input[name=password]").send_keys(PASSWORD)
    page.find_element(By.ID, "create-user").click()
    wait_text(page, "#error", "exists already")
    assert page.find_element(By.CSS_SELECTOR, "header nav a[href='/ui/users']")
    page.find_element(By.ID, "go-back").click()
    wait_for(page, lambda d: d.find_element(By.ID, "new-user-name").get_attribute("value") == "tech")


def test_the_worklist_stops_polling_when_the_session_ends(page, console):
    url, _stack = console
    log_in(page, url, "tech")
    wait_text(page, "#who", "tech (technologist)")
    page.get(f"{url}/ui/")
    page.delete_cookie("bloodcell_session")
    notice = wait_text(page, "#session-ended", "Session ended — log in again", timeout=10)
    assert "/ui/login" in notice.find_element(By.TAG_NAME, "a").get_attribute("href")
    page.execute_script(
        "window.polls = 0; const sent = window.fetch; window.fetch = (...a) => { window.polls += 1; return sent(...a); };"
    )
    time.sleep(7)  # two poll periods and more
    assert page.execute_script("return window.polls") == 0


def test_the_users_page_re_enables_changes_roles_and_resets_passwords(page, console):
    url, _stack = console
    log_in(page, url, "admin")
    wait_text(page, "#who", "admin (admin)")
    page.get(f"{url}/ui/users")
    page.find_element(By.ID, "new-user-name").send_keys("temp")
    page.find_element(By.CSS_SELECTOR, "#new-user input[name=password]").send_keys(PASSWORD)
    page.find_element(By.ID, "create-user").click()
    row = lambda: page.find_element(By.ID, "user-temp")  # noqa: E731 (the row is rendered again after each change)
    row().find_element(By.CSS_SELECTOR, "button.disable").click()
    wait_for(page, lambda d: row().find_element(By.CSS_SELECTOR, ".state").text == "disabled")
    row().find_element(By.CSS_SELECTOR, "button.enable").click()
    wait_for(page, lambda d: row().find_element(By.CSS_SELECTOR, ".state").text == "active")
    row().find_element(By.CSS_SELECTOR, "select[name=user_role]").send_keys("supervisor")
    row().find_element(By.CSS_SELECTOR, "button.change-role").click()
    wait_for(page, lambda d: row().find_element(By.CSS_SELECTOR, "select[name=user_role]").get_attribute("value") == "supervisor")
    row().find_element(By.CSS_SELECTOR, "input[name=password]").send_keys("a brand new password")
    row().find_element(By.CSS_SELECTOR, "button.reset-password").click()
    wait_for(page, lambda d: row().find_element(By.CSS_SELECTOR, "input[name=password]").get_attribute("value") == "")
    assert not RAW_TIME.search(visible_text(page))
    page.get(f"{url}/ui/audit?subject=temp")
    actions = [r.text for r in page.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    for action in ("user.disabled", "user.enabled", "user.role_changed", "user.password_set"):
        assert any(action in r and "user:admin" in r for r in actions), (action, actions)
    assert not any(RAW_TIME.search(cell.text) for cell in page.find_elements(By.CSS_SELECTOR, "#audit tbody td:first-child"))
    log_out(page)
    log_in(page, url, "temp", "a brand new password")
    wait_text(page, "#who", "temp (supervisor)")
