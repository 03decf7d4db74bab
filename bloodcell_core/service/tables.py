"""Database models (SQLAlchemy 2): the tables a LIMS reads. The schema is created only by Alembic migrations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from bloodcell_core.service.states import (
    CellStatus,
    DeliveryStatus,
    FieldStatus,
    ModelStatus,
    ReportStatus,
    SampleStatus,
    TrainingRunStatus,
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp that reads back timezone-aware in UTC: SQLite stores none and returns naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiClient(Base):
    """A system (LIMS) or person calling the HTTP API. Only the token's sha256 is stored."""

    __tablename__ = "api_clients"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))  # to recognise a token in logs without revealing it
    scopes: Mapped[list[Any]]
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))  # HMAC key; the server must hold it to sign
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Sample(Base):
    """A blood sample from the LIMS: many cell images, one report."""

    __tablename__ = "samples"
    # the review queue reads one status oldest first; retention finds samples past an age
    __table_args__ = (Index("ix_samples_status_created_at", "status", "created_at"), Index("ix_samples_created_at", "created_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    accession_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    status: Mapped[str] = mapped_column(String(16), default=SampleStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))  # whose webhook hears of it
    report_status: Mapped[str] = mapped_column(String(16), default=ReportStatus.PRELIMINARY)
    # The approval in force: set by a sign-off, cleared when the report changes after it (service/signoff.py).
    signed_off_by: Mapped[str | None] = mapped_column(String(255))
    signed_off_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    cells: Mapped[list["SampleImage"]] = relationship(back_populates="sample", order_by="SampleImage.id")
    fields: Mapped[list["SampleField"]] = relationship(back_populates="sample", order_by="SampleField.id")
    report: Mapped["SampleReport | None"] = relationship(back_populates="sample")


class Image(Base):
    """Image bytes are addressed by their sha256; ``content`` is set only by the database image store."""

    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    n_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SampleImage(Base):
    """One cell image of a sample, with the outcome of its classification."""

    __tablename__ = "sample_images"
    __table_args__ = (UniqueConstraint("sample_id", "image_sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)  # retention: is an image still used?
    name: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default=CellStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    # A cell found in a whole field: the field image's sha256 and the cell's box in its pixels.
    field_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"), index=True)
    box_x: Mapped[int | None] = mapped_column(Integer)
    box_y: Mapped[int | None] = mapped_column(Integer)
    box_width: Mapped[int | None] = mapped_column(Integer)
    box_height: Mapped[int | None] = mapped_column(Integer)
    touches_edge: Mapped[bool | None] = mapped_column(Boolean)
    sample: Mapped[Sample] = relationship(back_populates="cells")


class SampleField(Base):
    """A whole smear field of a sample: the worker finds its white cells and adds them as the sample's cells."""

    __tablename__ = "sample_fields"
    __table_args__ = (UniqueConstraint("sample_id", "image_sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default=FieldStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    n_cells: Mapped[int | None] = mapped_column(Integer)  # white cells found; None until located
    locator: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sample: Mapped[Sample] = relationship(back_populates="fields")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    plugin: Mapped[str] = mapped_column(String(128))
    artifact_path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.CANDIDATE, index=True)
    classes: Mapped[list[Any]]
    metrics: Mapped[dict[str, Any]]
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelFile(Base):
    """A file of a registered model version (weights, metadata, split, calibration, report), so that a
    worker on another machine can fetch the version by id and verify it (``versions.model_directory``)."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_version_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))  # path relative to the model directory, "/"-separated
    sha256: Mapped[str] = mapped_column(String(64))
    n_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


class Prediction(Base):
    """A model version's output for one image; unique per (image, model version), so redelivery adds nothing."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_sha256", "model_version_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]]
    preprocess_ms: Mapped[float] = mapped_column(Float)
    predict_ms: Mapped[float] = mapped_column(Float)
    ood_score: Mapped[float | None] = mapped_column(Float)  # distance from the training images; None: no scorer
    # a preprocessing step's fallback on this image, e.g. "scale not measured" (StepResult)
    preprocessing_notes: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    worker: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SampleReport(Base):
    __tablename__ = "sample_reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), unique=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    n_cells: Mapped[int] = mapped_column(Integer)
    n_classified: Mapped[int] = mapped_column(Integer)
    n_failed: Mapped[int] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]]
    percent: Mapped[dict[str, Any]]
    blast_count: Mapped[int] = mapped_column(Integer)
    blast_percent: Mapped[float] = mapped_column(Float)
    blast_flag: Mapped[bool] = mapped_column(Boolean)
    review_threshold: Mapped[float] = mapped_column(Float)
    ood_threshold: Mapped[float | None] = mapped_column(Float)  # cells above it are unlike the training images
    n_unfamiliar: Mapped[int] = mapped_column(Integer, default=0)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)  # blasts, immature_cells, unfamiliar_images
    needs_review: Mapped[list[Any]]  # cells under the review threshold or unfamiliar, each with its reasons
    # classified cells per preprocessing note ({"scale not measured": 3}): made the fallback way
    preprocessing_notes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    failed: Mapped[list[Any]]  # {"name", "error"} of cells that could not be classified
    # Goes up by one whenever what the report says changes (counts, failed images, flags): a sign-off approves one version.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sample: Mapped[Sample] = relationship(back_populates="report")


class SignOff(Base):
    """One approval of one report version by a console user: the history a laboratory keeps (never deleted).

    ``withdrawn_at`` is set when the report changes after it; the approved content stays readable here.
    """

    __tablename__ = "sign_offs"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    report_version: Mapped[int] = mapped_column(Integer)
    report_status: Mapped[str] = mapped_column(String(16))  # final, or amended for a corrected report
    signed_by: Mapped[str] = mapped_column(String(128))  # a console user's name
    role: Mapped[str] = mapped_column(String(16))  # their role when they signed
    comment: Mapped[str] = mapped_column(Text, default="")
    confirmed: Mapped[list[Any]] = mapped_column(JSON, default=list)  # what the signer confirmed: failed images, few leukocytes
    counts: Mapped[dict[str, Any]]
    percent: Mapped[dict[str, Any]]
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CellCount(Base):
    """Running totals of reported cells per model version and the model's class, added to when a sample's
    report is first written for a version: the Prometheus counters read these rows, never the cells."""

    __tablename__ = "cell_counts"
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    n_classified: Mapped[int] = mapped_column(BigInteger, default=0)
    n_sent_to_review: Mapped[int] = mapped_column(BigInteger, default=0)  # low confidence or unfamiliar
    n_unfamiliar: Mapped[int] = mapped_column(BigInteger, default=0)


class RelabelCount(Base):
    """Running totals of technologists' relabels per report model version, label before and label given."""

    __tablename__ = "relabel_counts"
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    from_label: Mapped[str] = mapped_column(String(64), primary_key=True)  # "none" when there was none
    to_label: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    plugin: Mapped[str] = mapped_column(String(128))
    data_dir: Mapped[str] = mapped_column(String(1024))
    parameters: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=TrainingRunStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """An Idempotency-Key header seen from a client: a retry returns the same sample."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("client_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))  # the same key with another request is refused
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CellReview(Base):
    """A technologist's label for one cell of a sample; the latest per cell counts. Also training data."""

    __tablename__ = "cell_reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    previous_label: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event for one client's webhook, with the outcome of its latest attempt."""

    __tablename__ = "webhook_deliveries"
    # the sweep looks for pending deliveries long past due; a sample's new deliveries are handed over by sample
    __table_args__ = (Index("ix_webhook_deliveries_status_due_at", "status", "due_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"), index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The Celery task id of the message that carries the delivery now (another message for it is stale), and
    # when its next attempt should start: the sweep re-queues a pending delivery long past that (a lost message).
    task_id: Mapped[str | None] = mapped_column(String(64))
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EvaluationSet(Base):
    """A fixed folder-per-class dataset that candidates and the production model are compared on."""

    __tablename__ = "evaluation_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    data_dir: Mapped[str] = mapped_column(String(1024))
    fingerprint: Mapped[str] = mapped_column(String(64))  # of the images: a changed folder is refused
    n_images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelEvaluation(Base):
    """One model version's scores on one evaluation set (the images it never trained on)."""

    __tablename__ = "model_evaluations"
    __table_args__ = (UniqueConstraint("model_version_id", "evaluation_set_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    evaluation_set_id: Mapped[int] = mapped_column(ForeignKey("evaluation_sets.id"))
    n: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    macro_f1: Mapped[float] = mapped_column(Float)
    ece: Mapped[float] = mapped_column(Float)
    images_digest: Mapped[str] = mapped_column(String(64))  # sha256 over the scored images' hashes
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    """A person who logs in to the web review console. Only an argon2 hash of the password is stored."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # a states.Role
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A browser's login; only the session token's sha256 is stored, with the CSRF token of its forms."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoginAttempt(Base):
    """Every login, failed or not, by user name and address: what login throttling counts."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class AuditEvent(Base):
    """Append-only: rows are only ever inserted (updates and deletes raise)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject_id", "subject", "id"),)  # one sample's trail, newest first
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]]


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditEvent, "before_delete")
def _audit_log_is_append_only(mapper, connection, target) -> None:
    raise PermissionError("the audit log is append-only")
