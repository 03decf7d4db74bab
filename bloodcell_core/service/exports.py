"""Sample reports for laboratory systems: the ReportDocument handed to exporter plugins (FHIR, HL7, ...)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.plugin_manager import get_exporter
from bloodcell_core.plugin_types import DifferentialRow, ReportDocument
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.errors import Conflict
from bloodcell_core.service.models import ModelVersion, Sample, SampleReport
from bloodcell_core.service.samples import FLAG_TEXT, differential_percent, find_sample, latest_reviews, report_row
from bloodcell_core.service.states import SampleFlag


def conclusion_text(report: SampleReport, blast_class: str, n_reviewed: int) -> str:
    parts = [f"{report.n_classified} cells classified"]
    if report.n_failed:
        parts.append(f"{report.n_failed} images could not be read")
    if n_reviewed:
        parts.append(f"{n_reviewed} cells relabelled by a technologist")
    if report.needs_review:
        parts.append(f"{len(report.needs_review)} cells await review")
    if report.n_unfamiliar:
        parts.append(f"{report.n_unfamiliar} cells unlike the training images")
    flag = (
        f"BLAST FLAG: {report.blast_count} {blast_class} cells ({report.blast_percent:.1f}%), smear review recommended"
        if report.blast_flag
        else "no blast flag"
    )
    others = [f"WARNING: {FLAG_TEXT[f]}" for f in report.flags if f != SampleFlag.BLASTS]
    return f"{'; '.join(parts)}. {flag}." + "".join(f" {text}." for text in others)


def report_document(session: Session, settings: Settings, sample: Sample) -> ReportDocument:
    report = report_row(session, sample)
    if report is None:
        raise Conflict(f"sample {sample.accession_id!r} has no report yet (status {sample.status})")
    version = get_row(session, ModelVersion, report.model_version_id)
    n_reviewed = len(latest_reviews(session, sample.id))
    issued = max(filter(None, [report.created_at, sample.signed_off_at]))
    return ReportDocument(
        accession_id=sample.accession_id,
        accession_system=settings.accession_system,
        report_status=sample.report_status,
        issued=issued,
        model_version=version.version,
        model_plugin=version.plugin,
        differential=tuple(
            DifferentialRow(cell_type, report.counts[cell_type], report.percent[cell_type]) for cell_type in version.classes
        ),
        n_classified=report.n_classified,
        n_failed=report.n_failed,
        n_reviewed=n_reviewed,
        n_needs_review=len(report.needs_review),
        blast_class=settings.blast_class,
        blast_flag=report.blast_flag,
        conclusion=conclusion_text(report, settings.blast_class, n_reviewed),
        signed_off_by=sample.signed_off_by,
        signed_off_at=sample.signed_off_at,
        flags=tuple(report.flags),
        warnings=tuple(FLAG_TEXT[flag] for flag in report.flags),
        immature_classes=settings.immature_classes,
        n_unfamiliar=report.n_unfamiliar,
        n_leukocytes=differential_percent(settings, report.counts)[1],
    )


def export_sample(settings: Settings, accession_id: str, format_name: str) -> tuple[str, str]:
    """(media type, document) of a sample's report in a registered format."""
    exporter = get_exporter(format_name)
    with session_scope(settings.database_url) as session:
        document = report_document(session, settings, find_sample(session, accession_id))
    return exporter.media_type, exporter.render(document)
