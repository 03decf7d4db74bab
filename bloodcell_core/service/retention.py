"""Retention: samples older than the age a laboratory keeps (BLOODCELL_RETENTION_DAYS) leave the database,
with their cells, reports, reviews, webhook deliveries, and the images and predictions no kept sample
uses. The audit log stays whole (it is append-only): each removed sample gets a ``sample.purged`` event
with its final report, so who did what, and what was reported, can still be answered.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select, union
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import CompoundSelect

from bloodcell_core.config import MIN_ORPHAN_AGE_S, Settings
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.image_store import FileImageStore, file_store_root
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES
from bloodcell_core.service.tables import (
    CellReview,
    IdempotencyKey,
    Image,
    Prediction,
    Sample,
    SampleField,
    SampleImage,
    SampleReport,
    WebhookDelivery,
)

log = logging.getLogger(__name__)

BATCH = 200  # samples per transaction: a long purge never holds many locks for long


@dataclass(frozen=True)
class PurgeResult:
    cutoff: str  # samples submitted before this instant (UTC) were purged
    dry_run: bool  # True: only counted
    samples: int
    cells: int
    images: int  # image rows (and files of the file store) no kept sample uses any more
    image_bytes: int
    predictions: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def purge_older_than(settings: Settings, days: float, actor: str, dry_run: bool = False) -> PurgeResult:
    """Remove the classified samples submitted more than DAYS ago (see the module's docstring); with
    DRY_RUN only count the samples and cells that would go."""
    if not days > 0:
        raise ValueError(f"the retention age must be more than 0 days, got {days:g}")
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    old = select(Sample.id).where(Sample.created_at < cutoff, Sample.status.in_(list(FINAL_SAMPLE_STATUSES)))
    if dry_run:
        with session_scope(settings.database_url) as session:
            n_samples = session.scalar(select(func.count()).select_from(old.subquery())) or 0
            n_cells = session.scalar(select(func.count()).where(SampleImage.sample_id.in_(old))) or 0
        return PurgeResult(cutoff.isoformat(), True, n_samples, n_cells, 0, 0, 0)
    totals = {"samples": 0, "cells": 0, "images": 0, "image_bytes": 0, "predictions": 0}
    while True:
        with session_scope(settings.database_url) as session:
            ids = list(session.scalars(old.order_by(Sample.id).limit(BATCH)))
            if not ids:
                break
            counts, unused = _purge_batch(session, ids, actor)
        _remove_files(settings, unused)  # after the commit: a rolled-back batch keeps its files
        for key, value in counts.items():
            totals[key] += value
    result = PurgeResult(cutoff.isoformat(), False, **totals)
    log.info("retention: %s", result.as_dict())
    return result


def _purge_batch(session: Session, ids: list[int], actor: str) -> tuple[dict[str, int], list[str]]:
    """Delete the samples IDS and everything only they use; (counts, hashes of the images removed)."""
    samples = session.scalars(select(Sample).where(Sample.id.in_(ids)).with_for_update()).all()
    reports = {r.sample_id: r for r in session.scalars(select(SampleReport).where(SampleReport.sample_id.in_(ids)))}
    used: CompoundSelect = union(
        select(SampleImage.image_sha256).where(SampleImage.sample_id.in_(ids)),
        select(SampleImage.field_sha256).where(SampleImage.sample_id.in_(ids), SampleImage.field_sha256.is_not(None)),
        select(SampleField.image_sha256).where(SampleField.sample_id.in_(ids)),
    )
    hashes = set(session.scalars(select(used.subquery().c[0])))
    n_cells = session.scalar(select(func.count()).where(SampleImage.sample_id.in_(ids))) or 0
    for sample in samples:
        report = reports.get(sample.id)
        record_event(
            session,
            actor,
            "sample.purged",
            sample.accession_id,
            submitted_at=sample.created_at.isoformat(),
            status=sample.status,
            report_status=sample.report_status,
            signed_off_by=sample.signed_off_by,
            counts=report.counts if report is not None else None,
            flags=report.flags if report is not None else None,
        )
    for model in (CellReview, WebhookDelivery, IdempotencyKey, SampleReport, SampleImage, SampleField):
        session.execute(delete(model).where(model.sample_id.in_(ids)))
    session.execute(delete(Sample).where(Sample.id.in_(ids)))
    still_used: CompoundSelect = union(
        select(SampleImage.image_sha256).where(SampleImage.image_sha256.in_(hashes)),
        select(SampleImage.field_sha256).where(SampleImage.field_sha256.in_(hashes)),
        select(SampleField.image_sha256).where(SampleField.image_sha256.in_(hashes)),
        select(CellReview.image_sha256).where(CellReview.image_sha256.in_(hashes)),
    )
    unused = sorted(hashes - set(session.scalars(select(still_used.subquery().c[0]))))
    n_bytes = session.scalar(select(func.coalesce(func.sum(Image.n_bytes), 0)).where(Image.sha256.in_(unused))) or 0
    n_predictions = len(session.scalars(delete(Prediction).where(Prediction.image_sha256.in_(unused)).returning(Prediction.id)).all())
    session.execute(delete(Image).where(Image.sha256.in_(unused)))
    counts = {"samples": len(ids), "cells": n_cells, "images": len(unused), "image_bytes": n_bytes, "predictions": n_predictions}
    return counts, unused


def _remove_files(settings: Settings, hashes: list[str]) -> None:
    if settings.image_store != "file":  # the database store's bytes went with their rows
        return
    store = FileImageStore(file_store_root(settings))
    recent = datetime.now(timezone.utc).timestamp() - MIN_ORPHAN_AGE_S
    for sha256 in hashes:
        path = store.path(sha256)
        try:
            if path.stat().st_mtime > recent:  # a submission of the same bytes has just refreshed it: keep it
                continue
            path.unlink()
        except FileNotFoundError:
            continue
