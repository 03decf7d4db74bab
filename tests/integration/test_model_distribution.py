"""Model versions for many machines: two workers with their own, empty model directories, one PostgreSQL and
one Redis; a version registered on a third machine and promoted is fetched, verified and served by both."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from helpers import DEFAULT_MODEL, KAGGLE5_MODEL, run_cli, unseen_images
from servers import Stack, settings_for
from sqlalchemy import select

from bloodcell_core.service import db, tables

pytestmark = pytest.mark.real_data


def test_two_workers_fetch_a_promoted_version_from_the_database(redis_server, postgres_server, tmp_path):
    base = {
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/9",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/10",
        "BLOODCELL_DATABASE_URL": postgres_server.create_database("bloodcell_distribution"),
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
    }
    machines = {name: {**base, "BLOODCELL_HOME": str(tmp_path / name), "BLOODCELL_MODELS_DIR": str(tmp_path / name / "models")}
                for name in ("trainer", "gpu-box", "cpu-box")}  # fmt: skip
    for name in machines:
        (tmp_path / name).mkdir()
    run_cli("db", "upgrade", env=machines["trainer"])
    stack = Stack(env=machines["cpu-box"], settings=settings_for(machines["cpu-box"]))
    stack.start_worker("w1", env=machines["cpu-box"])
    stack.start_worker("w2", env=machines["gpu-box"])
    try:
        # the trainer registers and promotes a model only it has, then the directory is gone
        trained = tmp_path / "trainer" / "kaggle5-model"
        shutil.copytree(KAGGLE5_MODEL, trained)
        version = run_cli("models", "register", str(trained), env=machines["trainer"]).stdout.split()[-1]
        run_cli("models", "promote", version, "--force", "--reason", "distribution test", env=machines["trainer"])
        shutil.rmtree(trained)

        client = stack.client()
        images = [(p.name, p.read_bytes()) for p in unseen_images(None, 24, source="kaggle5")]
        ids = [f"DIST-{k}" for k in range(6)]
        for k, sample_id in enumerate(ids):
            client.submit(sample_id, images[4 * k : 4 * k + 4])
        reports = [client.wait(sample_id, timeout=300) for sample_id in ids]
        assert {r.model_version for r in reports} == {version}
        with db.session_scope(stack.settings.database_url) as session:
            row = session.scalar(select(tables.ModelVersion).where(tables.ModelVersion.version == version))
            workers = set(session.scalars(select(tables.Prediction.worker).where(tables.Prediction.model_version_id == row.id)))
            stored = dict(
                session.execute(
                    select(tables.ModelFile.name, tables.ModelFile.sha256).where(tables.ModelFile.model_version_id == row.id)
                ).all()
            )
        assert {w.split("@")[0] for w in workers} == {"w1", "w2"}  # both served it
        assert {"model.keras", "metadata.json", "split.json"} <= set(stored)
        for machine in ("cpu-box", "gpu-box"):  # each fetched its own copy, every file as registered
            cached = tmp_path / machine / "models" / "cache" / version
            assert {name: hashlib.sha256((cached / name).read_bytes()).hexdigest() for name in stored} == stored
    finally:
        stack.stop_workers()
