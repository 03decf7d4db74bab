"""The queued service end to end, against a real redis-server, real PostgreSQL and real workers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DEFAULT_MODEL, KAGGLE5, PROJECT, run_cli, unseen_images
from servers import Stack, free_port, settings_for, wait_port
from sqlalchemy import select

from bloodcell_core.config import Settings
from bloodcell_core.ml.artifacts import read_metadata
from bloodcell_core.service import db, tables

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, redis_server, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    if request.param == "sqlite":
        database_url, store, redis_db = f"sqlite:///{home / 'bloodcell.db'}", "file", 2
    else:
        postgres = request.getfixturevalue("postgres_server")
        database_url, store, redis_db = postgres.create_database("bloodcell_e2e"), "database", 4
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/{redis_db}",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/{redis_db + 1}",
        "BLOODCELL_DATABASE_URL": database_url,
        "BLOODCELL_IMAGE_STORE": store,
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
    }
    run_cli("db", "upgrade", env=env)
    stack = Stack(env=env, settings=settings_for(env))
    stack.start_worker("w1")
    yield stack
    stack.stop_workers()


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    for path in unseen_images("myeloblast", 6) + unseen_images("monocyte", 6):
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    return tmp_path


def submit(stack: Stack, sample_id: str, *paths: Path, wait: bool = True) -> dict:
    args = ["submit", "--sample-id", sample_id, "--json", *map(str, paths)]
    return json.loads(run_cli(*(args + ["--wait", "--timeout", "120"] if wait else args), env=stack.env).stdout)


def test_sample_end_to_end(stack: Stack, sample_dir: Path):
    report = submit(stack, "S-E2E-1", sample_dir)
    assert set(report) >= {"sample_id", "status", "counts", "percent", "blast_flag", "needs_review", "model_version"}
    assert report["sample_id"] == "S-E2E-1" and report["n_cells"] == 13 and report["n_classified"] == 12
    assert report["counts"]["myeloblast"] >= 5 and report["counts"]["monocyte"] >= 5
    assert sum(report["counts"].values()) == 12 and sum(report["percent"].values()) == pytest.approx(100, abs=0.1)
    assert report["blast_flag"] is True  # about half the cells are blasts: far over 20 %
    assert report["status"] == "needs_review"  # a failed image always asks for a person
    assert [f["name"].endswith("broken.jpg") for f in report["failed"]] == [True]
    assert "not an image file" in report["failed"][0]["error"]
    assert report["model_version"].startswith(read_metadata(DEFAULT_MODEL).plugin + "-")
    assert report["review_threshold"] == read_metadata(DEFAULT_MODEL).calibration["review_threshold"]
    assert stack.count(tables.Prediction) == 12 and stack.count(tables.SampleImage) == 13
    assert json.loads(run_cli("report", "S-E2E-1", "--json", env=stack.env).stdout) == report
    with db.session_scope(stack.settings.database_url) as session:
        events = session.scalars(select(tables.AuditEvent.action).where(tables.AuditEvent.subject == "S-E2E-1")).all()
    assert events == ["sample.submitted", "sample.classified"]


def test_exports_from_the_cli_parse_back(stack: Stack, sample_dir: Path):
    """FHIR and HL7 exports on both databases (SQLite returns timestamps without a zone)."""
    from fhir.resources.R4B.bundle import Bundle
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    report = submit(stack, "S-EXPORT-1", sample_dir)
    bundle = Bundle.model_validate_json(run_cli("export", "S-EXPORT-1", env=stack.env).stdout)
    assert bundle.entry[0].resource.status == "preliminary" and bundle.timestamp.tzinfo is not None
    hl7 = run_cli("export", "S-EXPORT-1", "--format", "hl7v2", env=stack.env).stdout.replace("\n", "\r")  # text mode ate the \r
    order = parse_message(hl7.strip(), validation_level=VALIDATION_LEVEL.STRICT).oru_r01_patient_result.oru_r01_order_observation
    assert len(order.oru_r01_observation) == len(report["counts"])
    unknown = run_cli("export", "S-EXPORT-1", "--format", "pdf", env=stack.env, check=False)
    assert unknown.returncode == 1 and "unknown exporter 'pdf'" in unknown.stderr


def test_resubmission_and_redelivery_are_idempotent(stack: Stack, sample_dir: Path):
    submit(stack, "S-E2E-2", sample_dir)
    counts = {model: stack.count(model) for model in (tables.Sample, tables.SampleImage, tables.Prediction, tables.Image)}
    again = json.loads(run_cli("submit", "--sample-id", "S-E2E-2", "--json", str(sample_dir), env=stack.env).stdout)
    assert again["new_cells"] == 0
    client = stack.client()
    with db.session_scope(stack.settings.database_url) as session:
        sample_pk = session.scalar(select(tables.Sample.id).where(tables.Sample.accession_id == "S-E2E-2"))
    client._send("bloodcell.classify_sample", [sample_pk], "classify").get(timeout=60)  # a redelivered task
    assert {model: stack.count(model) for model in counts} == counts


def test_single_image_task(stack: Stack):
    image = unseen_images("myeloblast", 1)[0]
    result = stack.client().classify_image(image.read_bytes())
    assert result["label"] == "myeloblast" and result["confidence"] > 0.5


def test_audit_log_is_append_only(stack: Stack):
    with pytest.raises(PermissionError, match="append-only"):
        with db.session_scope(stack.settings.database_url) as session:
            session.scalars(select(tables.AuditEvent)).first().action = "rewritten"


def test_two_workers_share_one_queue(stack: Stack, tmp_path: Path):
    stack.start_worker("w2")
    images = unseen_images(None, 40)
    client = stack.client()
    for k in range(8):
        client.submit(f"S-SHARE-{k}", [(p.name, p.read_bytes()) for p in images[5 * k : 5 * k + 5]])
    for k in range(8):
        assert client.wait(f"S-SHARE-{k}", timeout=120).status in ("done", "needs_review")
    with db.session_scope(stack.settings.database_url) as session:
        workers = set(session.scalars(select(tables.Prediction.worker)))
    assert {w.split("@")[0] for w in workers} >= {"w1", "w2"}


def test_retrain_gate_shadow_and_forced_promotion(stack: Stack, sample_dir: Path, tmp_path_factory):
    """A retrained candidate is gated on a fixed evaluation set, shadow-scored, and promoted only by force."""
    from bloodcell_core.ml.inference import Classifier
    from bloodcell_core.service import promotion

    client = stack.client()
    run_id = client.retrain("compact_cnn", str(KAGGLE5), {"epochs": 1, "max_per_class": 8})
    result = client.wait_training(run_id, timeout=300)
    assert result.status == "done", result
    candidate = result.version
    assert candidate is not None
    versions = {row.version: row for row in client.models()}
    assert versions[candidate].status == "candidate"
    production = next(v for v, row in versions.items() if row.status == "production")

    refused = pytest.raises(promotion.Conflict, match="no evaluation set 'default'")
    with refused:
        client.promote(candidate, actor="test")
    evaluation_dir = tmp_path_factory.mktemp("evaluation")  # images neither model trained or early-stopped on
    seen_by_candidate = Classifier.from_dir(versions[candidate].artifact).artifact.split().hashes("train", "val")
    # the classes both know (the candidate's seg_neutrophil is production's neutrophil): both are scored on the same images
    for label in ("basophil", "erythroblast", "monocyte", "myeloblast"):
        (evaluation_dir / label).mkdir(parents=True)
        fresh = [p for p in unseen_images(label, 40) if hashlib.sha256(p.read_bytes()).hexdigest() not in seen_by_candidate]
        for path in fresh[:6]:
            (evaluation_dir / label / path.name).symlink_to(path)
    assert client.register_evaluation_set("default", str(evaluation_dir), actor="test")["n_images"] == 24
    scores = {v: client.evaluate(v, "default") for v in (candidate, production)}
    assert scores[production]["accuracy"] > scores[candidate]["accuracy"]  # one epoch on 40 images
    with pytest.raises(promotion.Conflict, match="does not beat production"):
        client.promote(candidate, actor="test")

    stack.stop_workers()  # only a shadow-scoring worker may take the next sample
    stack.start_worker("shadow", env={"BLOODCELL_SHADOW": "1"})
    try:
        report = submit(stack, "S-SHADOW", sample_dir)
        assert report["n_classified"] == 12 and report["model_version"] == production
        deadline = time.monotonic() + 120  # the worker shadow-scores after the report is stored
        while client.shadow_report(candidate)["cells"] < 12 and time.monotonic() < deadline:
            time.sleep(0.5)
        shadow = client.shadow_report(candidate)
        assert shadow["cells"] == 12 and shadow["production"] == production and 0 <= shadow["agreement"] <= 1
        with db.session_scope(stack.settings.database_url) as session:
            workers = set(
                session.scalars(
                    select(tables.Prediction.worker).join(tables.ModelVersion).where(tables.ModelVersion.version == candidate)
                )
            )
        assert {w.split("@")[0] for w in workers} == {"shadow:shadow"}
        assert client.report("S-SHADOW").model_dump(mode="json") == report  # shadow predictions never touch a report
    finally:
        stack.stop_workers()
        stack.start_worker("w1")

    with pytest.raises(promotion.ServiceError, match="needs a reason"):
        client.promote(candidate, actor="test", force=True)
    client.promote(candidate, actor="test", force=True, reason="integration test")
    try:
        assert submit(stack, "S-AFTER-PROMOTION", sample_dir)["model_version"] == candidate
        with db.session_scope(stack.settings.database_url) as session:
            event = session.scalars(
                select(tables.AuditEvent).where(tables.AuditEvent.action == "model.promoted", tables.AuditEvent.subject == candidate)
            ).one()
            assert event.details["forced"] and event.details["reason"] == "integration test"
            assert any("does not beat" in refusal for refusal in event.details["gate_refusals"])
    finally:
        client.promote(production, actor="test", force=True, reason="restore production after the test")


def test_unmigrated_database_is_refused(redis_server, tmp_path: Path):
    env = {
        "BLOODCELL_HOME": str(tmp_path),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/7",
        "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
    }
    result = run_cli("submit", "--sample-id", "X", str(next((KAGGLE5 / "basophil").iterdir())), env=env, check=False)
    assert result.returncode == 1 and "run `bloodcell db upgrade`" in result.stderr
    worker = subprocess.run(
        [str(Path(sys.executable).parent / "bloodcell"), "worker"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode != 0 and "run `bloodcell db upgrade`" in worker.stdout + worker.stderr


def test_local_stack_up_submit_flower_down(tmp_path: Path, sample_dir: Path):
    """The README's main path: `bloodcell up` on embedded defaults, submit, Flower, `bloodcell down`.

    Without BLOODCELL_FLOWER_BASIC_AUTH, `up` makes a one-off Flower password, prints it once and stores it nowhere.
    """
    import base64
    import re
    import urllib.error
    import urllib.request

    env = {
        "BLOODCELL_HOME": str(tmp_path / "home"),
        "BLOODCELL_REDIS_PORT": str(free_port()),
        "BLOODCELL_FLOWER_PORT": str(free_port()),
        "BLOODCELL_FLOWER_BASIC_AUTH": "",
        "BLOODCELL_API_PORT": str(free_port()),
    }
    try:
        output = run_cli("up", env=env).stdout
        user, password = re.search(r"flower login: user (\S+), password (\S+) ", output).groups()
        assert user == "ops" and len(password) >= 24
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}/health/ready", timeout=10).read())
        assert ready["ready"] and ready["database"] == "ok" and len(ready["workers"]) == 1
        report = json.loads(run_cli("submit", "--sample-id", "LOCAL-1", "--wait", "--json", str(sample_dir), env=env).stdout)
        assert report["n_classified"] == 12
        flower = f"http://127.0.0.1:{env['BLOODCELL_FLOWER_PORT']}"
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}):
            for page in ("/", "/api/workers", "/api/tasks", "/broker", "/metrics"):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(urllib.request.Request(flower + page, headers=headers), timeout=10)
                assert refused.value.code == 401, (page, headers)
        login = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        assert urllib.request.urlopen(urllib.request.Request(f"{flower}/", headers=login), timeout=10).status == 200
        request = urllib.request.Request(f"{flower}/api/workers?refresh=1", headers=login)
        deadline = time.monotonic() + 60  # Flower learns about workers asynchronously
        while "worker1@" not in (workers := urllib.request.urlopen(request, timeout=30).read().decode()):
            assert time.monotonic() < deadline, workers
            time.sleep(1)
        metrics = urllib.request.Request(f"{flower}/metrics", headers=login)
        assert b"flower_events_total" in urllib.request.urlopen(metrics, timeout=10).read()
        beat_pid = int((tmp_path / "home" / "run" / "beat.pid").read_text())  # `up` started Celery beat (the sweep)
        assert "beat" in Path(f"/proc/{beat_pid}/cmdline").read_text()
        # shown once, stored nowhere: not on Flower's command line (`ps`), not in any file under BLOODCELL_HOME
        flower_pid = (tmp_path / "home" / "run" / "flower.pid").read_text().strip()
        assert password not in Path(f"/proc/{flower_pid}/cmdline").read_text()
        assert password in Path(f"/proc/{flower_pid}/environ").read_bytes().decode(errors="replace")
        again = run_cli("up", env=env).stdout
        assert password not in again and "flower login: unchanged" in again
    finally:
        run_cli("down", env=env)
    stored = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not stored, stored
    with pytest.raises(TimeoutError):
        wait_port(int(env["BLOODCELL_REDIS_PORT"]), timeout=1)


def test_compose_file_is_valid_and_uses_only_known_settings():
    import yaml

    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"], cwd=PROJECT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    known = {f"BLOODCELL_{name.upper()}" for name in Settings.model_fields}
    used = {
        key for service in compose["services"].values() for key in (service.get("environment") or {}) if key.startswith("BLOODCELL_")
    }
    assert used and used <= known, used - known
    assert compose["services"]["worker-gpu"]["profiles"] == ["gpu"]
    assert "--appendonly" in compose["services"]["redis"]["command"]
    assert "name" not in compose  # Debian's docker-compose 1.29 refuses a top-level name (scripts/compose-check runs it)
    checks = [service["healthcheck"]["test"] for service in compose["services"].values() if "healthcheck" in service]
    assert len(checks) >= 5 and all(test[0] == "CMD-SHELL" for test in checks)  # podman's API splits an exec form on spaces


def test_each_queue_receives_only_its_own_messages(redis_server, tmp_path: Path):
    """Messages land in the queue they are sent to, and nowhere else (checked in Redis itself)."""
    from redis import Redis

    from bloodcell_core.clients.local import Client

    env = {
        "BLOODCELL_HOME": str(tmp_path),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/9",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/10",
        "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
    }
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    client = Client(settings_for(env))
    client._send("bloodcell.retrain", [1], "train")
    client._send("bloodcell.classify_sample", [1], "classify")
    client._send("bloodcell.classify_sample", [2], "classify.gpu")
    redis = Redis.from_url(env["BLOODCELL_BROKER_URL"])
    assert [redis.llen(queue) for queue in ("classify", "classify.gpu", "train")] == [1, 1, 1]


def test_flags_and_the_unfamiliar_image_warning_reach_the_report_and_both_exports(stack: Stack, tmp_path: Path):
    """Blasts, immature cells and images unlike anything the model knows (noise here) each send the sample to
    review, with the reason per cell, and travel to the LIMS: FHIR conclusion codes, notes and interpretation,
    HL7 NTE segments and abnormal flags."""
    import numpy as np
    from fhir.resources.R4B.bundle import Bundle
    from helpers import encode
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    rng = np.random.default_rng(7)
    for k in range(4):
        (tmp_path / f"noise{k}.png").write_bytes(encode(rng.integers(0, 256, (363, 360, 3), dtype=np.uint8)))
    for path in unseen_images("myeloblast", 3):
        (tmp_path / path.name).symlink_to(path)
    report = submit(stack, "S-FLAGS-1", tmp_path)
    assert report["status"] == "needs_review" and report["n_classified"] == 7
    assert {"blasts", "immature_cells", "unfamiliar_images"} <= set(report["flags"]) and report["blast_flag"] is True
    assert report["n_unfamiliar"] >= 4 and len(report["warnings"]) == len(report["flags"])
    noise = [cell for cell in report["needs_review"] if Path(cell["name"]).name.startswith("noise")]
    assert len(noise) == 4 and all("unlike the training images" in cell["reasons"] for cell in noise)

    bundle = Bundle.model_validate_json(run_cli("export", "S-FLAGS-1", env=stack.env).stdout)
    diagnostic = bundle.entry[0].resource
    assert {c.coding[0].code for c in diagnostic.conclusionCode} == set(report["flags"])
    assert "unlike the training images" in diagnostic.conclusion
    myeloblast = next(e.resource for e in bundle.entry[1:] if e.resource.code.coding[-1].code == "myeloblast")
    assert myeloblast.interpretation[0].coding[0].code == "A"
    assert any("unlike the images the model was trained on" in note.text for note in myeloblast.note)
    hl7 = run_cli("export", "S-FLAGS-1", "--format", "hl7v2", env=stack.env).stdout.replace("\n", "\r")
    order = parse_message(hl7.strip(), validation_level=VALIDATION_LEVEL.STRICT).oru_r01_patient_result.oru_r01_order_observation
    assert any(nte.nte_3.value.startswith("FLAG unfamiliar_images") for nte in order.nte)
    cells = json.loads(run_cli("cells", "S-FLAGS-1", "--needs-review", "--json", env=stack.env).stdout)
    assert {c["name"] for c in noise} <= {c["name"] for c in cells}
    assert all(c["review_reasons"] for c in cells)
