"""The browser harness itself: Debian's headless Chromium, driven by Selenium, on a page served here."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser import PNG_SIGNATURE, screenshot, wait_text
from selenium.webdriver.common.by import By

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title></head>
<body>
  <p id="status">waiting</p>
  <button id="go" type="button">Go</button>
  <form id="greet">
    <label>Name <input id="name" name="name"></label>
    <button type="submit">Greet</button>
  </form>
  <p id="greeting"></p>
  <script>
    // late on purpose: the test must wait for the text, not find it at once
    document.getElementById("go").addEventListener("click", () =>
      setTimeout(() => { document.getElementById("status").textContent = "clicked"; }, 300));
    document.getElementById("greet").addEventListener("submit", (event) => {
      event.preventDefault();
      document.getElementById("greeting").textContent = "Hello, " + document.getElementById("name").value + "!";
    });
  </script>
</body></html>
"""


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)  # port 0: a free one, chosen by the system
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_chromium_clicks_waits_types_and_takes_a_screenshot(page, site, tmp_path):
    page.get(site)
    assert page.title == "harness"
    page.find_element(By.ID, "go").click()
    assert wait_text(page, "#status", "clicked", timeout=10).text == "clicked"
    page.find_element(By.ID, "name").send_keys("Ada")
    page.find_element(By.CSS_SELECTOR, "#greet button[type=submit]").click()
    wait_text(page, "#greeting", "Hello, Ada!", timeout=10)
    assert page.find_element(By.ID, "name").get_attribute("value") == "Ada"

    path = screenshot(page, tmp_path, "harness page")
    assert path == tmp_path / "harness_page.png" and path.is_file()
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
