"""Classification of a sample's cells (or one image) by the production model, persisted once per version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.service import webhooks
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.counters import count_reported_cells
from bloodcell_core.service.db import get_row, insert_new, session_scope
from bloodcell_core.service.errors import NotFound
from bloodcell_core.service.fields import locate_queued_fields
from bloodcell_core.service.image_store import image_store
from bloodcell_core.service.results import Report
from bloodcell_core.service.samples import build_report, report_row, version_predictions
from bloodcell_core.service.states import CellStatus, SampleStatus
from bloodcell_core.service.tables import ModelVersion, Prediction, Sample
from bloodcell_core.service.versions import production_version

if TYPE_CHECKING:
    from bloodcell_core.ml.serving import Classifier


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
        "preprocessing_notes": result.preprocessing_notes,
        "worker": worker,
    }


def insert_predictions(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert predictions; a row that already exists (redelivered task) is left as it is."""
    insert_new(session, Prediction, rows, key=["image_sha256", "model_version_id"])


def classify_sample(
    settings: Settings,
    sample_pk: int,
    classifier_for: Callable[[ModelVersion], "Classifier"],
    worker: str,
    on_progress: Callable[[], None] = lambda: None,
) -> Report:
    """Locate the cells of the sample's new whole fields, classify every cell that has no prediction by
    the production model yet, and write the report.

    Predictions are committed batch by batch (``on_progress`` is called after each), so a worker killed
    mid-sample loses one batch at most: the redelivered task classifies only the cells still without one.
    """
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
        sample = get_row(session, Sample, sample_pk, with_for_update=True)  # one worker locates a field's cells
        from_fields = locate_queued_fields(session, settings, sample)
        todo = _cells_without_prediction(session, sample, version_id)
        stored = store.get_many(session, todo)

    errors = {sha: store.missing_message(sha) for sha in todo if sha not in stored}
    images = [(sha, stored[sha]) for sha in todo if sha in stored]
    newly_classified = 0
    for batch in classifier.classify_batches(images):
        rows = [prediction_row(r.name, version_id, r, worker) for r in batch if r.error is None]
        errors.update((r.name, r.error) for r in batch if r.error is not None)
        with session_scope(settings.database_url) as session:
            insert_predictions(session, rows)
        newly_classified += len(rows)
        if rows:  # a batch of undecodable images keeps nothing: it must not hide a poison message
            on_progress()

    with session_scope(settings.database_url) as session:
        sample = get_row(session, Sample, sample_pk, with_for_update=True)  # a concurrent review waits for the report
        classified = version_predictions(session, version_id, [c.image_sha256 for c in sample.cells])
        for cell in sample.cells:
            if cell.image_sha256 in classified:
                cell.status, cell.error = "done", None
            elif cell.image_sha256 in errors:
                cell.status, cell.error = "failed", errors[cell.image_sha256]
        previous = report_row(session, sample)
        first_for_version = previous is None or previous.model_version_id != version_id
        report = build_report(session, settings, sample, version_id)
        if first_for_version:  # a redelivered task rewrites the same report: its cells were counted once
            written = report_row(session, sample)
            assert written is not None  # build_report has just written it
            count_reported_cells(session, version_id, classified.values(), written.review_threshold, written.ood_threshold)
        record_event(
            session,
            worker,
            "sample.classified",
            sample.accession_id,
            status=sample.status,
            model_version=version.version,
            newly_classified=newly_classified,
            cells_from_fields=from_fields,
        )
        webhooks.queue_event(session, sample, "sample.classified")
        return report


def _classified(session: Session, sample: Sample, version_id: int) -> set[str]:
    """The image hashes of the sample's cells that have a prediction by this model version."""
    return set(version_predictions(session, version_id, [c.image_sha256 for c in sample.cells]))


def _cells_without_prediction(session: Session, sample: Sample, version_id: int) -> list[str]:
    """The distinct image hashes of the sample's cells still to classify, in the sample's order."""
    done = _classified(session, sample, version_id)
    return list(dict.fromkeys(c.image_sha256 for c in sample.cells if c.image_sha256 not in done))


def classify_image(
    settings: Settings, image_sha256: str, classifier_for: Callable[[ModelVersion], "Classifier"], worker: str
) -> dict[str, Any]:
    """Classify one stored image with the production model; the prediction is persisted once."""
    store = image_store(settings)
    with session_scope(settings.database_url) as session:
        version = production_version(session)
        stored = select(Prediction).where(Prediction.image_sha256 == image_sha256, Prediction.model_version_id == version.id)
        existing = session.scalar(stored)
        if existing is None:
            result = classifier_for(version).classify_one(store.get(session, image_sha256), name=image_sha256)
            if result.error is not None:
                return {"image_sha256": image_sha256, "error": result.error, "model_version": version.version}
            insert_predictions(session, [prediction_row(image_sha256, version.id, result, worker)])
            existing = session.scalars(stored).one()  # this insert's row, or a concurrent worker's
        return {
            "image_sha256": image_sha256,
            "label": existing.label,
            "confidence": existing.confidence,
            "probabilities": existing.probabilities,
            "model_version": version.version,
        }


def classify_cells_with(
    settings: Settings, version: ModelVersion, sample_pk: int, classifier_for: Callable[[ModelVersion], "Classifier"], worker: str
) -> int:
    """Classify the sample's cells that VERSION (any status) has not classified yet; stored, never used by a
    report (shadow scoring, a candidate scored on verified samples). Returns how many were stored."""
    with session_scope(settings.database_url) as session:
        sample = session.get(Sample, sample_pk)
        if sample is None:
            return 0
        done = set(session.scalars(select(Prediction.image_sha256).where(Prediction.model_version_id == version.id)))
        store = image_store(settings)
        todo = [cell for cell in sample.cells if cell.status == CellStatus.DONE and cell.image_sha256 not in done]
        stored = store.get_many(session, [cell.image_sha256 for cell in todo])
        images = [(cell.image_sha256, stored[cell.image_sha256]) for cell in todo if cell.image_sha256 in stored]
    results = classifier_for(version).classify(images) if images else []
    rows = [prediction_row(sha, version.id, result, worker) for (sha, _), result in zip(images, results) if result.error is None]
    with session_scope(settings.database_url) as session:
        insert_predictions(session, rows)
    return len(rows)
