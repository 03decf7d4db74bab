"""Every state a sample, cell, report, model version, training run or webhook delivery can be in.

StrEnums: each member is its string, so rows, JSON and comparisons with plain strings keep working.
"""

from __future__ import annotations

from enum import StrEnum


class SampleStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"


# Classification has ended: the report can be read.
FINAL_SAMPLE_STATUSES = frozenset({SampleStatus.DONE, SampleStatus.NEEDS_REVIEW, SampleStatus.FAILED})


class CellStatus(StrEnum):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


class FieldStatus(StrEnum):
    """A whole field is located once: its cells are then ordinary cells of the sample."""

    QUEUED = "queued"
    LOCATED = "located"
    FAILED = "failed"


class ReportStatus(StrEnum):
    """A report is preliminary until signed off (final); a change after sign-off makes it preliminary again until a
    new sign-off releases the corrected report (amended): docs/sign-off.md."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    RETIRED = "retired"


class TrainingRunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Scope(StrEnum):
    """What an API client's token may do."""

    SUBMIT = "submit"
    READ = "read"
    REVIEW = "review"
    ADMIN = "admin"
    METRICS = "metrics"  # GET /metrics only: a Prometheus server holds it


class SampleFlag(StrEnum):
    """Sample-level flags; each sends the sample to review."""

    BLASTS = "blasts"
    IMMATURE_CELLS = "immature_cells"
    UNFAMILIAR_IMAGES = "unfamiliar_images"


class Role(StrEnum):
    """What a user of the web review console may do; a role may do everything of the roles ranked below it."""

    TECHNOLOGIST = "technologist"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


ROLE_RANK = {Role.TECHNOLOGIST: 1, Role.SUPERVISOR: 2, Role.ADMIN: 3}
