"""Sample reports for laboratory systems: the ReportDocument handed to exporter plugins (FHIR, HL7, ...)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.plugin_manager import get_exporter
from bloodcell_core.plugin_types import DifferentialRow, ReportDocument
from bloodcell_core.service.db import get_row
from bloodcell_core.service.errors import Conflict
from bloodcell_core.service.results import Report
from bloodcell_core.service.samples import FLAG_TEXT, find_sample, report_of, report_row
from bloodcell_core.service.states import SampleFlag
from bloodcell_core.service.tables import ModelVersion, Sample


def conclusion_text(report: Report, blast_class: str) -> str:
    parts = [f"{report.n_classified} cells classified"]
    if report.n_failed:
        parts.append(f"{report.n_failed} images could not be read")
    if report.n_relabelled:  # confirmations of the model's label change nothing
        parts.append(f"{report.n_relabelled} cells relabelled by a technologist")
    if report.needs_review:
        parts.append(f"{len(report.needs_review)} cells await review")
    if report.n_unfamiliar:
        parts.append(f"{report.n_unfamiliar} cells unlike the training images")
    flag = (
        f"BLAST FLAG: {report.blast_count} {blast_class} cells ({report.blast_percent or 0.0:.1f}%), smear review recommended"
        if report.blast_flag
        else "no blast flag"
    )
    others = [f"WARNING: {FLAG_TEXT[f]}" for f in report.flags if f != SampleFlag.BLASTS]
    text = f"{'; '.join(parts)}. {flag}." + "".join(f" {text}." for text in others)
    if report.awaiting_sign_off_again:
        text += " Changed after its sign-off: not approved until signed off again."
    return text


def abnormal(settings: Settings, report: Report, cell_type: str) -> bool:
    """Whether one cell type's value is abnormal: blasts under the blast flag, an immature class under the
    immature-cell flag, and only when that type was found (``ig`` at 0 % is never abnormal)."""
    if not report.counts.get(cell_type):
        return False
    blasts = cell_type == settings.blast_class and report.blast_flag
    return blasts or (cell_type in settings.immature_classes and SampleFlag.IMMATURE_CELLS in report.flags)


def report_document(session: Session, settings: Settings, sample: Sample) -> ReportDocument:
    """The sample's typed report (``samples.report_of``) with what a laboratory message adds: the model's plugin
    and classes, the issue time, the settings' blast class."""
    row = report_row(session, sample)
    if row is None:
        raise Conflict(f"sample {sample.accession_id!r} has no report yet (status {sample.status})")
    version = get_row(session, ModelVersion, row.model_version_id)
    report = report_of(session, settings, sample)
    rows = [
        DifferentialRow(
            cell_type,
            report.counts[cell_type],
            report.percent[cell_type],
            abnormal=abnormal(settings, report, cell_type),
            leukocyte=cell_type not in settings.non_leukocyte_classes,
        )
        for cell_type in version.classes
    ]
    return ReportDocument(
        accession_id=report.sample_id,
        accession_system=settings.accession_system,
        report_status=report.report_status,
        issued=max(filter(None, [row.created_at, sample.signed_off_at])),  # when this content was last changed or signed
        model_version=version.version,
        model_plugin=version.plugin,
        differential=tuple(sorted(rows, key=lambda row: not row.leukocyte)),  # the leukocytes first, the others apart
        n_classified=report.n_classified or 0,
        n_failed=report.n_failed or 0,
        n_reviewed=report.n_reviewed,
        n_needs_review=len(report.needs_review),
        blast_class=settings.blast_class,
        blast_flag=report.blast_flag,
        conclusion=conclusion_text(report, settings.blast_class),
        signed_off_by=report.signed_off_by,
        signed_off_at=sample.signed_off_at,
        signed_off_role=report.signed_off_role,
        sign_off_comment=report.sign_off_comment or "",
        flags=tuple(report.flags),
        warnings=tuple(FLAG_TEXT[flag] for flag in report.flags),
        immature_classes=settings.immature_classes,
        n_unfamiliar=report.n_unfamiliar or 0,
        n_leukocytes=report.n_leukocytes or 0,
    )


def export_sample(session: Session, *, settings: Settings, accession_id: str, format_name: str) -> tuple[str, str]:
    """(media type, document) of a sample's report in a registered format."""
    exporter = get_exporter(format_name)
    document = report_document(session, settings, find_sample(session, accession_id))
    return exporter.media_type, exporter.render(document)
