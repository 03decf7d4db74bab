"""Retention (`bloodcell retention`): old samples leave the database and the file store, the audit trail stays,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import run_cli, unseen_images
from servers import settings_for
from sqlalchemy import func, select

from bloodcell_core.service import db, tables
from bloodcell_core.service.image_store import FileImageStore, file_store_root
from bloodcell_core.service.submission import submit_sample

pytestmark = pytest.mark.real_data


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'bloodcell.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server").create_database(f"bloodcell_retention_{tmp_path.name[-8:]}".lower())
    env = {"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_DATABASE_URL": database_url, "BLOODCELL_IMAGE_STORE": "file"}
    run_cli("db", "upgrade", env=env)
    return env


def add_history(settings, accession_id: str, images: list[tuple[str, bytes]], age: timedelta, version_id: int) -> list[str]:
    """A classified, relabelled, signed-off sample submitted AGE ago, with a webhook delivery; its cells' hashes."""
    submit_sample(settings, accession_id, images, "user:anna")
    with db.session_scope(settings.database_url) as session:
        sample = session.scalars(select(tables.Sample).where(tables.Sample.accession_id == accession_id)).one()
        sample.created_at = datetime.now(timezone.utc) - age
        sample.status, sample.report_status = "done", "final"
        hashes = [cell.image_sha256 for cell in sample.cells]
        output = dict(model_version_id=version_id, label="monocyte", confidence=0.99, probabilities={"monocyte": 0.99})
        rows = [output | dict(image_sha256=sha256, preprocess_ms=1.0, predict_ms=1.0, worker="w") for sha256 in hashes]
        db.insert_new(session, tables.Prediction, rows, key=["image_sha256", "model_version_id"])  # one per image and version
        session.add(
            tables.SampleReport(
                sample_id=sample.id,
                model_version_id=version_id,
                n_cells=len(hashes),
                n_classified=len(hashes),
                n_failed=0,
                counts={"monocyte": len(hashes)},
                percent={"monocyte": 100.0},
                blast_count=0,
                blast_percent=0.0,
                blast_flag=False,
                review_threshold=0.5,
                needs_review=[],
                failed=[],
            )
        )
        session.add(tables.CellReview(sample_id=sample.id, image_sha256=hashes[0], label="monocyte", reviewer="anna", reason="shape"))
        client = session.scalars(select(tables.ApiClient)).first()
        if client is None:
            client = tables.ApiClient(name="lims", token_sha256="0" * 64, token_prefix="x", scopes=["submit"])
            session.add(client)
            session.flush()
        session.add(
            tables.WebhookDelivery(client_id=client.id, sample_id=sample.id, event="sample.classified", url="http://x", payload={})
        )
    return hashes


def count(settings, model) -> int:
    with db.session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_retention_purges_old_samples_their_only_images_and_files_and_keeps_the_audit_trail(env: dict[str, str]):
    settings = settings_for(env)
    with db.session_scope(settings.database_url) as session:
        version = tables.ModelVersion(
            version="v1", plugin="p", artifact_path="a", status="production", classes=["monocyte"], metrics={}, data_fingerprint="f"
        )
        session.add(version)
        session.flush()
        version_id = version.id
    old_only, shared, new_only = ([(p.name, p.read_bytes())] for p in unseen_images("monocyte", 3))
    old_hashes = add_history(settings, "S-OLD", old_only + shared, timedelta(days=400), version_id)
    new_hashes = add_history(settings, "S-NEW", shared + new_only, timedelta(days=10), version_id)
    submit_sample(settings, "S-OLD-QUEUED", new_only, "user:anna")  # old, but never classified: not the purge's to judge
    with db.session_scope(settings.database_url) as session:
        queued = session.scalars(select(tables.Sample).where(tables.Sample.accession_id == "S-OLD-QUEUED")).one()
        queued.created_at = datetime.now(timezone.utc) - timedelta(days=400)
    store = FileImageStore(file_store_root(settings))
    gone, kept = old_hashes[0], old_hashes[1]  # the second is also a cell of the new sample
    assert store.path(gone).exists() and kept in new_hashes
    a_year_ago = (datetime.now(timezone.utc) - timedelta(days=400)).timestamp()
    os.utime(store.path(gone), (a_year_ago, a_year_ago))  # written with its sample (a file refreshed within the hour stays)
    events_before = count(settings, tables.AuditEvent)

    dry = json.loads(run_cli("retention", "--days", "365", "--dry-run", "--json", env=env).stdout)
    assert (dry["dry_run"], dry["samples"], dry["cells"]) == (True, 1, 2)
    assert count(settings, tables.Sample) == 3 and count(settings, tables.AuditEvent) == events_before

    without_age = run_cli("retention", env=env, check=False)  # BLOODCELL_RETENTION_DAYS unset: nothing is purged
    assert without_age.returncode != 0 and "BLOODCELL_RETENTION_DAYS" in without_age.stderr

    done = json.loads(run_cli("retention", "--json", env={**env, "BLOODCELL_RETENTION_DAYS": "365"}).stdout)
    assert (done["samples"], done["cells"], done["images"], done["predictions"]) == (1, 2, 1, 1), done
    assert done["image_bytes"] == len(old_only[0][1])
    with db.session_scope(settings.database_url) as session:
        accession_ids = set(session.scalars(select(tables.Sample.accession_id)))
        assert accession_ids == {"S-NEW", "S-OLD-QUEUED"}
        assert set(session.scalars(select(tables.Image.sha256))) == set(new_hashes)
        assert set(session.scalars(select(tables.Prediction.image_sha256))) == set(new_hashes)
        assert count(settings, tables.SampleReport) == 1 and count(settings, tables.CellReview) == 1
        assert count(settings, tables.WebhookDelivery) == 1
        trail = session.scalars(
            select(tables.AuditEvent).where(tables.AuditEvent.subject == "S-OLD").order_by(tables.AuditEvent.id)
        ).all()
    assert [e.action for e in trail] == ["sample.submitted", "sample.purged"]  # the trail stays, and says what went
    assert trail[-1].details["counts"] == {"monocyte": 2} and trail[-1].details["report_status"] == "final"
    assert not store.path(gone).exists()
    assert all(store.path(sha256).exists() for sha256 in new_hashes)
