"""Fault injection against the real service: workers killed mid-sample, Redis crashed with tasks queued,
PostgreSQL stopped during a run, a preprocessing step that raises. Nothing may be lost or counted twice.

Run alone with ``pytest -m faults``. The module has its own Redis (append-only file on, as in
production) and PostgreSQL, because it kills and restarts them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, DEFAULT_MODEL, encode, install_fake_distribution, run_cli
from redis import Redis
from servers import PostgresServer, RedisServer, Stack, settings_for
from sqlalchemy import func, select

from bloodcell_core.ml.artifacts import read_metadata, update_metadata
from bloodcell_core.service import db, tables
from bloodcell_core.service.results import Report

pytestmark = [pytest.mark.faults, pytest.mark.real_data]

# A third-party preprocessing step with a bug: it raises on an all-magenta image.
CRASHING_STEP = """
from bloodcell_core import PreprocessingStep, hookimpl


def crash_on_magenta(image):
    if image.mean(axis=(0, 1)).round().tolist() == [255.0, 0.0, 255.0]:
        raise RuntimeError("this step cannot handle an all-magenta image")
    return image


@hookimpl
def register_preprocessing_steps(register):
    register(PreprocessingStep(name="crash_on_magenta", description="test only", apply=crash_on_magenta))
"""
MAGENTA = encode(np.full((96, 96, 3), (255, 0, 255), np.uint8))


def held_out_images() -> list[Path]:
    """The shipped model's validation and test images (about 1,270, distinct files)."""
    split = json.loads((DEFAULT_MODEL / "split.json").read_text())
    return [DATA / item["paths"][0] for part in ("val", "test") for item in split[part]]


IMAGES = held_out_images()


def images(start: int, count: int) -> list[tuple[str, bytes]]:
    chosen = IMAGES[start : start + count]
    assert len(chosen) == count
    return [(path.name, path.read_bytes()) for path in chosen]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """A stack whose production model runs the crashing step before its own steps; its own Redis and PostgreSQL."""
    home = tmp_path_factory.mktemp("home-faults")
    model = home / "model-with-crashing-step"
    shutil.copytree(DEFAULT_MODEL, model, ignore=shutil.ignore_patterns("report"))
    preprocessing = read_metadata(model).preprocessing
    update_metadata(model, preprocessing=preprocessing | {"steps": ["crash_on_magenta", *preprocessing["steps"]]})
    site = home / "site"
    site.mkdir()
    redis = RedisServer(home / "redis").start()
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="bloodcell-pg-faults-"))).start()
    env = {
        **install_fake_distribution(site, "crashing_step", CRASHING_STEP),
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis.url}/0",
        "BLOODCELL_RESULT_BACKEND": f"{redis.url}/1",
        "BLOODCELL_DATABASE_URL": postgres.create_database("bloodcell_faults"),
        "BLOODCELL_IMAGE_STORE": "file",
        "BLOODCELL_DEFAULT_MODEL": str(model),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        # a vanished worker's task comes back after 100 s, not 2 hours; longer than any task's time limit (which
        # Settings.validate demands: else a running task would be handed out twice) and any retry countdown here
        "BLOODCELL_VISIBILITY_TIMEOUT": "100",
        "BLOODCELL_CLASSIFY_TIME_LIMIT_S": "90",
        "BLOODCELL_TRAIN_TIME_LIMIT_S": "90",
    }
    run_cli("db", "upgrade", env=env)
    stack = Stack(env=env, settings=settings_for(env))
    stack.redis, stack.postgres = redis, postgres
    stack.start_worker("faults-w1")
    yield stack
    stack.stop_workers()
    redis.stop()
    postgres.stop()
    shutil.rmtree(postgres.directory, ignore_errors=True)


def wait_final(stack: Stack, accession_ids: list[str], timeout: float = 240) -> dict[str, Report]:
    client, deadline, reports = stack.client(), time.monotonic() + timeout, {}
    while len(reports) < len(accession_ids):
        for accession_id in accession_ids:
            report = client.report(accession_id)
            if report.status not in ("queued", "running"):
                reports[accession_id] = report
        assert time.monotonic() < deadline, f"not classified after {timeout} s: {set(accession_ids) - set(reports)}"
        time.sleep(0.2)
    return reports


def wait_status(stack: Stack, accession_id: str, status: str, timeout: float = 60) -> None:
    client, deadline = stack.client(), time.monotonic() + timeout
    while client.report(accession_id).status != status:
        assert time.monotonic() < deadline, f"{accession_id} never reached {status}"
        time.sleep(0.02)


def classified_events(stack: Stack, accession_id: str) -> int:
    with db.session_scope(stack.settings.database_url) as session:
        return session.scalar(
            select(func.count())
            .select_from(tables.AuditEvent)
            .where(tables.AuditEvent.subject == accession_id, tables.AuditEvent.action == "sample.classified")
        )


def predictions_per_image(stack: Stack, accession_id: str) -> list[int]:
    """How many predictions each cell of the sample has (any model version)."""
    with db.session_scope(stack.settings.database_url) as session:
        sample = session.scalar(select(tables.Sample).where(tables.Sample.accession_id == accession_id))
        return [
            session.scalar(
                select(func.count()).select_from(tables.Prediction).where(tables.Prediction.image_sha256 == cell.image_sha256)
            )
            for cell in sample.cells
        ]


def pool_processes(worker: subprocess.Popen) -> list[int]:
    pid = worker.pid
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]


def deliveries(stack: Stack) -> dict[str, int]:
    redis = Redis.from_url(stack.settings.broker_url)
    keys = [key.decode() for key in redis.scan_iter("bloodcell:deliveries:*")]
    return {key: int(redis.get(key)) for key in keys if not key.endswith(":progress")}  # not the progress marks


def assert_complete_once(stack: Stack, accession_id: str, report: Report, n: int) -> None:
    assert report.n_cells == report.n_classified == n and report.n_failed == 0, report
    assert predictions_per_image(stack, accession_id) == [1] * n  # none lost, none twice
    assert classified_events(stack, accession_id) == 1  # the killed attempt reported nothing


def sample_predictions(stack: Stack, accession_id: str) -> int:
    """How many predictions the sample's cells have (committed batch by batch), in one query."""
    with db.session_scope(stack.settings.database_url) as session:
        return session.scalar(
            select(func.count())
            .select_from(tables.Prediction)
            .join(tables.SampleImage, tables.SampleImage.image_sha256 == tables.Prediction.image_sha256)
            .join(tables.Sample, tables.Sample.id == tables.SampleImage.sample_id)
            .where(tables.Sample.accession_id == accession_id)
        )


def worker_logs(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(stack.env["BLOODCELL_HOME"]).glob("faults-w*.log"))


def test_an_image_that_crashes_preprocessing_fails_alone(faults: Stack):
    faults.client().submit("F-CRASH", images(0, 6) + [("magenta.png", MAGENTA)])
    report = wait_final(faults, ["F-CRASH"])["F-CRASH"]
    assert report.n_classified == 6 and report.status == "needs_review"
    assert [(f.name, f.error) for f in report.failed] == [
        ("magenta.png", "preprocessing failed: RuntimeError: this step cannot handle an all-magenta image")
    ]
    time.sleep(2)  # a redelivery loop would classify it again
    assert classified_events(faults, "F-CRASH") == 1
    assert list(deliveries(faults).values()) == [1]
    assert all(worker.poll() is None for worker in faults.workers)


def submit_and_kill_mid_sample(faults: Stack, accession_id: str, first_image: int, kill) -> None:
    """Submit 400 images, KILL(worker) once the sample is being classified, check it completes once.

    The delivery counter of the task must read 2: delivered, killed mid-task, delivered again.
    """
    (worker,) = faults.workers
    before = deliveries(faults)
    faults.client().submit(accession_id, images(first_image, 400))
    wait_status(faults, accession_id, "running")
    time.sleep(0.3)
    kill(worker)
    report = wait_final(faults, [accession_id], timeout=300)[accession_id]
    assert_complete_once(faults, accession_id, report, 400)
    new = {key: count for key, count in deliveries(faults).items() if key not in before}
    assert list(new.values()) == [2], new


def kill_pool(worker: subprocess.Popen) -> None:
    for pid in pool_processes(worker):
        os.kill(pid, signal.SIGKILL)


def test_pool_process_killed_mid_sample(faults: Stack):
    """The OOM killer's usual victim: the pool process holding the model. Celery requeues its task."""
    submit_and_kill_mid_sample(faults, "F-KILL-POOL", 6, kill_pool)
    assert all(worker.poll() is None for worker in faults.workers)  # the main process replaced its pool process


def test_pool_process_killed_five_times_in_one_sample_recovers_each_time(faults: Stack):
    """Each replacement pool process reports up at once (the model loads in a thread), so Celery never kills it
    for being slow to start; each redelivery keeps the batches already classified, so five kills do not make
    the sample a poison message."""
    (worker,) = faults.workers
    log_before = len(worker_logs(faults))
    faults.client().submit("F-KILL-5", images(1266, 700))
    kept = [0]  # predictions of the sample when each kill was over
    for _ in range(5):
        deadline = time.monotonic() + 60
        while sample_predictions(faults, "F-KILL-5") <= kept[-1]:
            assert time.monotonic() < deadline, f"no new prediction within 60 s of the last kill ({kept})"
            time.sleep(0.05)
        kill_pool(worker)
        time.sleep(0.3)  # a commit the process had sent still lands
        kept.append(sample_predictions(faults, "F-KILL-5"))
    report = wait_final(faults, ["F-KILL-5"], timeout=300)["F-KILL-5"]
    assert_complete_once(faults, "F-KILL-5", report, 700)
    assert kept[-1] < 700, kept  # the last kill came before the sample was done
    log = worker_logs(faults)[log_before:]
    assert log.count("exited with 'signal 9 (SIGKILL)'") == 5, log[-3000:]
    assert "Timed out waiting for UP message" not in log
    assert worker.poll() is None


def test_whole_worker_killed_mid_sample(faults: Stack):
    """Main process and pool SIGKILLed (machine lost): the task comes back after the visibility timeout."""

    def kill_worker_and_start_another(worker: subprocess.Popen) -> None:
        for pid in [worker.pid, *pool_processes(worker)]:
            os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=30)
        faults.workers.remove(worker)
        faults.start_worker("faults-w2")

    submit_and_kill_mid_sample(faults, "F-KILL-WORKER", 406, kill_worker_and_start_another)


def test_redis_crash_with_tasks_queued_loses_nothing(faults: Stack):
    faults.stop_workers()
    faults.workers.clear()
    ids = [f"F-REDIS-{k}" for k in range(5)]
    client = faults.client()
    for k, accession_id in enumerate(ids):
        client.submit(accession_id, images(806 + 20 * k, 20))
    redis = Redis.from_url(faults.settings.broker_url)
    assert redis.llen("classify") == 5
    faults.redis.crash()
    faults.redis.start()  # same port, same append-only file
    assert Redis.from_url(faults.settings.broker_url).llen("classify") == 5
    faults.start_worker("faults-w3")
    reports = wait_final(faults, ids)
    for accession_id in ids:
        assert_complete_once(faults, accession_id, reports[accession_id], 20)


def test_postgres_stopped_during_a_run_tasks_retry_and_complete(faults: Stack):
    ids = [f"F-PG-{k}" for k in range(6)]
    client = faults.client()
    for k, accession_id in enumerate(ids):
        client.submit(accession_id, images(906 + 60 * k, 60))
    faults.postgres.stop()
    time.sleep(5)
    faults.postgres.resume()
    reports = wait_final(faults, ids, timeout=300)
    for accession_id in ids:
        assert_complete_once(faults, accession_id, reports[accession_id], 60)
    log = worker_logs(faults)
    assert "OperationalError" in log and "Retry in" in log  # the outage did hit the worker
