"""What the service returns, typed once: the sample report, its cells and fields, the review queue, the worklist,
webhook deliveries, audit events, model versions and training runs.

The API's response models derive from these, the console's pages, the CLI and the exporters render them, and the
HTTP client reads the API's answers back into them; light enough (pydantic and the states) for the HTTP client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from bloodcell_core.service.states import (
    DeliveryStatus,
    FieldStatus,
    ModelStatus,
    ReportStatus,
    SampleFlag,
    SampleStatus,
    TrainingRunStatus,
)


class CellForReview(BaseModel):
    name: str
    image_sha256: str
    label: str
    confidence: float
    reasons: list[str] = Field(description="Why it needs a technologist: low confidence, unlike the training images")


class FailedCell(BaseModel):
    name: str
    image_sha256: str | None = None
    error: str | None


class FieldSummary(BaseModel):
    name: str
    image_sha256: str = Field(description="The field image's sha256")
    status: FieldStatus = Field(description="queued, located (its cells are the sample's cells) or failed")
    n_cells: int | None = Field(description="White cells found; null until located")
    error: str | None


class SignOffRecord(BaseModel):
    report_version: int
    report_status: ReportStatus = Field(description="final, or amended for a corrected report")
    signed_off_by: str
    role: str
    signed_off_at: str
    comment: str
    confirmed: list[str] = Field(description="What the signer confirmed: failed images, too few leukocytes")
    counts: dict[str, int]
    percent: dict[str, float]
    flags: list[SampleFlag]
    withdrawn_at: str | None = Field(description="When the report changed after this sign-off")


class CellBox(BaseModel):
    x: int
    y: int
    width: int
    height: int
    touches_edge: bool = Field(description="The field's edge cuts the cell")


class LabelProbability(BaseModel):
    label: str
    probability: float


class CellResult(BaseModel):
    """One cell of a sample: the model's label and confidence, a reviewer's label, the label that counts."""

    name: str
    image_sha256: str
    status: str
    error: str | None
    model_label: str | None
    confidence: float | None
    top3: list[LabelProbability]
    reviewed_label: str | None
    reviewed_by: str | None
    reviewed_reason: str | None = Field(description="Why the technologist gave their label")
    label: str | None = Field(description="The label that counts: the technologist's, else the model's")
    ood_score: float | None
    needs_review: bool
    review_reasons: list[str]
    preprocessing_notes: list[str] = Field(
        default_factory=list, description='A preprocessing step\'s fallback on this image, e.g. "scale not measured"'
    )
    field_sha256: str | None = Field(description="The whole field the cell was found in; null for a cell image")
    box: CellBox | None = Field(description="Where the cell sat in its field (pixels)")


class FieldCell(BaseModel):
    name: str
    image_sha256: str = Field(description="The cell's crop, served at /v1/images/{sha256}")
    status: str
    box: CellBox
    label: str | None = Field(description="The label that counts: the technologist's, else the model's")
    confidence: float | None
    needs_review: bool


class SampleFieldInfo(FieldSummary):
    """A whole field of a sample with its cells' boxes and labels."""

    width: int | None
    height: int | None
    locator: str | None = Field(description="The cell-locator plugin that found the cells")
    cells: list[FieldCell]


class ReviewFailedCell(BaseModel):
    name: str
    error: str | None


class SampleForReview(BaseModel):
    """A sample in the review queue: the cells a technologist should check, what failed, and why."""

    sample_id: str
    status: str = Field(description="needs_review, or failed when no image of the sample could be classified")
    error: str | None = Field(description="Why the sample failed; null otherwise")
    flags: list[str] = Field(description="The report's flags (blasts, immature_cells, unfamiliar_images)")
    cells: list[CellResult]
    failed: list[ReviewFailedCell]
    failed_fields: list[ReviewFailedCell] = Field(description="Whole fields that could not be located, with the error")


class WorklistRow(BaseModel):
    """A sample as the console's worklist shows it."""

    sample_id: str
    status: SampleStatus
    report_status: ReportStatus
    blast_flag: bool
    flags: list[str]
    n_cells: int | None
    n_to_review: int
    unfamiliar: bool
    created_at: str
    signed_off_by: str | None


class WebhookDeliveryInfo(BaseModel):
    id: int
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None


class AuditEventInfo(BaseModel):
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


class Report(BaseModel):
    """A sample's status and differential; the figures after `model_version` exist once it is classified."""

    sample_id: str
    status: SampleStatus
    error: str | None
    n_cells: int
    report_status: ReportStatus
    report_version: int | None = Field(description="Goes up whenever what the report says changes; a sign-off approves one")
    signed_off_by: str | None = Field(description="The console user whose sign-off approves this version; null when none does")
    signed_off_at: str | None
    signed_off_role: str | None
    sign_off_comment: str | None
    awaiting_sign_off_again: bool = Field(description="Changed after a sign-off: not approved until signed off again")
    sign_offs: list[SignOffRecord] = Field(description="Every sign-off, oldest first, with what it approved")
    n_reviewed: int
    fields: list[FieldSummary] = Field(description="The whole fields submitted, if any")
    fields_without_cells: list[str] = Field(description="Names of located fields in which no white cell was found")
    model_version: str | None
    counts: dict[str, int]
    percent: dict[str, float] = Field(description="Per 100 leukocytes")
    blast_flag: bool
    flags: list[SampleFlag]
    warnings: list[str]
    needs_review: list[CellForReview]
    failed: list[FailedCell]
    n_classified: int | None = None
    n_leukocytes: int | None = None
    non_leukocyte_classes: list[str] | None = Field(
        default=None, description="Counted apart, per 100 leukocytes, not part of the differential: nucleated red cells, platelets"
    )
    n_relabelled: int | None = Field(default=None, description="Cells whose label a technologist changed (confirmations excluded)")
    n_failed: int | None = None
    blast_count: int | None = None
    blast_percent: float | None = None
    n_unfamiliar: int | None = Field(default=None, description="Unreviewed cells unlike the training images")
    preprocessing_notes: dict[str, int] = Field(
        default_factory=dict,
        description='Classified cells per preprocessing fallback, e.g. {"scale not measured": 3}: no red cell could be '
        "measured in those images, so their crop was sized by the nucleus",
    )
    review_threshold: float | None = None
    ood_threshold: float | None = None


class ModelVersionInfo(BaseModel):
    version: str
    plugin: str
    status: ModelStatus
    created_at: str
    test_accuracy: float | None
    test_macro_f1: float | None
    artifact: str


def production_of(versions: list[ModelVersionInfo]) -> ModelVersionInfo | None:
    """The production version among VERSIONS (None before one is promoted)."""
    return next((v for v in versions if v.status == ModelStatus.PRODUCTION), None)


class TrainingRunInfo(BaseModel):
    run: int
    status: TrainingRunStatus
    error: str | None
    version: str | None = Field(description="The model version the run made; null until it is done")
