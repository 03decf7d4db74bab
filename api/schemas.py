"""The HTTP API's contract: request bodies and the response model of every route (shown in /openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from bloodcell_core.service.states import DeliveryStatus, FieldStatus, ModelStatus, ReportStatus, SampleFlag, SampleStatus


class Relabel(BaseModel):
    label: str = Field(max_length=64, description="One of the report's classes")
    reviewer: str = Field(min_length=1, max_length=255, description="The technologist making the change")
    reason: str = Field(min_length=1, max_length=2000)


class SignOff(BaseModel):
    reviewer: str = Field(
        min_length=1, max_length=255, description="The console user the sign-off is made for; their account's role is checked"
    )
    comment: str = Field(default="", max_length=2000, description="Shown on the sample page and in the FHIR and HL7 exports")
    confirm_incomplete: bool = Field(
        default=False,
        description="Sign off although images failed or fewer than BLOODCELL_SIGNOFF_MIN_LEUKOCYTES leukocytes were classified; "
        "recorded with the sign-off",
    )


class Health(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    database: str = Field(description="ok, or unavailable (also when not migrated)")
    redis: str
    workers: list[str] = Field(description="Workers that answered a ping")
    ready: bool


class SampleLinks(BaseModel):
    report: str
    cells: str
    fields: str
    fhir: str
    hl7: str


class SubmissionReceipt(BaseModel):
    sample_id: str = Field(description="The accession id")
    status: SampleStatus
    new_cells: int = Field(description="Cells queued by this request (0: nothing new)")
    n_cells: int
    replayed: bool = Field(description="An Idempotency-Key seen before: the first request's sample")
    new_fields: int = Field(description="Whole fields queued by this request for locating their white cells")
    n_fields: int
    links: SampleLinks


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


class CellBox(BaseModel):
    x: int
    y: int
    width: int
    height: int
    touches_edge: bool = Field(description="The field's edge cuts the cell")


class FieldCell(BaseModel):
    name: str
    image_sha256: str = Field(description="The cell's crop, served at /v1/images/{sha256}")
    status: str
    box: CellBox
    label: str | None = Field(description="The label that counts: the technologist's, else the model's")
    confidence: float | None
    needs_review: bool


class SampleField(FieldSummary):
    width: int | None
    height: int | None
    locator: str | None = Field(description="The cell-locator plugin that found the cells")
    cells: list[FieldCell]


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
        None, description="Counted apart, per 100 leukocytes, not part of the differential: nucleated red cells, platelets"
    )
    n_relabelled: int | None = Field(None, description="Cells whose label a technologist changed (confirmations excluded)")
    n_failed: int | None = None
    blast_count: int | None = None
    blast_percent: float | None = None
    n_unfamiliar: int | None = Field(None, description="Unreviewed cells unlike the training images")
    review_threshold: float | None = None
    ood_threshold: float | None = None


class SampleReport(Report):
    links: SampleLinks


class LabelProbability(BaseModel):
    label: str
    probability: float


class Cell(BaseModel):
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
    field_sha256: str | None = Field(description="The whole field the cell was found in; null for a cell image")
    box: CellBox | None = Field(description="Where the cell sat in its field (pixels)")


class ReviewFailedCell(BaseModel):
    name: str
    error: str | None


class SampleForReview(BaseModel):
    sample_id: str
    status: str = Field(description="needs_review, or failed when no image of the sample could be classified")
    error: str | None = Field(description="Why the sample failed; null otherwise")
    flags: list[str] = Field(description="The report's flags (blasts, immature_cells, unfamiliar_images)")
    cells: list[Cell]
    failed: list[ReviewFailedCell]
    failed_fields: list[ReviewFailedCell] = Field(description="Whole fields that could not be located, with the error")


class WebhookDelivery(BaseModel):
    id: int
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None


class ModelVersion(BaseModel):
    version: str
    plugin: str
    status: ModelStatus
    created_at: str
    test_accuracy: float | None
    test_macro_f1: float | None
    artifact: str


class ModelRegistry(BaseModel):
    production: str | None
    versions: list[ModelVersion]


class Exporter(BaseModel):
    name: str
    media_type: str
    description: str


class AuditEvent(BaseModel):
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
