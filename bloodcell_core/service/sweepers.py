"""The periodic sweep (Celery beat runs it on the webhooks queue; `bloodcell sweep` by hand).

- Webhook deliveries still pending BLOODCELL_SWEEP_WEBHOOK_AGE_S after their attempt was due are sent again
  (their message was never sent, Redis being down, or was lost); see service/webhooks.py for why this
  never starts a second chain of attempts for a delivery in flight or waiting on its retry.
- Files of the file image store that no ``images`` row references (every table that names an image does so
  through that row's key) and that are older than BLOODCELL_SWEEP_ORPHAN_AGE_S are removed: a failed
  submission leaves them, and a submission in progress writes (or refreshes) its files before its rows.
  Only the files the store's journal lists for the hours past that age are looked at (image_store.py), so a
  sweep's work follows the last hour's submissions, never the whole store.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from bloodcell_core.config import Settings
from bloodcell_core.service import webhooks
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.image_store import FileImageStore, file_store_root
from bloodcell_core.service.tables import Image

log = logging.getLogger(__name__)

SHA256_NAME = re.compile(r"[0-9a-f]{64}")
BATCH = 500  # image hashes per database query

SendDelivery = Callable[[int, str], None]  # (delivery id, task id): put the delivery's message on the webhooks queue


@dataclass(frozen=True)
class SweepResult:
    webhooks_requeued: int  # overdue deliveries handed to the webhooks queue again
    webhooks_not_sent: int  # of those, the ones the broker refused (the next sweep tries again)
    orphans_removed: int  # unreferenced old image files removed
    orphan_bytes: int  # their size

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(settings: Settings, send: SendDelivery) -> SweepResult:
    """One sweep: re-queue overdue webhook deliveries through SEND, remove orphan image files; logs what it did."""
    requeued, not_sent = requeue_overdue_webhooks(settings, send)
    removed, n_bytes = remove_orphan_images(settings)
    result = SweepResult(requeued, not_sent, removed, n_bytes)
    log.info("sweep: %s", ", ".join(f"{key} {value}" for key, value in result.as_dict().items()))
    return result


def requeue_overdue_webhooks(settings: Settings, send: SendDelivery) -> tuple[int, int]:
    """(re-queued, of which not sent) for pending deliveries overdue by BLOODCELL_SWEEP_WEBHOOK_AGE_S."""
    assigned = webhooks.reassign_overdue(settings, settings.sweep_webhook_age_s)
    not_sent = 0
    for delivery_id, task_id in assigned:
        try:
            send(delivery_id, task_id)
            log.info("sweep: webhook delivery %s re-queued as task %s", delivery_id, task_id)
        except Exception:  # the broker is away: the delivery stays overdue and the next sweep sends it
            log.exception("sweep: could not re-queue webhook delivery %s", delivery_id)
            not_sent += 1
    return len(assigned), not_sent


def remove_orphan_images(settings: Settings) -> tuple[int, int]:
    """(files removed, bytes) among the files the store's journal says were written in the hours now older
    than BLOODCELL_SWEEP_ORPHAN_AGE_S and that no row references; those hours then leave the journal."""
    if settings.image_store != "file":  # the database store keeps no files
        return 0, 0
    store = FileImageStore(file_store_root(settings))
    cutoff = time.time() - settings.sweep_orphan_age_s
    removed, n_bytes = 0, 0
    for hour in _hours_past(store.journal, cutoff):
        entries = [entry for entry in hour.iterdir() if SHA256_NAME.fullmatch(entry.name)]
        hashes = sorted(entry.name for entry in entries)
        referenced: set[str] = set()
        with session_scope(settings.database_url) as session:
            for start in range(0, len(hashes), BATCH):
                referenced.update(session.scalars(select(Image.sha256).where(Image.sha256.in_(hashes[start : start + BATCH]))))
        for sha256 in hashes:
            if sha256 in referenced:
                continue
            image = store.path(sha256)
            for path in [image, *image.parent.glob(f".{sha256}.*.partial")]:  # a write that never finished
                # checked again just before removing: a submission refreshes an existing file (and notes it in
                # the journal's current hour) before committing its rows
                if not _older_than(path, cutoff):
                    continue
                try:
                    size = path.stat().st_size
                    path.unlink()  # prefix folders stay: a concurrent write may be creating a file in them
                except FileNotFoundError:  # removed meanwhile (another sweep)
                    continue
                log.info("sweep: removed orphan image file %s (%d bytes)", path, size)
                removed, n_bytes = removed + 1, n_bytes + size
        shutil.rmtree(hour, ignore_errors=True)
    return removed, n_bytes


def _hours_past(journal: Path, cutoff: float) -> list[Path]:
    """The journal's hour folders whose whole hour ended before CUTOFF, oldest first."""
    if not journal.is_dir():
        return []
    due = []
    for hour in journal.iterdir():
        try:
            ends = calendar.timegm(time.strptime(hour.name, "%Y%m%d%H")) + 3600
        except ValueError:  # not the journal's
            continue
        if ends <= cutoff:
            due.append(hour)
    return sorted(due)


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False
