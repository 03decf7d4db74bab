"""The HTTP API end to end: a real uvicorn server, Redis, PostgreSQL, a worker and a webhook receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import DEFAULT_MODEL, KAGGLE5, encode, png_header, run_cli, unseen_images
from servers import LIMITS, Api, Stack, WebhookReceiver, create_token, free_port, settings_for, start_api_server

from bloodcell_core.ml.artifacts import read_metadata
from bloodcell_core.service import tables, webhooks

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def api(redis_server, postgres_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home-api")
    receiver = WebhookReceiver()
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/11",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/12",
        "BLOODCELL_DATABASE_URL": postgres_server.create_database("bloodcell_api"),
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
        "BLOODCELL_REVIEW_THRESHOLD": "0.9999",  # a few cells of every sample need a technologist
        **LIMITS,
    }
    run_cli("db", "upgrade", env=env)
    lims = create_token(env, "lims", "submit", "read", webhook_url=receiver.url)
    tokens = {
        "lims": lims["token"],
        "reader": create_token(env, "reader", "read")["token"],
        "technologist": create_token(env, "technologist", "read", "review")["token"],
        "admin": create_token(env, "admin", "admin")["token"],
    }
    stack = Stack(env=env, settings=settings_for(env))
    client = stack.client()
    for name, role in (("anna", "technologist"), ("sam", "supervisor")):  # who signs off, as in the docs
        client.create_user(name, role, "correct horse battery", "test")
    stack.start_worker("api-w1")
    server = start_api_server(env, home / "api.log")
    yield Api(f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}", stack, tokens, lims["webhook_secret"], receiver)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    stack.stop_workers()
    receiver.server.shutdown()


def cell_files(per_class: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Unseen test-split images of four classes, as multipart file parts."""
    paths = [p for label in ("basophil", "monocyte", "myeloblast", "neutrophil") for p in unseen_images(label, per_class)]
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


OPEN_ROUTES = {("GET", "/health"), ("GET", "/health/ready")}


def test_health_is_open_and_every_other_route_needs_a_token(api: Api):
    """Walks every route the app has (app.routes, documentation included), not only the documented /v1 ones."""
    import re

    from fastapi.routing import iter_route_contexts

    from api.app import create_app

    assert api.call("GET", "/health", token=None).json()["status"] == "ok"
    ready = api.call("GET", "/health/ready", token=None)
    assert ready.status_code == 200 and ready.json()["workers"], ready.text
    values = {"sample_id": "S-1", "image_sha256": "0" * 64, "format_name": "fhir-r4"}
    routes = {  # the routes of the included routers too; the console's (/ui) answer sessions, not tokens
        (method, re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m[1], "x"), route.path))
        for route in iter_route_contexts(create_app(api.stack.settings).routes)
        for method in route.methods or ()
        if route.path and not route.path.startswith("/ui")
    }
    assert OPEN_ROUTES <= routes and {("GET", "/docs"), ("GET", "/openapi.json")} <= routes
    assert len(routes - OPEN_ROUTES) >= 14
    for method, path in sorted(routes - OPEN_ROUTES):
        for token in (None, "bct_not-a-token"):
            response = api.call(method, path, token=token)
            assert response.status_code == 401, (method, path, token, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer", (method, path)
    # the documentation: any active token, whatever its scopes; the Swagger page embeds the schema
    schema = api.call("GET", "/openapi.json", token="admin")
    assert schema.status_code == 200 and "/v1/samples" in schema.json()["paths"]
    docs = api.call("GET", "/docs", token="reader")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and '"/v1/samples/{sample_id}/sign-off"' in docs.text
    assert api.call("GET", "/redoc", token=None).status_code == 404


def test_an_error_message_is_whole_with_its_closing_quote(api: Api):
    missing = api.call("GET", "/v1/samples/NOPE-404", token="reader")
    assert missing.status_code == 404 and missing.json()["detail"] == "no sample 'NOPE-404'"


def test_scopes_and_revoked_tokens(api: Api):
    files = cell_files(1)
    assert api.call("POST", "/v1/samples", token="reader", data={"accession_id": "S-SCOPE"}, files=files).status_code == 403
    assert api.call("GET", "/v1/review", token="reader").status_code == 403
    assert api.call("GET", "/v1/audit", token="lims").status_code == 403
    assert api.call("GET", "/v1/models", token="reader").json()["production"].startswith(read_metadata(DEFAULT_MODEL).plugin + "-")
    temporary = create_token(api.stack.env, "temporary", "read")["token"]
    assert api.call("GET", "/v1/exporters", token=temporary).status_code == 200
    run_cli("tokens", "revoke", "temporary", env=api.stack.env)
    response = api.call("GET", "/v1/exporters", token=temporary)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def _chunks():
    yield b"--x\r\n"


CELL = encode(np.full((64, 64, 3), 180, np.uint8), ".png")
REFUSED = [  # (case, request keyword arguments, status, words in the error)
    (
        "image over the byte limit",
        {"files": [("images", ("big.png", b"\x89PNG" + bytes(300_000), "image/png"))]},
        413,
        "BLOODCELL_MAX_IMAGE_BYTES",
    ),
    (
        "too many images",
        {"files": [("images", (f"c{k}.png", CELL, "image/png")) for k in range(21)]},
        413,
        "BLOODCELL_MAX_IMAGES_PER_SAMPLE",
    ),
    ("too many pixels", {"files": [("images", ("wide.png", png_header(2000, 1000), "image/png"))]}, 413, "BLOODCELL_MAX_IMAGE_PIXELS"),
    (
        "decompression bomb",
        {"files": [("images", ("bomb.png", png_header(100_000, 100_000), "image/png"))]},
        413,
        "over 1,000,000 pixels (BLOODCELL_MAX_IMAGE_PIXELS)",  # the configured limit, not Pillow's
    ),
    (
        "request over the size limit",
        {"files": [("images", (f"c{k}.bin", bytes(250_000), "image/png")) for k in range(17)]},
        413,
        "BLOODCELL_MAX_REQUEST_BYTES",
    ),
    (
        "no Content-Length",
        {"content": _chunks(), "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        411,
        "Content-Length",
    ),
    ("not multipart", {"json": {"accession_id": "S-X"}}, 415, "multipart/form-data"),
    (
        "malformed multipart",
        {
            "content": b"--x\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--x--\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        400,
        "",
    ),
    (
        "missing accession id",
        {"no_accession": True, "files": [("images", ("c.png", CELL, "image/png"))]},
        422,
        "missing field accession_id",
    ),
    (
        "duplicate accession id",
        {"data": {"accession_id": ["S-A", "S-B"]}, "files": [("images", ("c.png", CELL, "image/png"))]},
        422,
        "exactly one accession_id",
    ),
    (
        "invalid accession id",
        {"data": {"accession_id": "../../etc/passwd"}, "files": [("images", ("c.png", CELL, "image/png"))]},
        422,
        "invalid sample id",
    ),
    (
        "unknown field",
        {"data": {"accession_id": "S-U", "patient_name": "Doe"}, "files": [("images", ("c.png", CELL, "image/png"))]},
        422,
        "unknown form fields",
    ),
    ("images as text", {"data": {"accession_id": "S-T", "images": "not a file"}}, 422, "not a file"),
    ("no images", {"data": {"accession_id": "S-N"}}, 422, "at least one image"),
    ("bad stored reference", {"data": {"accession_id": "S-R", "image_sha256": "abc"}}, 422, "64 lowercase hex"),
    ("unknown stored image", {"data": {"accession_id": "S-R", "image_sha256": "0" * 64}}, 404, "no stored image"),
    (
        "bad idempotency key",
        {"headers": {"Idempotency-Key": "has spaces in it"}, "files": [("images", ("c.png", CELL, "image/png"))]},
        422,
        "Idempotency-Key",
    ),
]


@pytest.mark.parametrize("case,kwargs,status,words", REFUSED, ids=[case[0] for case in REFUSED])
def test_limits_and_bad_requests_get_clear_4xx_and_store_nothing(api: Api, case, kwargs, status, words):
    kwargs = dict(kwargs)
    if "content" not in kwargs and "json" not in kwargs:  # a multipart body: text fields as parts without a file name
        fields = {} if kwargs.pop("no_accession", False) else kwargs.pop("data", {"accession_id": "S-LIMIT"})
        parts = [
            (name, (None, value)) for name, values in fields.items() for value in (values if isinstance(values, list) else [values])
        ]
        kwargs["files"] = parts + kwargs.get("files", [])
    before = {model: api.stack.count(model) for model in (tables.Sample, tables.SampleImage, tables.Image)}
    response = api.call("POST", "/v1/samples", **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert {model: api.stack.count(model) for model in before} == before
    assert api.call("GET", "/health", token=None).status_code == 200


def test_images_per_sample_counts_every_submission(api: Api):
    """The per-sample limit holds across resubmissions of one accession id, checked before storing anything."""
    first = api.call("POST", "/v1/samples", data={"accession_id": "S-GROW"}, files=cell_files(3))  # 12 images
    assert first.status_code == 202
    before = api.stack.count(tables.Image)
    more = [("images", (f"g{k}.png", encode(np.full((32, 32, 3), k, np.uint8)), "image/png")) for k in range(9)]
    refused = api.call("POST", "/v1/samples", data={"accession_id": "S-GROW"}, files=more)
    assert refused.status_code == 413 and "would have 21 images" in refused.json()["detail"]
    assert api.stack.count(tables.Image) == before
    assert api.call("GET", "/v1/samples/S-GROW").json()["n_cells"] == 12


def test_submit_poll_export_review_sign_off(api: Api, tmp_path: Path):
    from fhir.resources.R4B.bundle import Bundle
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    files = cell_files(3)
    first = api.call("POST", "/v1/samples", data={"accession_id": "LIMS-0001"}, files=files, headers={"Idempotency-Key": "order-0001"})
    assert first.status_code == 202 and first.json()["new_cells"] == 12, first.text
    retry = api.call("POST", "/v1/samples", data={"accession_id": "LIMS-0001"}, files=files, headers={"Idempotency-Key": "order-0001"})
    assert retry.status_code == 200 and retry.json()["replayed"] and retry.json()["sample_id"] == "LIMS-0001"
    misuse = api.call(
        "POST", "/v1/samples", data={"accession_id": "LIMS-0002"}, files=files, headers={"Idempotency-Key": "order-0001"}
    )
    assert misuse.status_code == 409
    assert api.call("POST", "/v1/samples", data={"accession_id": "LIMS-0001"}, files=files).json()["new_cells"] == 0
    report = api.wait_for("LIMS-0001")
    assert report["n_classified"] == 12 and report["report_status"] == "preliminary"

    # FHIR R4: parsed back by the FHIR library, one Observation per class, LOINC + UCUM, the model as Device
    fhir = api.call("GET", "/v1/samples/LIMS-0001/export/fhir-r4")
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(fhir.text)
    resources = [entry.resource for entry in bundle.entry]
    diagnostic = next(r for r in resources if r.get_resource_type() == "DiagnosticReport")
    observations = [r for r in resources if r.get_resource_type() == "Observation"]
    device = next(r for r in resources if r.get_resource_type() == "Device")
    assert diagnostic.status == "preliminary" and diagnostic.code.coding[0].code == "69738-3"
    assert diagnostic.identifier[0].value == "LIMS-0001" and len(diagnostic.result) == len(observations) == 9
    loinc = {o.code.coding[-1].code: o.code.coding[0].code for o in observations}
    assert loinc["myeloblast"] == "30445-1" and loinc["basophil"] == "30180-4" and loinc["monocyte"] == "26485-3"
    leukocytes = [o for o in observations if o.code.coding[-1].code not in ("erythroblast", "platelet")]
    assert all(o.valueQuantity.system == "http://unitsofmeasure.org" for o in observations)
    assert {o.valueQuantity.code for o in leukocytes} == {"%"}  # nucleated red cells and platelets apart, per 100 of them
    assert {o.valueQuantity.code for o in observations if o not in leukocytes} == {"/100{WBC}"}
    assert sum(o.valueQuantity.value for o in leukocytes) == pytest.approx(100, abs=0.1)  # per 100 leukocytes
    assert device.version[0].value == report["model_version"]

    # HL7 v2 ORU^R01: parsed back at strict validation
    hl7 = api.call("GET", "/v1/samples/LIMS-0001/export/hl7v2").text
    message = parse_message(hl7.replace("\n", "\r").strip(), validation_level=VALIDATION_LEVEL.STRICT)
    order = message.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.value == "P" and order.obr.obr_2.value == "LIMS-0001"
    # OBX-3: LOINC with bloodcell's own code as the alternate (components 4-6), or bloodcell's code alone (platelet)
    values = {
        obs.obx.obx_3.obx_3_4.value or obs.obx.obx_3.obx_3_1.value: float(obs.obx.obx_5.value) for obs in order.oru_r01_observation
    }
    assert values == {label: pytest.approx(percent) for label, percent in report["percent"].items()}

    # the webhook: first attempt answered 500, the retry delivered; signatures verify
    deliveries = _wait_for_delivery(api, "LIMS-0001", "sample.classified")
    assert deliveries[0]["attempts"] == 2 and deliveries[0]["last_status_code"] == 204
    for headers, body in api.receiver.requests:
        assert webhooks.verify_signature(
            api.webhook_secret, headers[webhooks.TIMESTAMP_HEADER], body, headers[webhooks.SIGNATURE_HEADER]
        )
    assert not webhooks.verify_signature(
        api.webhook_secret, headers[webhooks.TIMESTAMP_HEADER], body + b" ", headers[webhooks.SIGNATURE_HEADER]
    )

    # review: sign-off is refused while low-confidence cells wait; a relabel changes the report and is audited
    cells = api.call("GET", "/v1/samples/LIMS-0001/cells", token="technologist").json()
    waiting = [c for c in cells if c["needs_review"]]
    queue = {q["sample_id"]: q["cells"] for q in api.call("GET", "/v1/review", token="technologist").json()}
    assert queue.get("LIMS-0001", []) == waiting  # the same cells, with the same details, as the sample's own list
    if waiting:
        refused = api.call("POST", "/v1/samples/LIMS-0001/sign-off", token="technologist", json={"reviewer": "anna"})
        assert refused.status_code == 409 and "need review" in refused.json()["detail"]
    for cell in waiting:
        api.call(
            "POST",
            f"/v1/samples/LIMS-0001/cells/{cell['image_sha256']}/label",
            token="technologist",
            json={"label": cell["model_label"], "reviewer": "A. Tech", "reason": "confirmed on screen"},
        )
    target = next(c for c in cells if c["label"] != "basophil")
    body = {"label": "basophil", "reviewer": "A. Tech", "reason": "granules visible at 100x"}
    assert api.call("POST", f"/v1/samples/LIMS-0001/cells/{target['image_sha256']}/label", token="lims", json=body).status_code == 403
    relabelled = api.call(
        "POST", f"/v1/samples/LIMS-0001/cells/{target['image_sha256']}/label", token="technologist", json=body
    ).json()
    assert relabelled["counts"]["basophil"] == report["counts"]["basophil"] + 1
    assert relabelled["counts"][target["label"]] == report["counts"][target["label"]] - 1
    bad = api.call(
        "POST", f"/v1/samples/LIMS-0001/cells/{target['image_sha256']}/label", token="technologist", json=body | {"label": "smudge"}
    )
    assert bad.status_code == 422 and "unknown label" in bad.json()["detail"]
    audit = api.call("GET", "/v1/audit", token="admin", params={"subject": "LIMS-0001"}).json()
    change = next(e for e in audit if e["action"] == "cell.relabelled" and e["details"]["new"] == "basophil")
    assert change["details"] | {"old": target["label"], "reviewer": "A. Tech"} == change["details"]
    assert change["actor"] == "api:technologist" and change["details"]["reason"] == body["reason"]

    # sign-off by a supervisor (3 blasts of 12 cells: the blast flag; under 100 leukocytes, confirmed): final
    # everywhere, the webhook hears of it
    sign_off = {"reviewer": "sam", "confirm_incomplete": True}
    signed = api.call("POST", "/v1/samples/LIMS-0001/sign-off", token="technologist", json=sign_off).json()
    assert signed["report_status"] == "final" and signed["signed_off_by"] == "sam" and signed["needs_review"] == []
    assert Bundle.model_validate_json(api.call("GET", "/v1/samples/LIMS-0001/export/fhir-r4").text).entry[0].resource.status == "final"
    assert "|F\r" in api.call("GET", "/v1/samples/LIMS-0001/export/hl7v2").text
    _wait_for_delivery(api, "LIMS-0001", "sample.signed_off")
    api.call(
        "POST",
        f"/v1/samples/LIMS-0001/cells/{target['image_sha256']}/label",
        token="technologist",
        json=body | {"label": target["label"], "reason": "second opinion: not a basophil"},
    )
    # a later change withdraws the approval; signed again, the corrected report is amended
    assert api.call("GET", "/v1/samples/LIMS-0001", token="reader").json()["report_status"] == "preliminary"
    assert api.call("POST", "/v1/samples/LIMS-0001/sign-off", token="technologist", json=sign_off).json()["report_status"] == "amended"
    bundle = Bundle.model_validate_json(api.call("GET", "/v1/samples/LIMS-0001/export/fhir-r4").text)
    assert {entry.resource.status for entry in bundle.entry if entry.resource.get_resource_type() != "Device"} == {"amended"}
    assert (
        parse_message(
            api.call("GET", "/v1/samples/LIMS-0001/export/hl7v2").text.strip()
        ).oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value
        == "C"
    )

    # reviewed labels become training data: exported folder-per-class, and included by a retraining run
    run_cli("dataset", "export-reviewed", str(tmp_path / "reviewed"), env=api.stack.env)
    reviewed = sorted(p.relative_to(tmp_path / "reviewed").parts[0] for p in (tmp_path / "reviewed").rglob("*.*"))
    assert (tmp_path / "reviewed" / target["label"] / f"{target['image_sha256']}.jpg").read_bytes()[:2] == b"\xff\xd8"
    small = tmp_path / "small"
    for label in ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"):
        (small / label).mkdir(parents=True)
        for path in sorted((KAGGLE5 / label).iterdir())[:10]:
            (small / label / path.name).symlink_to(path)
    client = api.stack.client()
    run = client.wait_training(client.retrain("compact_cnn", str(small), {"epochs": 1, "include_reviewed": True}), timeout=300)
    assert run.status == "done", run
    run_dir = Path(api.stack.env["BLOODCELL_MODELS_DIR"]) / f"run-{run.run}-compact_cnn"
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["dataset"]["files"] == 50 + len(reviewed)


def _wait_for_delivery(api: Api, sample_id: str, event: str, timeout: float = 60) -> list[dict]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        deliveries = [d for d in api.call("GET", f"/v1/samples/{sample_id}/webhooks").json() if d["event"] == event]
        if deliveries and deliveries[0]["status"] == "delivered":
            assert event in {e["event"] for e in api.receiver.events()}
            return deliveries
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.5)


def test_cli_over_http(api: Api, tmp_path: Path):
    """The CLI with BLOODCELL_API_URL and a token: no database or Redis settings needed."""
    for path in unseen_images("myeloblast", 3):
        (tmp_path / path.name).symlink_to(path)
    env = {
        "BLOODCELL_API_URL": api.url,
        "BLOODCELL_API_TOKEN": api.tokens["lims"],
        "BLOODCELL_HOME": str(tmp_path / "elsewhere"),
        "BLOODCELL_DATABASE_URL": "sqlite:////nonexistent/x.db",
    }
    report = json.loads(run_cli("submit", "--sample-id", "CLI-HTTP-1", "--wait", "--json", str(tmp_path), env=env).stdout)
    assert report["n_classified"] == 3 and report["counts"]["myeloblast"] == 3
    assert {"blasts", "immature_cells"} <= set(report["flags"]) and report["status"] == "needs_review"  # over HTTP too
    assert run_cli("export", "CLI-HTTP-1", "--format", "hl7v2", env=env).stdout.startswith("MSH|^~\\&|BLOODCELL")
    assert len(json.loads(run_cli("cells", "CLI-HTTP-1", "--json", env=env).stdout)) == 3
    denied = run_cli("review", "list", env=env, check=False)
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr


def test_curl_walk_through_in_the_docs(api: Api, tmp_path: Path):
    """The curl walk-through of docs/http-api.md, run as written against the real server."""
    from helpers import PROJECT

    readme = (PROJECT / "docs" / "http-api.md").read_text()
    block = readme.split("<!-- curl-examples -->")[1].split("<!-- /curl-examples -->")[0]
    script = block.split("```bash\n")[1].split("```")[0].replace("API=http://127.0.0.1:8000", f"API={api.url}")
    # two cells the model accepts (no review pending), so the walk-through can sign off
    pool = unseen_images("eosinophil", 4) + unseen_images("neutrophil", 6)
    confident = [p for p in pool if accepted(api, p)][:2]
    assert len(confident) == 2
    (tmp_path / "cells").mkdir()
    for name, path in zip(("cell1.jpg", "cell2.jpg"), confident):
        (tmp_path / "cells" / name).symlink_to(path)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TOKEN": api.tokens["lims"], "REVIEW_TOKEN": api.tokens["technologist"]},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = api.call("GET", "/v1/samples/S-2026-0001").json()
    assert report["report_status"] == "final" and report["signed_off_by"] == "anna"
    assert json.loads((tmp_path / "report.fhir.json").read_text())["entry"][0]["resource"]["status"] == "final"
    assert (tmp_path / "report.hl7").read_text().startswith("MSH|")


def accepted(api: Api, path: Path) -> bool:
    """Whether the production model accepts one image without review, through the API (a throwaway one-image sample)."""
    sample = f"PROBE-{path.stem}"
    api.call("POST", "/v1/samples", data={"accession_id": sample}, files=[("images", (path.name, path.read_bytes(), "image/jpeg"))])
    api.wait_for(sample)
    return not api.call("GET", f"/v1/samples/{sample}/cells").json()[0]["needs_review"]
