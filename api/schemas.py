"""The HTTP API's contract: request bodies and the response model of every route (shown in /openapi.json).

Response models are named ``...Public``. Those that answer with a service's typed result (``service/results.py``: the
report, its cells and fields, the review queue, webhook deliveries, audit events, model versions) derive from it, so
their fields are declared once."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bloodcell_core.service.results import (
    AuditEventInfo,
    CellResult,
    ModelVersionInfo,
    Report,
    SampleFieldInfo,
    SampleForReview,
    WebhookDeliveryInfo,
)
from bloodcell_core.service.states import SampleStatus


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


class SampleFieldPublic(SampleFieldInfo):
    """GET /v1/samples/{sample_id}/fields: a whole field with its cells' boxes and labels."""


class ReportPublic(Report):
    """A sample's status and differential; the figures after `model_version` exist once it is classified."""


class SampleReportPublic(ReportPublic):
    links: SampleLinks


class CellPublic(CellResult):
    """GET /v1/samples/{sample_id}/cells: a cell's labels, confidence and why it needs review."""


class SampleForReviewPublic(SampleForReview):
    """GET /v1/review: a sample waiting for a technologist."""


class WebhookDeliveryPublic(WebhookDeliveryInfo):
    """GET /v1/samples/{sample_id}/webhooks: one delivery of a sample's event, with its attempts."""


class ModelVersionPublic(ModelVersionInfo):
    """A registered model version: its plugin, status and test scores."""


class ModelRegistryPublic(BaseModel):
    production: str | None
    versions: list[ModelVersionPublic]


class Exporter(BaseModel):
    name: str
    media_type: str
    description: str


class AuditEventPublic(AuditEventInfo):
    """GET /v1/audit: who did what to which sample, cell or model version, and when."""
