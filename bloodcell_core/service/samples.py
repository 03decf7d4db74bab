"""Samples and their reports: the differential per 100 leukocytes, flags, cells for review, report status."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml import differential
from bloodcell_core.ml.differential import FlagRule
from bloodcell_core.ml.serving import UNFAMILIAR_REASON, review_reasons
from bloodcell_core.service import signoff
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import get_row
from bloodcell_core.service.errors import NotFound
from bloodcell_core.service.image_store import image_store
from bloodcell_core.service.results import CellForReview, FailedCell, FieldSummary, Report, WorklistRow
from bloodcell_core.service.states import CellStatus, FieldStatus, ReportStatus, SampleFlag, SampleStatus
from bloodcell_core.service.submission import valid_accession_id
from bloodcell_core.service.tables import CellReview, ModelVersion, Prediction, Sample, SampleReport
from bloodcell_core.service.versions import ood_threshold, review_threshold

FLAG_TEXT = {
    SampleFlag.BLASTS: "blast cells found: review the smear",
    SampleFlag.IMMATURE_CELLS: "immature granulocytes or blasts above the configured share",
    SampleFlag.UNFAMILIAR_IMAGES: "many cells are unlike the images the model was trained on: its differential may not hold "
    "for these images; review them",
}


def flag_warnings(settings: Settings, flags: list[str], percent: dict[str, float]) -> list[str]:
    """A sentence per flag; the immature one with its figures, so that a reader sees how far over the limit it is."""
    immature = [(label, percent.get(label, 0.0)) for label in settings.immature_classes]
    figures = " + ".join(f"{label} {share:.1f} %" for label, share in immature)
    immature_text = (
        f"immature cells: {figures} = {sum(share for _, share in immature):.1f} % of the leukocytes, "
        f"over the {settings.immature_percent:g} % that flags a sample (BLOODCELL_IMMATURE_PERCENT)"
    )
    return [immature_text if flag == SampleFlag.IMMATURE_CELLS else FLAG_TEXT[SampleFlag(flag)] for flag in flags]


def differential_percent(settings: Settings, counts: dict[str, int]) -> tuple[dict[str, float], int]:
    """(percent per class, leukocytes counted) per 100 leukocytes: ``differential.differential_percent`` with the
    settings' non-leukocyte classes (BLOODCELL_NON_LEUKOCYTE_CLASSES)."""
    return differential.differential_percent(counts, settings.non_leukocyte_classes)


def sample_flags(settings: Settings, counts: dict[str, int], n: int, n_unfamiliar: int) -> list[SampleFlag]:
    """The sample-level flags, each of which sends the sample to review: ``differential.sample_flags`` under the
    settings' rule (BLOODCELL_BLAST_COUNT, _BLAST_PERCENT, _IMMATURE_CLASSES, _IMMATURE_PERCENT, _UNFAMILIAR_SHARE)."""
    return [SampleFlag(flag) for flag in differential.sample_flags(FlagRule.from_settings(settings), counts, n, n_unfamiliar)]


def latest_reviews(session: Session, sample_pk: int) -> dict[str, CellReview]:
    """The technologist's latest label per cell (image sha256) of a sample."""
    reviews = session.scalars(select(CellReview).where(CellReview.sample_id == sample_pk).order_by(CellReview.id))
    return {review.image_sha256: review for review in reviews}


def report_row(session: Session, sample: Sample) -> SampleReport | None:
    """The sample's stored report (None before its first classification)."""
    return session.scalar(select(SampleReport).where(SampleReport.sample_id == sample.id))


def version_predictions(session: Session, version_id: int, image_sha256s: list[str]) -> dict[str, Prediction]:
    """The predictions of one model version for these images, by image sha256."""
    rows = session.scalars(
        select(Prediction).where(Prediction.model_version_id == version_id, Prediction.image_sha256.in_(image_sha256s))
    )
    return {p.image_sha256: p for p in rows}


def cell_review_reasons(prediction: Prediction, review_above: float, unfamiliar_above: float | None, reviewed: bool) -> list[str]:
    """Why a classified cell needs a technologist (empty: it does not): the model's own rule
    (``review_reasons``), and a cell a technologist has labelled needs nobody else."""
    if reviewed:
        return []
    return review_reasons(prediction.confidence, review_above, prediction.ood_score, unfamiliar_above)


def find_sample(session: Session, accession_id: str, lock: bool = False) -> Sample:
    """The sample by accession id; ``lock`` holds its row until the transaction ends (PostgreSQL)."""
    if not valid_accession_id(accession_id):  # no such id can exist; NUL bytes and the like never reach SQL
        raise NotFound(f"no sample {accession_id[:200]!r}")
    query = select(Sample).where(Sample.accession_id == accession_id)
    sample = session.scalar(query.with_for_update() if lock else query)
    if sample is None:
        raise NotFound(f"no sample {accession_id[:200]!r}")
    return sample


def field_summaries(sample: Sample) -> list[FieldSummary]:
    """The whole fields of a sample, for its report: name, sha256, status, white cells found, error."""
    return [
        FieldSummary(name=f.name, image_sha256=f.image_sha256, status=FieldStatus(f.status), n_cells=f.n_cells, error=f.error)
        for f in sample.fields
    ]


def build_report(session: Session, settings: Settings, sample: Sample, version_id: int) -> Report:
    """Differential count and percent, blast flag, cells for review; sets the sample's final status.

    A technologist's label replaces the model's for its cell, and a reviewed cell needs no more review.
    A change to what the report says (counts, failed images, flags) makes a new report version, and
    withdraws the sign-off of a signed report (``signoff.withdraw``): the sample goes back to review.
    """
    version = get_row(session, ModelVersion, version_id)
    cells = list(sample.cells)
    predictions = version_predictions(session, version_id, [c.image_sha256 for c in cells])
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
    reasons = {c.image_sha256: cell_review_reasons(p, threshold, unfamiliar_above, c.image_sha256 in reviews) for c, p in classified}
    review = [
        {
            "name": c.name,
            "image_sha256": c.image_sha256,
            "label": p.label,
            "confidence": round(p.confidence, 4),
            "reasons": reasons[c.image_sha256],
        }
        for c, p in classified
        if reasons[c.image_sha256]
    ]
    # a cell a technologist labelled is familiar now: the warning is about what nobody has looked at
    n_unfamiliar = sum(UNFAMILIAR_REASON in reasons[c.image_sha256] for c, _ in classified)
    notes = Counter(note for _, p in classified for note in p.preprocessing_notes)
    flags = sample_flags(settings, counts, n, n_unfamiliar)
    failed = [{"name": c.name, "image_sha256": c.image_sha256, "error": c.error} for c in cells if c.status == CellStatus.FAILED]
    failed_fields = any(f.status == FieldStatus.FAILED for f in sample.fields)
    row = report_row(session, sample)
    version_number = row.version if row is not None else 1
    if row is not None and (row.counts != counts or row.n_failed != len(failed) or list(row.flags) != flags):
        version_number += 1
        signoff.withdraw(session, sample, version_number)
    if not classified:
        sample.status, sample.error = (
            SampleStatus.FAILED,
            (
                "no image of the sample could be classified"
                if cells or not sample.fields
                else f"no white cell was found in the sample's {len(sample.fields)} field(s)"
            ),
        )
    elif review or failed or failed_fields or flags or signoff.awaiting_sign_off_again(session, sample):
        sample.status, sample.error = SampleStatus.NEEDS_REVIEW, None
    else:
        sample.status, sample.error = SampleStatus.DONE, None
    values = dict(
        model_version_id=version_id,
        n_cells=len(cells),
        n_classified=n,
        n_failed=len(failed),
        counts=counts,
        percent=percent,
        blast_count=blast_count,
        blast_percent=blast_percent,
        blast_flag=SampleFlag.BLASTS in flags,
        review_threshold=threshold,
        ood_threshold=unfamiliar_above,
        n_unfamiliar=n_unfamiliar,
        preprocessing_notes=dict(sorted(notes.items())),
        flags=flags,
        needs_review=review,
        failed=failed,
        version=version_number,
    )
    if row is None:
        session.add(SampleReport(sample_id=sample.id, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return report_of(session, settings, sample)


def n_relabelled(session: Session, sample: Sample, version_id: int) -> int:
    """Cells whose label a technologist changed from the model's (a confirmation of the model's label is no change)."""
    reviews = latest_reviews(session, sample.id)
    predictions = version_predictions(session, version_id, list(reviews))
    return sum(sha in predictions and review.label != predictions[sha].label for sha, review in reviews.items())


def report_of(session: Session, settings: Settings, sample: Sample) -> Report:
    """The sample's report as the API, the console, the CLI and the exporters show it."""
    report = report_row(session, sample)
    sign_offs = signoff.history(session, sample)
    current = sign_offs[-1] if sign_offs and sample.signed_off_at is not None else None
    base = Report(
        sample_id=sample.accession_id,
        status=SampleStatus(sample.status),
        error=sample.error,
        n_cells=len(sample.cells),
        report_status=ReportStatus(sample.report_status),
        report_version=report.version if report is not None else None,
        signed_off_by=sample.signed_off_by,
        signed_off_at=sample.signed_off_at.isoformat() if sample.signed_off_at else None,
        signed_off_role=current.role if current else None,
        sign_off_comment=current.comment if current else None,
        awaiting_sign_off_again=bool(sign_offs) and current is None,
        sign_offs=sign_offs,
        n_reviewed=len(latest_reviews(session, sample.id)),
        fields=field_summaries(sample),
        fields_without_cells=[f.name for f in sample.fields if f.status == FieldStatus.LOCATED and not f.n_cells],
        model_version=None,
        counts={},
        percent={},
        blast_flag=False,
        flags=[],
        warnings=[],
        needs_review=[],
        failed=[],
    )
    if report is None:
        return base
    return base.model_copy(
        update=dict(
            model_version=get_row(session, ModelVersion, report.model_version_id).version,
            n_classified=report.n_classified,
            n_leukocytes=differential_percent(settings, report.counts)[1],
            non_leukocyte_classes=[label for label in report.counts if label in settings.non_leukocyte_classes],
            n_relabelled=n_relabelled(session, sample, report.model_version_id),
            n_failed=report.n_failed,
            counts=report.counts,
            percent=report.percent,
            blast_count=report.blast_count,
            blast_percent=report.blast_percent,
            blast_flag=report.blast_flag,
            flags=[SampleFlag(flag) for flag in report.flags],
            warnings=flag_warnings(settings, report.flags, report.percent),
            n_unfamiliar=report.n_unfamiliar,
            preprocessing_notes=report.preprocessing_notes or {},
            review_threshold=report.review_threshold,
            ood_threshold=report.ood_threshold,
            needs_review=[CellForReview(**cell) for cell in report.needs_review],
            failed=[FailedCell(**cell) for cell in report.failed],
        )
    )


def get_report(session: Session, *, settings: Settings, accession_id: str) -> Report:
    return report_of(session, settings, find_sample(session, accession_id))


def get_image(session: Session, *, settings: Settings, image_sha256: str) -> bytes:
    return image_store(settings).get(session, image_sha256)


def mark_sample_failed(session: Session, *, sample_pk: int, error: str, actor: str) -> None:
    sample = session.get(Sample, sample_pk)
    if sample is not None:
        sample.status, sample.error = SampleStatus.FAILED, error
        record_event(session, actor, "sample.failed", sample.accession_id, error=error)


def list_samples(session: Session, *, status: str | None = None, flag: str | None = None, limit: int = 200) -> list[WorklistRow]:
    """Samples newest first, with what a worklist shows: status, blast flag, cells to review, flags, time.

    ``status`` keeps one sample status; ``flag`` one report flag (``blasts``, ``immature_cells``,
    ``unfamiliar_images``) or ``needs_review`` for samples with cells waiting for a technologist.
    """
    query = select(Sample, SampleReport).outerjoin(SampleReport, SampleReport.sample_id == Sample.id)
    if status:
        query = query.where(Sample.status == status)
    rows = []
    for sample, report in session.execute(query.order_by(Sample.id.desc()).limit(limit * 5 if flag else limit)):
        flags = list(report.flags) if report is not None else []
        to_review = len(report.needs_review) if report is not None else 0
        if flag == "needs_review" and not to_review or flag not in (None, "", "needs_review") and flag not in flags:
            continue
        rows.append(
            WorklistRow(
                sample_id=sample.accession_id,
                status=SampleStatus(sample.status),
                report_status=ReportStatus(sample.report_status),
                blast_flag=bool(report is not None and report.blast_flag),
                flags=flags,
                n_cells=report.n_cells if report is not None else None,
                n_to_review=to_review,
                unfamiliar=SampleFlag.UNFAMILIAR_IMAGES in flags,
                created_at=sample.created_at.isoformat(timespec="seconds"),
                signed_off_by=sample.signed_off_by,
            )
        )
        if len(rows) == limit:
            break
    return rows
