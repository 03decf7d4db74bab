"""Services over the database: submission, classification of a sample, reports, model versions, retraining.

Producers (the Python client, the CLI) call ``submit_sample``; workers call ``classify_sample`` and
``run_training``. Promotion and evaluation sets are in ``promotion.py``. Nothing here imports Celery:
the workers are a thin layer.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bloodcell_core import webhooks
from bloodcell_core.artifacts import read_metadata, version_id
from bloodcell_core.config import Settings
from bloodcell_core.db import (
    AuditEvent,
    CellReview,
    IdempotencyKey,
    Image,
    ModelStatus,
    ModelVersion,
    Prediction,
    ReportStatus,
    Sample,
    SampleImage,
    SampleReport,
    SampleStatus,
    TrainingRun,
    insert_new,
    session_scope,
)
from bloodcell_core.image_header import ImageDecodeError, image_dimensions
from bloodcell_core.image_store import image_store, sha256_of
from bloodcell_core.ood import FALLBACK_REVIEW_THRESHOLD, UNFAMILIAR_REASON, review_reasons

if TYPE_CHECKING:
    from bloodcell_core.inference import Classifier

# No "/": accession ids appear in URL paths and file names.
ACCESSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class ServiceError(ValueError):
    """A request that cannot be carried out as asked (bad id, bad value). The HTTP API answers 422."""


class NotFound(ServiceError):
    """No such sample, cell, model version or client (HTTP 404)."""


class Conflict(ServiceError):
    """The request contradicts the stored state, e.g. an idempotency key reused for another request (HTTP 409)."""


class LimitExceeded(ServiceError):
    """Too many bytes, images or pixels (HTTP 413)."""


def audit(session: Session, actor: str, action: str, subject: str, **details: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action, subject=subject, details=details))


# --- model versions ---------------------------------------------------------------------------


def register_model_version(session: Session, artifact_dir: Path, status: str, actor: str) -> ModelVersion:
    """Register a model directory; the same model file registered twice is the same version."""
    from bloodcell_core.inference import served_views

    metadata = read_metadata(artifact_dir)
    served_views(metadata, artifact_dir)
    version = version_id(artifact_dir)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if existing is not None:
        return existing
    row = ModelVersion(
        version=version,
        plugin=metadata["plugin"],
        artifact_path=str(artifact_dir.resolve()),
        status=status,
        classes=metadata["classes"],
        metrics={"training": metadata["metrics"], "calibration": metadata.get("calibration")},
        data_fingerprint=metadata["dataset"]["fingerprint"],
        promoted_at=datetime.now(timezone.utc) if status == ModelStatus.PRODUCTION else None,
    )
    session.add(row)
    session.flush()
    audit(session, actor, "model.registered", version, status=status, artifact=row.artifact_path)
    return row


def load_classifier(version: ModelVersion) -> "Classifier":
    """The version's model, refusing a directory whose weights or calibration changed since it was registered.

    The threshold in the database row and the temperature in the files must belong to the same model.
    """
    from bloodcell_core.inference import Classifier

    found = version_id(version.artifact_path)
    if found != version.version:
        raise ServiceError(f"{version.artifact_path} is now model {found}, not {version.version}: it changed after it was "
                           "registered (e.g. recalibrated in place); register it as a new version with "
                           "`bloodcell models register DIR`")
    return Classifier.from_dir(version.artifact_path)


def production_version(session: Session) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.PRODUCTION))
    if row is None:
        raise ServiceError("no production model: run `bloodcell up` or `bloodcell models promote VERSION`")
    return row


def ensure_production_model(settings: Settings) -> str:
    """On an empty registry, register the shipped default model as production.

    Several workers may start at once: the one that loses the race sees the winner's row.
    """
    for _ in range(2):
        try:
            with session_scope(settings.database_url) as session:
                current = session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.PRODUCTION))
                if current is None:
                    current = register_model_version(session, settings.default_model, ModelStatus.PRODUCTION,
                                                     "system")
                return current.version
        except IntegrityError:
            continue
    raise ServiceError("could not register the default model")


def find_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound(f"unknown model version {version[:128]!r}")
    return row


def list_versions(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    return [
        {
            "version": r.version,
            "plugin": r.plugin,
            "status": r.status,
            "created_at": r.created_at.isoformat(),
            "test_accuracy": r.metrics.get("training", {}).get("test", {}).get("accuracy"),
            "test_macro_f1": r.metrics.get("training", {}).get("test", {}).get("macro_f1"),
            "artifact": r.artifact_path,
        }
        for r in rows
    ]


# --- submission -------------------------------------------------------------------------------


@dataclass
class Submission:
    sample_pk: int | None  # None where the submission went through the HTTP API
    accession_id: str
    new_cells: int  # 0 when the same sample and images were submitted before
    status: str
    n_cells: int = 0
    replayed: bool = False  # an Idempotency-Key seen before: the earlier submission's sample


def valid_accession_id(accession_id: str) -> bool:
    return ACCESSION_PATTERN.fullmatch(accession_id) is not None  # fullmatch: "$" would let "S-1\n" through


def check_accession_id(accession_id: str) -> None:
    if not valid_accession_id(accession_id):
        raise ServiceError(
            f"invalid sample id {accession_id[:200]!r}: 1-128 characters, letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )


def cell_name(name: str) -> str:
    """A file name as a label that any database stores: NUL dropped, undecodable bytes shown as U+FFFD."""
    return name.replace("\x00", "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_image_limits(settings: Settings, name: str, data: bytes) -> None:
    """Refuse an image over the byte or pixel limit (pixels read from the header: bombs are never decoded)."""
    if len(data) > settings.max_image_bytes:
        raise LimitExceeded(f"image {name!r} is {len(data):,} bytes, over {settings.max_image_bytes:,} "
                            "(BLOODCELL_MAX_IMAGE_BYTES)")
    try:
        size = image_dimensions(data)
    except ImageDecodeError as exc:
        raise LimitExceeded(f"image {name!r}: {exc}") from None
    if size is not None and size[0] * size[1] > settings.max_image_pixels:
        raise LimitExceeded(f"image {name!r} is {size[0]} x {size[1]} pixels, over {settings.max_image_pixels:,} "
                            "(BLOODCELL_MAX_IMAGE_PIXELS)")


def request_fingerprint(accession_id: str, image_sha256s: list[str]) -> str:
    return hashlib.sha256("\n".join([accession_id, *sorted(image_sha256s)]).encode()).hexdigest()


def submit_sample(
    settings: Settings,
    accession_id: str,
    images: list[tuple[str, bytes]],
    actor: str,
    stored: list[tuple[str, str]] = (),
    client_id: int | None = None,
    idempotency_key: str | None = None,
) -> Submission:
    """Store the images by content hash and create the sample and its cells, idempotently, in one transaction.

    ``stored`` names images already in the store as (name, sha256). Submitting the same accession
    id again adds only images it did not have; the same images again change nothing. An API
    client's ``idempotency_key`` seen before returns that submission's sample (``replayed``); the
    same key with another request is a Conflict. Limits: BLOODCELL_MAX_IMAGE_BYTES and
    _MAX_IMAGE_PIXELS per image, _MAX_IMAGES_PER_SAMPLE per sample over all its submissions.
    """
    check_accession_id(accession_id)
    if not images and not stored:
        raise ServiceError("a sample needs at least one image")
    if idempotency_key is not None and client_id is None:
        raise ServiceError("an idempotency key belongs to an API client: pass client_id")
    for name, data in images:
        check_image_limits(settings, name, data)
    hashed = [(cell_name(name), sha256_of(data), data) for name, data in images]
    fingerprint = request_fingerprint(accession_id, [sha for _, sha, _ in hashed] + [sha for _, sha in stored])
    store = image_store(settings)
    try:
        with session_scope(settings.database_url) as session:
            if idempotency_key is not None:
                seen = session.scalar(select(IdempotencyKey).where(IdempotencyKey.client_id == client_id,
                                                                   IdempotencyKey.key == idempotency_key))
                if seen is not None:
                    if seen.request_sha256 != fingerprint:
                        raise Conflict(f"Idempotency-Key {idempotency_key[:80]!r} was used before for a different request")
                    sample = session.get(Sample, seen.sample_id)
                    return Submission(sample.id, sample.accession_id, 0, sample.status, len(sample.cells), replayed=True)
            referenced = {sha for _, sha in stored}
            missing = referenced - set(session.scalars(select(Image.sha256).where(Image.sha256.in_(referenced))))
            if missing:
                raise NotFound(f"no stored image with sha256 {min(missing)[:80]!r}")
            sample = session.scalar(select(Sample).where(Sample.accession_id == accession_id))
            if sample is None:
                sample = Sample(accession_id=accession_id, status=SampleStatus.QUEUED, client_id=client_id)
                session.add(sample)
                session.flush()
            elif client_id is not None and sample.client_id not in (None, client_id):
                raise Conflict(f"sample {accession_id!r} was submitted by another API client")
            known = {cell.image_sha256 for cell in sample.cells}
            total = len(known | {sha for _, sha, _ in hashed} | {sha for _, sha in stored})
            if total > settings.max_images_per_sample:  # checked before any image is stored
                raise LimitExceeded(f"sample {accession_id!r} would have {total} images, over "
                                    f"{settings.max_images_per_sample} (BLOODCELL_MAX_IMAGES_PER_SAMPLE)")
            store.put_many(session, {sha: data for _, sha, data in hashed})
            named = [(name, sha) for name, sha, _ in hashed] + list(stored)
            cells = []
            for name, sha256 in named:
                if sha256 not in known:
                    known.add(sha256)
                    cells.append({"sample_id": sample.id, "image_sha256": sha256, "name": name[:512]})
            if cells:  # one bulk insert: a sample has hundreds of cells
                session.execute(insert(SampleImage), cells)
            new_cells = len(cells)
            if new_cells:
                sample.status = SampleStatus.QUEUED
                audit(session, actor, "sample.submitted", accession_id, new_cells=new_cells)
            if idempotency_key is not None:
                session.add(IdempotencyKey(client_id=client_id, key=idempotency_key, request_sha256=fingerprint,
                                           sample_id=sample.id))
                session.flush()
            return Submission(sample.id, accession_id, new_cells, sample.status, len(known))
    except IntegrityError:
        raise Conflict(f"a concurrent request created sample {accession_id!r} or used the same Idempotency-Key: "
                       "retry it") from None


# --- classification ---------------------------------------------------------------------------


def prediction_row(image_sha256: str, version_id: int, result: Any, worker: str) -> dict[str, Any]:
    """A ``predictions`` row from an inference.Prediction."""
    return {
        "image_sha256": image_sha256,
        "model_version_id": version_id,
        "label": result.label,
        "confidence": result.confidence,
        "probabilities": result.probabilities,
        "preprocess_ms": result.preprocess_ms,
        "predict_ms": result.predict_ms,
        "ood_score": result.ood_score,
        "worker": worker,
    }


def insert_predictions(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert predictions; a row that already exists (redelivered task) is left as it is."""
    insert_new(session, Prediction, rows, key=["image_sha256", "model_version_id"])


def classify_sample(
    settings: Settings, sample_pk: int, classifier_for: Callable[[ModelVersion], "Classifier"], worker: str
) -> dict[str, Any]:
    """Classify every cell of a sample that has no prediction by the production model yet; write the report."""
    store = image_store(settings)
    with session_scope(settings.database_url) as session:
        sample = session.get(Sample, sample_pk)
        if sample is None:
            raise NotFound(f"no sample with id {sample_pk}")
        sample.status = SampleStatus.RUNNING
        version = production_version(session)
        version_id = version.id
    classifier = classifier_for(version)

    with session_scope(settings.database_url) as session:
        sample = session.get(Sample, sample_pk, with_for_update=True)  # a concurrent review waits for the report
        cells = list(sample.cells)
        done = set(
            session.scalars(
                select(Prediction.image_sha256).where(
                    Prediction.model_version_id == version_id,
                    Prediction.image_sha256.in_([c.image_sha256 for c in cells]),
                )
            )
        )
        stored = store.get_many(session, [c.image_sha256 for c in cells if c.image_sha256 not in done])
        todo, images = [], []
        for cell in cells:
            if cell.image_sha256 in done:
                continue
            if cell.image_sha256 in stored:
                images.append((cell.name, stored[cell.image_sha256]))
                todo.append(cell)
            else:
                cell.status, cell.error = "failed", store.missing_message(cell.image_sha256)
        results = classifier.classify(images)
        rows = []
        for cell, result in zip(todo, results):
            if result.error is not None:
                cell.status, cell.error = "failed", result.error
                continue
            cell.status, cell.error = "done", None
            rows.append(prediction_row(cell.image_sha256, version_id, result, worker))
        insert_predictions(session, rows)
        for cell in cells:
            if cell.image_sha256 in done:
                cell.status, cell.error = "done", None
        report = build_report(session, settings, sample, version_id)
        audit(session, worker, "sample.classified", sample.accession_id, status=sample.status,
              model_version=version.version, newly_classified=len(rows))
        webhooks.queue_event(session, sample, "sample.classified")
        return report


def classify_image(
    settings: Settings, image_sha256: str, classifier_for: Callable[[ModelVersion], "Classifier"], worker: str
) -> dict[str, Any]:
    """Classify one stored image with the production model; the prediction is persisted once."""
    store = image_store(settings)
    with session_scope(settings.database_url) as session:
        version = production_version(session)
        stored = select(Prediction).where(Prediction.image_sha256 == image_sha256,
                                          Prediction.model_version_id == version.id)
        existing = session.scalar(stored)
        if existing is None:
            result = classifier_for(version).classify_one(store.get(session, image_sha256), name=image_sha256)
            if result.error is not None:
                return {"image_sha256": image_sha256, "error": result.error, "model_version": version.version}
            insert_predictions(session, [prediction_row(image_sha256, version.id, result, worker)])
            existing = session.scalar(stored)  # this insert's row, or a concurrent worker's
        return {"image_sha256": image_sha256, "label": existing.label, "confidence": existing.confidence,
                "probabilities": existing.probabilities, "model_version": version.version}


def store_image(settings: Settings, data: bytes) -> str:
    """Put one image into the store (for single-image classification); returns its sha256."""
    with session_scope(settings.database_url) as session:
        return image_store(settings).put(session, data)


def review_threshold(settings: Settings, version: ModelVersion) -> float:
    """BLOODCELL_REVIEW_THRESHOLD if set to a number, else the threshold calibrated with the model."""
    if settings.review_threshold is not None:
        return settings.review_threshold
    return float((version.metrics.get("calibration") or {}).get("review_threshold", FALLBACK_REVIEW_THRESHOLD))


def ood_threshold(version: ModelVersion) -> float | None:
    """The out-of-distribution threshold calibrated with the model (None: it has no scorer)."""
    record = (version.metrics.get("calibration") or {}).get("ood")
    return float(record["threshold"]) if record else None


BLASTS, IMMATURE_CELLS, UNFAMILIAR_IMAGES = "blasts", "immature_cells", "unfamiliar_images"
FLAG_TEXT = {
    BLASTS: "blast cells found: review the smear",
    IMMATURE_CELLS: "immature granulocytes or blasts above the configured share",
    UNFAMILIAR_IMAGES: "many cells are unlike the images the model was trained on: its differential may not hold "
                       "for these images; review them",
}


def differential_percent(settings: Settings, counts: dict[str, int]) -> tuple[dict[str, float], int]:
    """(percent per class, leukocytes counted): as a laboratory reports a differential, per 100 leukocytes.

    Nucleated red cells and platelets (BLOODCELL_NON_LEUKOCYTE_CLASSES) are not leukocytes: they do not
    count towards the 100, and their figure is per 100 leukocytes too (LOINC's "nucleated erythrocytes/100
    leukocytes"). A sample without any leukocyte has no differential: every figure is 0.
    """
    leukocytes = sum(k for label, k in counts.items() if label not in settings.non_leukocyte_classes)
    return {label: round(100.0 * k / leukocytes, 2) if leukocytes else 0.0 for label, k in counts.items()}, leukocytes


def sample_flags(settings: Settings, counts: dict[str, int], percent: dict[str, float], n: int,
                 n_unfamiliar: int) -> list[str]:
    """The sample-level flags, each of which sends the sample to review: blasts (count or percent of
    BLOODCELL_BLAST_CLASS), immature cells (BLOODCELL_IMMATURE_CLASSES over BLOODCELL_IMMATURE_PERCENT of the
    leukocytes), unfamiliar images (more than BLOODCELL_UNFAMILIAR_SHARE of the classified cells unlike the
    training images)."""
    if not n:
        return []
    flags = []
    if counts.get(settings.blast_class, 0) >= settings.blast_count or percent.get(settings.blast_class, 0.0) >= settings.blast_percent:
        flags.append(BLASTS)
    if sum(percent.get(label, 0.0) for label in settings.immature_classes) > settings.immature_percent:
        flags.append(IMMATURE_CELLS)
    if n_unfamiliar / n > settings.unfamiliar_share:
        flags.append(UNFAMILIAR_IMAGES)
    return flags


def latest_reviews(session: Session, sample_id: int) -> dict[str, CellReview]:
    """The technologist's latest label per cell (image sha256) of a sample."""
    reviews = session.scalars(select(CellReview).where(CellReview.sample_id == sample_id).order_by(CellReview.id))
    return {review.image_sha256: review for review in reviews}


def build_report(session: Session, settings: Settings, sample: Sample, version_id: int) -> dict[str, Any]:
    """Differential count and percent, blast flag, cells for review; sets the sample's final status.

    A technologist's label replaces the model's for its cell, and a reviewed cell needs no more review.
    A change to the counts of a signed-off report makes it ``amended``.
    """
    version = session.get(ModelVersion, version_id)
    cells = list(sample.cells)
    predictions = {
        p.image_sha256: p
        for p in session.scalars(
            select(Prediction).where(
                Prediction.model_version_id == version_id,
                Prediction.image_sha256.in_([c.image_sha256 for c in cells]),
            )
        )
    }
    classified = [(c, predictions[c.image_sha256]) for c in cells if c.image_sha256 in predictions]
    threshold, unfamiliar_above = review_threshold(settings, version), ood_threshold(version)
    reviews = latest_reviews(session, sample.id)
    counts = {label: 0 for label in version.classes}
    for c, p in classified:
        counts[reviews[c.image_sha256].label if c.image_sha256 in reviews else p.label] += 1
    n = len(classified)
    percent, n_leukocytes = differential_percent(settings, counts)
    blast_count = counts.get(settings.blast_class, 0)
    blast_percent = percent.get(settings.blast_class, 0.0)
    reasons = {c.image_sha256: review_reasons(p.confidence, threshold, p.ood_score, unfamiliar_above) for c, p in classified}
    review = [
        {"name": c.name, "image_sha256": c.image_sha256, "label": p.label, "confidence": round(p.confidence, 4),
         "reasons": reasons[c.image_sha256]}
        for c, p in classified
        if reasons[c.image_sha256] and c.image_sha256 not in reviews
    ]
    # a cell a technologist labelled is familiar now: the warning is about what nobody has looked at
    n_unfamiliar = sum(UNFAMILIAR_REASON in reasons[c.image_sha256] and c.image_sha256 not in reviews for c, _ in classified)
    flags = sample_flags(settings, counts, percent, n, n_unfamiliar)
    failed = [{"name": c.name, "image_sha256": c.image_sha256, "error": c.error} for c in cells if c.status == "failed"]
    if not classified:
        sample.status, sample.error = SampleStatus.FAILED, "no image of the sample could be classified"
    elif review or failed or flags:
        sample.status, sample.error = SampleStatus.NEEDS_REVIEW, None
    else:
        sample.status, sample.error = SampleStatus.DONE, None
    values = dict(
        model_version_id=version_id, n_cells=len(cells), n_classified=n, n_failed=len(failed), counts=counts,
        percent=percent, blast_count=blast_count, blast_percent=blast_percent,
        blast_flag=BLASTS in flags, review_threshold=threshold, ood_threshold=unfamiliar_above,
        n_unfamiliar=n_unfamiliar, flags=flags, needs_review=review, failed=failed,
    )
    row = session.scalar(select(SampleReport).where(SampleReport.sample_id == sample.id))
    if row is not None and sample.report_status != ReportStatus.PRELIMINARY and row.counts != counts:
        sample.report_status = ReportStatus.AMENDED
    if row is None:
        session.add(SampleReport(sample_id=sample.id, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return report_json(session, settings, sample)


def report_json(session: Session, settings: Settings, sample: Sample) -> dict[str, Any]:
    report = session.scalar(select(SampleReport).where(SampleReport.sample_id == sample.id))
    base = {"sample_id": sample.accession_id, "status": sample.status, "error": sample.error,
            "n_cells": len(sample.cells), "report_status": sample.report_status,
            "signed_off_by": sample.signed_off_by,
            "signed_off_at": sample.signed_off_at.isoformat() if sample.signed_off_at else None,
            "n_reviewed": len(latest_reviews(session, sample.id))}
    if report is None:
        return base | {"counts": {}, "percent": {}, "blast_flag": False, "flags": [], "warnings": [], "needs_review": [],
                       "failed": [], "model_version": None}
    return base | {
        "model_version": session.get(ModelVersion, report.model_version_id).version,
        "n_classified": report.n_classified,
        "n_leukocytes": differential_percent(settings, report.counts)[1],
        "n_failed": report.n_failed,
        "counts": report.counts,
        "percent": report.percent,
        "blast_count": report.blast_count,
        "blast_percent": report.blast_percent,
        "blast_flag": report.blast_flag,
        "flags": report.flags,
        "warnings": [FLAG_TEXT[flag] for flag in report.flags],
        "n_unfamiliar": report.n_unfamiliar,
        "review_threshold": report.review_threshold,
        "ood_threshold": report.ood_threshold,
        "needs_review": report.needs_review,
        "failed": report.failed,
    }


def wait_until_classified(read_report: Callable[[str], dict[str, Any]], accession_id: str, timeout: float,
                          poll: float) -> dict[str, Any]:
    """Poll ``read_report`` until the sample is done, needs_review or failed (the in-process and HTTP clients)."""
    deadline = time.monotonic() + timeout
    while True:
        report = read_report(accession_id)
        if report["status"] in SampleStatus.FINAL:
            return report
        if time.monotonic() > deadline:
            raise TimeoutError(f"sample {accession_id!r} still {report['status']} after {timeout:.0f} s")
        time.sleep(poll)


def find_sample(session: Session, accession_id: str, lock: bool = False) -> Sample:
    """The sample by accession id; ``lock`` holds its row until the transaction ends (PostgreSQL)."""
    if not valid_accession_id(accession_id):  # no such id can exist; NUL bytes and the like never reach SQL
        raise NotFound(f"no sample {accession_id[:200]!r}")
    query = select(Sample).where(Sample.accession_id == accession_id)
    sample = session.scalar(query.with_for_update() if lock else query)
    if sample is None:
        raise NotFound(f"no sample {accession_id[:200]!r}")
    return sample


def get_report(settings: Settings, accession_id: str) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return report_json(session, settings, find_sample(session, accession_id))


def audit_events(settings: Settings, subject: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The audit log, newest first, optionally for one subject (a sample's accession id, a model version)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    with session_scope(settings.database_url) as session:
        return [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "subject": e.subject,
                 "details": e.details} for e in session.scalars(query)]


def get_image(settings: Settings, image_sha256: str) -> bytes:
    with session_scope(settings.database_url) as session:
        return image_store(settings).get(session, image_sha256)


def mark_sample_failed(settings: Settings, sample_pk: int, error: str, actor: str) -> None:
    with session_scope(settings.database_url) as session:
        sample = session.get(Sample, sample_pk)
        if sample is not None:
            sample.status, sample.error = SampleStatus.FAILED, error
            audit(session, actor, "sample.failed", sample.accession_id, error=error)


# --- retraining and evaluation ----------------------------------------------------------------


def create_training_run(settings: Settings, plugin: str, data_dir: str, parameters: dict[str, Any], actor: str) -> int:
    with session_scope(settings.database_url) as session:
        run = TrainingRun(plugin=plugin, data_dir=data_dir, parameters=parameters)
        session.add(run)
        session.flush()
        audit(session, actor, "training.requested", f"run {run.id}", plugin=plugin, data_dir=data_dir,
              parameters=parameters)
        return run.id


def run_training(settings: Settings, run_id: int, actor: str) -> str:
    """Train the run's plugin into BLOODCELL_MODELS_DIR and register the result as a candidate.

    With the parameter ``include_reviewed`` the technologists' reviewed cells join the dataset.
    """
    from bloodcell_core.training import train

    with session_scope(settings.database_url) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFound(f"no training run {run_id}")
        if run.status == "done":  # a redelivered task: the candidate exists already
            return session.get(ModelVersion, run.model_version_id).version
        run.status = "running"
        plugin, data_dir, parameters = run.plugin, run.data_dir, dict(run.parameters)
    out_dir = settings.models_dir / f"run-{run_id}-{plugin}"
    try:
        if parameters.pop("include_reviewed", False):
            from bloodcell_core.review import training_data_with_reviews

            data_dir = training_data_with_reviews(settings, Path(data_dir), settings.models_dir / f"run-{run_id}-data")
        if not (out_dir / "metadata.json").exists():
            train(plugin, data_dir, out_dir, progress=False, log=lambda _: None, **parameters)
    except Exception as exc:
        with session_scope(settings.database_url) as session:
            run = session.get(TrainingRun, run_id)
            run.status, run.error, run.finished_at = "failed", f"{type(exc).__name__}: {exc}", datetime.now(timezone.utc)
        raise
    with session_scope(settings.database_url) as session:
        version = register_model_version(session, out_dir, ModelStatus.CANDIDATE, actor)
        run = session.get(TrainingRun, run_id)
        run.status, run.model_version_id, run.finished_at = "done", version.id, datetime.now(timezone.utc)
        return version.version
