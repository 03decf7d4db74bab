"""Technologist review: per-cell results, relabelling with an audit trail, sign-off, reviewed labels as training data."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import PIL.Image
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import list_class_files
from bloodcell_core.service import signoff, webhooks
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.counters import count_relabel
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.image_store import image_store
from bloodcell_core.service.results import CellBox, CellResult, LabelProbability, Report, ReviewFailedCell, SampleForReview
from bloodcell_core.service.samples import (
    build_report,
    cell_review_reasons,
    find_sample,
    latest_reviews,
    report_row,
    version_predictions,
)
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES, CellStatus, FieldStatus, ReportStatus, SampleStatus
from bloodcell_core.service.tables import CellReview, ModelVersion, Prediction, Sample, SampleImage, SampleReport


def _report_version(session: Session, sample: Sample) -> ModelVersion:
    report = report_row(session, sample)
    if report is None:
        raise Conflict(f"sample {sample.accession_id!r} is not classified yet (status {sample.status})")
    return get_row(session, ModelVersion, report.model_version_id)


def cell_box(cell: SampleImage) -> CellBox | None:
    """Where a cell found in a whole field sat in it (pixels); None for a cell submitted as its own image."""
    if cell.field_sha256 is None:
        return None
    # the box columns are nullable (a cell image has none): validation fails loudly should a field's cell lack one
    box = {"x": cell.box_x, "y": cell.box_y, "width": cell.box_width, "height": cell.box_height, "touches_edge": cell.touches_edge}
    return CellBox.model_validate(box)


def cell_results(session: Session, sample: Sample, cells: list[SampleImage] | None = None) -> list[CellResult]:
    """Every cell of a sample (or these CELLS of it): the model's label and confidence, a reviewer's label,
    the label that counts."""
    cells = sample.cells if cells is None else cells
    report = report_row(session, sample)
    predictions = {} if report is None else version_predictions(session, report.model_version_id, [c.image_sha256 for c in cells])
    reviews = latest_reviews(session, sample.id)
    threshold = report.review_threshold if report is not None else 1.0
    unfamiliar_above = report.ood_threshold if report is not None else None
    rows = []
    for cell in cells:
        prediction, review = predictions.get(cell.image_sha256), reviews.get(cell.image_sha256)
        top = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])[:3] if prediction else []
        reasons = cell_review_reasons(prediction, threshold, unfamiliar_above, review is not None) if prediction else []
        rows.append(
            CellResult(
                name=cell.name,
                image_sha256=cell.image_sha256,
                status=cell.status,
                error=cell.error,
                model_label=prediction.label if prediction else None,
                confidence=round(prediction.confidence, 4) if prediction else None,
                top3=[LabelProbability(label=label, probability=round(p, 4)) for label, p in top],
                reviewed_label=review.label if review else None,
                reviewed_by=review.reviewer if review else None,
                reviewed_reason=review.reason if review else None,
                label=review.label if review else (prediction.label if prediction else None),
                ood_score=round(prediction.ood_score, 2) if prediction and prediction.ood_score is not None else None,
                needs_review=bool(reasons),
                review_reasons=reasons,
                preprocessing_notes=list(prediction.preprocessing_notes) if prediction else [],
                field_sha256=cell.field_sha256,
                box=cell_box(cell),
            )
        )
    return rows


def get_cells(session: Session, *, accession_id: str, needs_review: bool = False) -> list[CellResult]:
    rows = cell_results(session, find_sample(session, accession_id))
    return [row for row in rows if row.needs_review] if needs_review else rows


def review_queue(session: Session, *, limit: int = 100) -> list[SampleForReview]:
    """Samples waiting for a technologist, oldest first, until someone signs their report off: with the cells to
    review, the failed images and fields, the report's flags, and why (``error``) when no image could be classified."""
    samples = session.scalars(
        select(Sample)
        .where(
            Sample.status.in_([SampleStatus.NEEDS_REVIEW, SampleStatus.FAILED]),
            Sample.report_status == ReportStatus.PRELIMINARY,  # approved (final, amended) reports have left it
        )
        .order_by(Sample.created_at)
        .limit(limit)
        .options(selectinload(Sample.fields))
    ).all()
    ids = [s.id for s in samples]
    reports = {r.sample_id: r for r in session.scalars(select(SampleReport).where(SampleReport.sample_id.in_(ids)))}
    listed = {(r.sample_id, cell["image_sha256"]) for r in reports.values() for cell in r.needs_review}
    # only the cells the queue shows are read, not every cell of every sample: those the reports list for
    # review (a report is rebuilt at every change) and the failed ones
    shown: dict[int, list[SampleImage]] = {}
    for cell in session.scalars(
        select(SampleImage)
        .where(
            SampleImage.sample_id.in_(ids),
            or_(SampleImage.status == CellStatus.FAILED, SampleImage.image_sha256.in_({sha for _, sha in listed})),
        )
        .order_by(SampleImage.id)
    ):
        shown.setdefault(cell.sample_id, []).append(cell)
    return [
        SampleForReview(
            sample_id=s.accession_id,
            status=s.status,
            error=s.error,
            flags=list(reports[s.id].flags) if s.id in reports else [],
            cells=[
                c
                for c in cell_results(session, s, [c for c in shown.get(s.id, []) if (s.id, c.image_sha256) in listed])
                if c.needs_review
            ],
            failed=[ReviewFailedCell(name=c.name, error=c.error) for c in shown.get(s.id, []) if c.status == CellStatus.FAILED],
            failed_fields=[ReviewFailedCell(name=f.name, error=f.error) for f in s.fields if f.status == FieldStatus.FAILED],
        )
        for s in samples
    ]


def relabel_cell(
    session: Session, *, settings: Settings, accession_id: str, image_sha256: str, label: str, reviewer: str, reason: str, actor: str
) -> Report:
    """Set a technologist's label for one cell; the report is recomputed and the change audited."""
    if not reviewer.strip() or not reason.strip():
        raise ServiceError("a review needs the reviewer's name and a reason")
    sample = find_sample(session, accession_id, lock=True)
    version = _report_version(session, sample)
    if label not in version.classes:
        raise ServiceError(f"unknown label {label[:64]!r}; this report's classes: {', '.join(version.classes)}")
    cell = next((c for c in sample.cells if c.image_sha256 == image_sha256), None)
    if cell is None:
        raise NotFound(f"sample {accession_id!r} has no cell with image {image_sha256[:80]!r}")
    if cell.status != CellStatus.DONE:
        raise Conflict(f"cell {cell.name!r} has no classification to review ({cell.error or cell.status})")
    previous = latest_reviews(session, sample.id).get(image_sha256)
    model_label = session.scalar(
        select(Prediction.label).where(Prediction.image_sha256 == image_sha256, Prediction.model_version_id == version.id)
    )
    previous_label = previous.label if previous else model_label
    session.add(
        CellReview(
            sample_id=sample.id,
            image_sha256=image_sha256,
            previous_label=previous_label,
            label=label,
            reviewer=reviewer,
            reason=reason,
        )
    )
    count_relabel(session, version.id, previous_label, label)
    session.flush()
    record_event(
        session,
        actor,
        "cell.relabelled",
        accession_id,
        image_sha256=image_sha256,
        cell=cell.name,
        reviewer=reviewer,
        old=previous_label,
        new=label,
        reason=reason,
    )
    was_signed = sample.signed_off_at is not None
    report = build_report(session, settings, sample, version.id)
    if was_signed and sample.signed_off_at is None:  # the laboratory system must stop trusting what it was sent
        webhooks.queue_event(session, sample, "sample.sign_off_withdrawn")
    return report


def sign_off(
    session: Session,
    *,
    settings: Settings,
    accession_id: str,
    reviewer: str,
    comment: str,
    actor: str,
    confirm_incomplete: bool = False,
) -> Report:
    """Release the report under the console user REVIEWER: the one entry to the sign-off rule (``signoff``)
    for the console, the API and the CLI. Checked with the sample's row locked, so a relabel in between
    cannot slip through; ``confirm_incomplete`` confirms failed images or too few leukocytes."""
    if not reviewer.strip():
        raise ServiceError("sign-off needs the name of the console user who signs")
    sample = find_sample(session, accession_id, lock=True)
    if sample.status not in FINAL_SAMPLE_STATUSES:
        raise Conflict(f"sample {accession_id!r} is still {sample.status}: sign off once it is classified")
    version = _report_version(session, sample)
    report = build_report(session, settings, sample, version.id)
    signoff.approve(session, settings, sample, report, reviewer, comment, confirm_incomplete, actor)
    webhooks.queue_event(session, sample, "sample.signed_off")
    session.flush()
    return build_report(session, settings, sample, version.id)


def _image_suffix(data: bytes) -> str:
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return "." + (image.format or "img").lower().replace("jpeg", "jpg")
    except Exception:
        return ".img"


def export_reviewed_labels(session: Session, *, settings: Settings, out_dir: Path) -> dict[str, int]:
    """Write every reviewed cell image, under its latest reviewed label, as OUT/<label>/<sha256>.<ext>."""
    store = image_store(settings)
    counts: dict[str, int] = {}
    latest: dict[str, CellReview] = {}
    for review in session.scalars(select(CellReview).order_by(CellReview.id)):
        latest[review.image_sha256] = review
    for sha256, review in sorted(latest.items()):
        data = store.get(session, sha256)
        target = out_dir / review.label / f"{sha256}{_image_suffix(data)}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        counts[review.label] = counts.get(review.label, 0) + 1
    return counts


def training_data_with_reviews(settings: Settings, data_dir: Path, out_dir: Path) -> Path:
    """A folder-per-class dataset of DATA_DIR (linked, not copied) plus the reviewed cells, built afresh."""
    shutil.rmtree(out_dir, ignore_errors=True)  # a redelivered task sees the labels as they are now
    for label, path in list_class_files(data_dir):
        link = out_dir / label / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(path.resolve(), link)
    with session_scope(settings.database_url) as session:
        export_reviewed_labels(session, settings=settings, out_dir=out_dir)
    return out_dir
