"""The periodic sweep against a real redis-server, real PostgreSQL (and SQLite), real workers and Celery beat.

A webhook delivery left pending while Redis was down is delivered after the sweep, once; one waiting on its
retry is left alone; orphan image files older than the age limit go, referenced and fresh ones stay; and
Celery beat really sends the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import DEFAULT_MODEL, run_cli, unseen_images
from servers import RedisServer, Stack, WebhookReceiver, create_token, settings_for
from sqlalchemy import select

from bloodcell_core.service import db, sweepers, tables, users, webhooks
from bloodcell_core.service.image_store import FileImageStore, file_store_root, journal_hour
from bloodcell_core.service.results import Report, WebhookDeliveryInfo

pytestmark = pytest.mark.real_data

WEBHOOK_AGE_S = 11  # the smallest the settings allow: just over the 10 s a webhook attempt may take
DAY = 24 * 3600


@dataclass
class SweepStack(Stack):
    receiver: WebhookReceiver = field(default_factory=WebhookReceiver)  # the LIMS: answers each delivery's first attempt with 500


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    """This module's own Redis: the tests stop it, which must not disturb other modules' stacks."""
    server = RedisServer(tmp_path_factory.mktemp("redis-sweep")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, redis, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-sweep-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{home / 'bloodcell.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server").create_database("bloodcell_sweep")
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis.url}/0",
        "BLOODCELL_RESULT_BACKEND": f"{redis.url}/1",
        "BLOODCELL_DATABASE_URL": database_url,
        "BLOODCELL_IMAGE_STORE": "file",  # the orphans are files
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_REVIEW_THRESHOLD": "0",  # no cell waits for review: sign-off needs none
        "BLOODCELL_SWEEP_INTERVAL_S": "1",
        "BLOODCELL_SWEEP_WEBHOOK_AGE_S": str(WEBHOOK_AGE_S),
    }
    run_cli("db", "upgrade", env=env)
    stack = SweepStack(env=env, settings=settings_for(env))
    with db.session_scope(stack.settings.database_url) as session:  # the person who signs off
        users.create_user(session, name="tech", role="technologist", password="correct horse battery", actor="test")
    create_token(env, "lims", "submit", "read", webhook_url=stack.receiver.url)
    stack.start_worker(f"sweep-{request.param}")
    yield stack
    stack.stop_workers()
    stack.receiver.server.shutdown()


def lims_id(stack: SweepStack) -> int:
    with db.session_scope(stack.settings.database_url) as session:
        return session.scalars(select(tables.ApiClient.id).where(tables.ApiClient.name == "lims")).one()


def submit(stack: SweepStack, sample_id: str) -> Report:
    client = stack.client()
    images = [(p.name, p.read_bytes()) for p in unseen_images("monocyte", 2) + unseen_images("neutrophil", 2)]
    client.submit(sample_id, images, client_id=lims_id(stack))
    return client.wait(sample_id, timeout=180)


def deliveries(stack: SweepStack, sample_id: str, event: str) -> list[WebhookDeliveryInfo]:
    with db.session_scope(stack.settings.database_url) as session:
        return [d for d in webhooks.get_deliveries(session, accession_id=sample_id) if d.event == event]


def wait_delivered(stack: SweepStack, sample_id: str, event: str, timeout: float = 60) -> WebhookDeliveryInfo:
    deadline = time.monotonic() + timeout
    while not (found := deliveries(stack, sample_id, event)) or found[0].status != "delivered":
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    return found[0]


def requests_for(stack: SweepStack, delivery_id: int) -> list[dict]:
    """The bodies the receiver got for DELIVERY_ID, one per attempt."""
    return [json.loads(body) for headers, body in stack.receiver.requests if headers[webhooks.DELIVERY_HEADER] == str(delivery_id)]


def sweep_cli(stack: SweepStack) -> dict:
    return json.loads(run_cli("sweep", "--json", env=stack.env).stdout)


def test_a_delivery_left_pending_while_redis_was_down_is_delivered_after_the_sweep(stack: SweepStack, redis: RedisServer):
    sample_id = f"S-SWEEP-{stack.settings.database_url[:6]}"
    submit(stack, sample_id)
    client = stack.client()
    for cell in client.cells(sample_id, needs_review=True):  # unlike the training images: confirmed, so sign-off may go
        client.relabel(sample_id, cell.image_sha256, cell.model_label, "A. Tech", "confirmed on screen")
    classified = wait_delivered(stack, sample_id, "sample.classified")  # 500 first, then delivered on the retry
    assert classified.attempts == 2 and len(requests_for(stack, classified.id)) == 2

    redis.stop()
    handed_over = time.monotonic()  # the delivery is due from about now
    try:
        signed = client.sign_off(sample_id, "tech", confirm_incomplete=True)  # committed; the webhook's message cannot be sent
    finally:
        redis.start()
    assert signed.report_status == "final"
    stack.wait_for_workers(1)
    time.sleep(3)
    [pending] = deliveries(stack, sample_id, "sample.signed_off")
    assert pending.status == "pending" and pending.attempts == 0  # no message carries it
    time.sleep(max(0.0, handed_over + WEBHOOK_AGE_S + 1 - time.monotonic()))
    counts = sweep_cli(stack)
    assert counts["webhooks_requeued"] == 1 and counts["webhooks_not_sent"] == 0, counts
    delivered = wait_delivered(stack, sample_id, "sample.signed_off")
    events = [body["event"] for body in requests_for(stack, delivered.id)]
    assert delivered.attempts == 2 and events == ["sample.signed_off"] * 2  # the receiver's 500, then 204: sent once
    assert sweep_cli(stack)["webhooks_requeued"] == 0


def test_a_delivery_waiting_on_its_retry_is_not_requeued_and_a_stale_message_does_nothing(stack: SweepStack):
    sample_id = f"S-RETRY-{stack.settings.database_url[:6]}"
    submit(stack, sample_id)
    wait_delivered(stack, sample_id, "sample.classified")
    now = datetime.now(timezone.utc)
    with db.session_scope(stack.settings.database_url) as session:
        sample = session.scalars(select(tables.Sample).where(tables.Sample.accession_id == sample_id)).one()
        rows = {
            # retried 30 s ago with an hour's countdown: its message is on its way
            "waiting": tables.WebhookDelivery(due_at=now + timedelta(hours=1), task_id="retrying-task"),
            # handed over a moment ago: its message may still be on its way
            "fresh": tables.WebhookDelivery(due_at=now - timedelta(seconds=2), task_id="fresh-task"),
            # its message was handed over two minutes ago and never ran: lost
            "lost": tables.WebhookDelivery(due_at=now - timedelta(minutes=2), task_id="lost-task"),
        }
        for row in rows.values():
            row.client_id, row.sample_id, row.event, row.url, row.payload = (
                lims_id(stack),
                sample.id,
                "test.event",
                "http://127.0.0.1:9/",
                {},
            )
            row.created_at = now - timedelta(hours=2)
            session.add(row)
        session.flush()
        ids = {name: row.id for name, row in rows.items()}
    sent: list[tuple[int, str]] = []
    result = sweepers.sweep(stack.settings, lambda delivery_id, task_id: sent.append((delivery_id, task_id)))
    assert [delivery_id for delivery_id, _ in sent] == [ids["lost"]] and result.webhooks_requeued == 1
    new_task = sent[0][1]
    assert not webhooks.claim(stack.settings, ids["lost"], "lost-task")  # the lost message, should it turn up
    assert webhooks.claim(stack.settings, ids["lost"], new_task)
    assert not webhooks.claim(stack.settings, ids["waiting"], "some-duplicate")
    assert webhooks.claim(stack.settings, ids["waiting"], "retrying-task")
    with db.session_scope(stack.settings.database_url) as session:
        for delivery_id in ids.values():  # not to be sent by the tests that follow
            session.get(tables.WebhookDelivery, delivery_id).status = "failed"


def put_file(root: Path, sha256: str, age_s: float, data: bytes = b"image bytes", journal: bool = True) -> Path:
    """An image file AGE_S old, as the store writes it (with its journal entry unless JOURNAL is False)."""
    path = root / sha256[:2] / sha256[2:4] / sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    if journal:
        FileImageStore(root).record_write(sha256, time.time() - age_s)
    return path


def test_old_orphan_files_are_removed_referenced_and_fresh_ones_stay(stack: SweepStack):
    submit(stack, f"S-ORPHAN-{stack.settings.database_url[:6]}")
    root = file_store_root(stack.settings)
    with db.session_scope(stack.settings.database_url) as session:
        referenced = sorted(session.scalars(select(tables.SampleImage.image_sha256)))
    referenced_paths = [root / s[:2] / s[2:4] / s for s in referenced]
    for path in referenced_paths:  # as old as the orphans: only the rows keep them
        os.utime(path, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    orphan = put_file(root, "ab" * 32, 2 * DAY)
    partial = put_file(root, "cd" * 32, 2 * DAY).rename(root / "cd" / "cd" / f".{'cd' * 32}.123.456.partial")
    fresh = put_file(root, "ef" * 32, DAY - 600)  # a submission in progress: its rows are not committed yet
    stranger = put_file(root, "not-an-image-hash", 2 * DAY, journal=False)  # not the store's: never touched
    unlisted = put_file(root, "9a" * 32, 2 * DAY, journal=False)  # the sweep reads the journal, never the whole store

    counts = sweep_cli(stack)
    assert counts["orphans_removed"] == 2 and counts["orphan_bytes"] == 2 * len(b"image bytes"), counts
    assert not orphan.exists() and not partial.exists()
    assert fresh.exists() and stranger.exists() and unlisted.exists() and all(p.exists() for p in referenced_paths)
    hours = {hour.name for hour in FileImageStore(root).journal.iterdir()}
    assert journal_hour(time.time() - 2 * DAY) not in hours and journal_hour(time.time() - DAY + 600) in hours  # swept, waiting
    # resubmitting an old orphan's bytes refreshes the file before the rows commit: it is no longer old
    old = put_file(root, "12" * 32, 2 * DAY)
    from bloodcell_core.service.image_store import image_store

    with db.session_scope(stack.settings.database_url) as session:
        image_store(stack.settings).put_many(session, {"12" * 32: b"image bytes"})
        session.rollback()  # as a failed submission: the file stays an orphan, but a fresh one
    assert old.stat().st_mtime > time.time() - 60
    assert sweep_cli(stack)["orphans_removed"] == 0 and old.exists()


def test_celery_beat_sends_the_sweep(stack: SweepStack):
    """`bloodcell beat` with BLOODCELL_SWEEP_INTERVAL_S=1: an old orphan file disappears without a hand-run sweep."""
    home = Path(stack.env["BLOODCELL_HOME"])
    orphan = put_file(file_store_root(stack.settings), "be" * 32, 2 * DAY)
    beat = subprocess.Popen(
        [str(Path(sys.executable).parent / "bloodcell"), "beat"],
        env={**os.environ, **stack.env},
        stdout=open(home / "beat.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while orphan.exists():
            assert beat.poll() is None, (home / "beat.log").read_text()
            assert time.monotonic() < deadline, (home / "beat.log").read_text()
            time.sleep(0.5)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert (home / "run" / "beat-schedule").exists() or list((home / "run").glob("beat-schedule*"))
    assert "Sending due task sweep (bloodcell.sweep)" in (home / "beat.log").read_text()
