"""The HTTP edge the API and the console share (``bloodcell_core.edge``): one file-name sanitiser and upload reader,
one sha256 path type, one error handler (HTML for a person under /ui, JSON elsewhere); and the console's model page,
read from the files registered with the production version on a host that lacks the model's directory.

The whole app (API and console) in-process over a real SQLite database and a real Redis (submissions are queued).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import DEFAULT_MODEL, encode
from servers import LIMITS, create_token, settings_for

from bloodcell_core.clients.local import Client
from bloodcell_core.config import Settings
from bloodcell_core.edge import NOT_A_SHA256, upload_name
from bloodcell_core.service import db
from bloodcell_core.service.versions import ensure_production_model

PASSWORD = "correct horse battery"
PLOTS = ("confusion_matrix", "reliability", "coverage", "training_curves")


@dataclass
class Edge:
    app: TestClient
    settings: Settings
    token: str
    csrf: str
    model_dir: Path  # where the production version was registered from; gone from this host

    def api(self, method: str, path: str, **kwargs):
        return self.app.request(method, path, headers={"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}, **kwargs)


@pytest.fixture(scope="module")
def edge(redis_server, tmp_path_factory):
    from api.app import create_app

    home = tmp_path_factory.mktemp("home-edge")
    model_dir = home / "model-elsewhere"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/13",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/14",
        "BLOODCELL_DATABASE_URL": f"sqlite:///{home}/bloodcell.db",
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(model_dir),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        **LIMITS,
    }
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    settings = settings_for(env)
    ensure_production_model(settings)  # registered with its files, report included
    shutil.rmtree(model_dir)  # this host no longer has the model's directory
    client = Client(settings)
    client.create_user("tech", "technologist", PASSWORD, "test")
    token = create_token(env, "lims", "submit", "read")["token"]
    app = TestClient(create_app(settings), follow_redirects=False)
    session, csrf = client.start_session("tech")
    app.cookies.set("bloodcell_session", session)
    yield Edge(app, settings, token, csrf, model_dir)
    app.close()


@pytest.mark.parametrize(
    "sent,kept",
    [
        ("../x.png", "x.png"),
        ("..\\..\\x.png", "x.png"),
        ("C:\\Users\\lab\\cell.png", "cell.png"),
        ("run/3/cell.png", "cell.png"),
        ("ce\x00ll\x1b.png\n", "cell.png"),
        ("..", "image-3"),
        (".", "image-3"),
        ("a/..", "image-3"),
        ("", "image-3"),
        (None, "image-3"),
        ("x" * 300 + ".png", "x" * 255),
    ],
)
def test_an_upload_name_is_a_label_never_a_path(sent, kept):
    assert upload_name(sent, 3) == kept


def cell(shade: int) -> bytes:
    return encode(np.full((16, 16, 3), shade, np.uint8))


def test_a_console_upload_gets_the_same_name_as_in_the_api(edge: Edge):
    sent = edge.api(
        "POST", "/v1/samples", data={"accession_id": "S-EDGE-API"}, files=[("images", ("../x.png", cell(10), "image/png"))]
    )
    assert sent.status_code == 202, sent.text
    form = {"csrf_token": edge.csrf, "accession_id": "S-EDGE-UI", "kind": "images"}
    posted = edge.app.post("/ui/submit", data=form, files=[("files", ("../x.png", cell(20), "image/png"))])
    assert posted.status_code == 303 and posted.headers["location"] == "/ui/samples/S-EDGE-UI", posted.text
    names = {
        sample: [c["name"] for c in edge.api("GET", f"/v1/samples/{sample}/cells").json()] for sample in ("S-EDGE-API", "S-EDGE-UI")
    }
    assert names == {"S-EDGE-API": ["x.png"], "S-EDGE-UI": ["x.png"]}


def test_an_upload_over_a_limit_is_refused_alike_by_the_api_and_the_console(edge: Edge):
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(edge.settings.max_image_bytes)
    api = edge.api("POST", "/v1/samples", data={"accession_id": "S-BIG"}, files=[("images", ("big.png", too_big, "image/png"))])
    form = {"csrf_token": edge.csrf, "accession_id": "S-BIG-UI", "kind": "images"}
    files = [("files", ("big.png", too_big, "image/png"))]
    console = edge.app.post("/ui/submit", data=form, files=files, headers={"X-Requested-With": "console"})
    assert api.status_code == console.status_code == 413
    assert api.json()["detail"] == console.json()["detail"] and "BLOODCELL_MAX_IMAGE_BYTES" in api.json()["detail"]


@pytest.mark.parametrize("bad", ["not-hex", "A" * 64, "0" * 63])
def test_a_bad_sha256_gets_the_same_4xx_from_the_api_and_the_console(edge: Edge, bad: str):
    for api_path, console_path in (
        (f"/v1/samples/S-EDGE-API/fields/{bad}/overlay", f"/ui/samples/S-EDGE-API/fields/{bad}/overlay"),
        (f"/v1/images/{bad}", f"/ui/images/{bad}"),
    ):
        api = edge.api("GET", api_path)
        script = edge.app.get(console_path, headers={"X-Requested-With": "console"})  # the console's own script: JSON
        person = edge.app.get(console_path)  # a person: the error page
        assert api.status_code == script.status_code == person.status_code == 422, (api_path, api.text)
        assert api.json() == script.json() == {"detail": NOT_A_SHA256}
        assert person.headers["content-type"].startswith("text/html") and NOT_A_SHA256 in person.text


def test_a_token_or_a_session_is_checked_before_the_sha256(edge: Edge):
    assert edge.app.get("/v1/images/not-hex").status_code == 401
    anonymous = TestClient(edge.app.app, follow_redirects=False)
    assert anonymous.get("/ui/images/not-hex").status_code == 303
    assert anonymous.get("/ui/samples/S-1/fields/not-hex/overlay", headers={"X-Requested-With": "console"}).status_code == 401


def test_one_error_handler_answers_json_to_the_api_and_a_page_to_a_person_in_the_console(edge: Edge):
    api = edge.api("GET", "/v1/samples/NOPE-404")
    assert api.status_code == 404 and api.json() == {"detail": "no sample 'NOPE-404'"}
    page = edge.app.get("/ui/samples/NOPE-404")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "no sample &#39;NOPE-404&#39;" in page.text and 'href="/ui/"' in page.text  # the message, with the way back
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = edge.app.get("/ui/samples/NOPE-404/state", headers={"X-Requested-With": "console"})
    assert script.status_code == 404 and script.json() == api.json()
    unknown_format = edge.api("GET", "/v1/samples/S-EDGE-API/export/nope")
    console_format = edge.app.get("/ui/samples/S-EDGE-API/export/nope", headers={"X-Requested-With": "console"})
    assert unknown_format.status_code == console_format.status_code == 404 and unknown_format.json() == console_format.json()


def test_the_model_page_shows_the_plots_registered_with_the_version(edge: Edge):
    """The production model's directory is gone from this host: its report comes from the database."""
    page = edge.app.get("/ui/model")
    assert page.status_code == 200
    assert all(f'id="plot-{name}"' in page.text for name in PLOTS) and 'id="generalisation"' in page.text
    for name in PLOTS:
        plot = edge.app.get(f"/ui/model/plots/{name}.png")
        assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
        expected = (DEFAULT_MODEL / "report" / f"{name}.png").read_bytes()
        assert hashlib.sha256(plot.content).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert edge.app.get("/ui/model/plots/reliability_uncalibrated.png").status_code == 404  # not one the page shows
    assert edge.app.get("/ui/model/plots/..%2Fmetadata.png").status_code == 404


def test_a_table_written_after_registration_shows_where_this_host_has_the_directory(edge: Edge):
    """`bloodcell generalisation` writes MODEL_DIR/report/generalisation.json after the version was registered."""
    row = {"set": "written-later", "kind": "another laboratory", "n": 7, "accuracy": 0.5}
    (edge.model_dir / "report").mkdir(parents=True)
    try:
        (edge.model_dir / "report" / "generalisation.json").write_text(json.dumps([row]))
        page = edge.app.get("/ui/model")
        assert "written-later" in page.text and all(f'id="plot-{name}"' in page.text for name in PLOTS)
    finally:
        shutil.rmtree(edge.model_dir)
    assert "written-later" not in edge.app.get("/ui/model").text
