"""The HTTP API's contract: request bodies and the response model of every route (shown in /openapi.json).

Response models are named ``...Public``; those of the service's typed results (``service/results.py``: the report,
model versions) derive from them, so their fields are declared once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from bloodcell_core.service.results import FieldSummary, ModelVersionInfo, Report
from bloodcell_core.service.states import DeliveryStatus, SampleStatus


class Relabel(BaseModel):
    label: str = Field(max_length=64, description="One of the report's classes")
    reviewer: str = Field(min_length=1, max_length=255, description="The technologist making the change")
    reason: str = Field(min_length=1, max_length=2000)


class SignOffCreate(BaseModel):
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


class SampleFieldPublic(FieldSummary):
    width: int | None
    height: int | None
    locator: str | None = Field(description="The cell-locator plugin that found the cells")
    cells: list[FieldCell]


class ReportPublic(Report):
    """A sample's status and differential; the figures after `model_version` exist once it is classified."""


class SampleReportPublic(ReportPublic):
    links: SampleLinks


class LabelProbability(BaseModel):
    label: str
    probability: float


class CellPublic(BaseModel):
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


class SampleForReviewPublic(BaseModel):
    sample_id: str
    status: str = Field(description="needs_review, or failed when no image of the sample could be classified")
    error: str | None = Field(description="Why the sample failed; null otherwise")
    flags: list[str] = Field(description="The report's flags (blasts, immature_cells, unfamiliar_images)")
    cells: list[CellPublic]
    failed: list[ReviewFailedCell]
    failed_fields: list[ReviewFailedCell] = Field(description="Whole fields that could not be located, with the error")


class WebhookDeliveryPublic(BaseModel):
    id: int
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None


class ModelVersionPublic(ModelVersionInfo):
    """A registered model version: its plugin, status and test scores."""


class ModelRegistryPublic(BaseModel):
    production: str | None
    versions: list[ModelVersionPublic]


class Exporter(BaseModel):
    name: str
    media_type: str
    description: str


class AuditEventPublic(BaseModel):
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
