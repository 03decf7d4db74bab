"""Model versions: registration (a directory's weights and calibration make its version), production, thresholds."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import FALLBACK_REVIEW_THRESHOLD, Classifier, read_metadata, served_views, version_id
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.errors import NotFound, ServiceError
from bloodcell_core.service.models import ModelVersion
from bloodcell_core.service.states import ModelStatus


def register_model_version(session: Session, artifact_dir: Path, status: str, actor: str) -> ModelVersion:
    """Register a model directory; the same model file registered twice is the same version."""
    metadata = read_metadata(artifact_dir)
    served_views(metadata, artifact_dir)
    version = version_id(artifact_dir)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if existing is not None:
        return existing
    row = ModelVersion(
        version=version,
        plugin=metadata.plugin,
        artifact_path=str(artifact_dir.resolve()),
        status=status,
        classes=metadata.classes,
        metrics={"training": metadata.metrics, "calibration": metadata.calibration},
        data_fingerprint=metadata.dataset_fingerprint,
        promoted_at=datetime.now(timezone.utc) if status == ModelStatus.PRODUCTION else None,
    )
    session.add(row)
    session.flush()
    record_event(session, actor, "model.registered", version, status=status, artifact=row.artifact_path)
    return row


def load_classifier(version: ModelVersion, runtime: str = "keras") -> Classifier:
    """The version's model, refusing a directory whose weights or calibration changed since it was registered;
    served by RUNTIME (BLOODCELL_RUNTIME) when it passes the parity check.

    The threshold in the database row and the temperature in the files must belong to the same model.
    """
    found = version_id(version.artifact_path)
    if found != version.version:
        raise ServiceError(
            f"{version.artifact_path} is now model {found}, not {version.version}: it changed after it was "
            "registered (e.g. recalibrated in place); register it as a new version with "
            "`bloodcell models register DIR`"
        )
    return Classifier.from_dir(version.artifact_path, runtime=runtime)


def current_production(session: Session) -> ModelVersion | None:
    """The production version, or None on an empty registry (the one query for it)."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.PRODUCTION))


def production_version(session: Session) -> ModelVersion:
    row = current_production(session)
    if row is None:
        raise ServiceError("no production model: run `bloodcell up` or `bloodcell models promote VERSION`")
    return row


def ensure_production_model(settings: Settings) -> str:
    """On an empty registry, register the shipped default model as production.

    Several workers may start at once: the one that loses the race sees the winner's row.
    """
    for _ in range(2):
        try:
            with session_scope(settings.database_url) as session:
                current = current_production(session)
                if current is None:
                    current = register_model_version(session, settings.default_model, ModelStatus.PRODUCTION, "system")
                return current.version
        except IntegrityError:
            continue
    raise ServiceError("could not register the default model")


def find_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound(f"unknown model version {version[:128]!r}")
    return row


def list_versions(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    return [
        {
            "version": r.version,
            "plugin": r.plugin,
            "status": r.status,
            "created_at": r.created_at.isoformat(),
            "test_accuracy": r.metrics.get("training", {}).get("test", {}).get("accuracy"),
            "test_macro_f1": r.metrics.get("training", {}).get("test", {}).get("macro_f1"),
            "artifact": r.artifact_path,
        }
        for r in rows
    ]


def review_threshold(settings: Settings, version: ModelVersion) -> float:
    """BLOODCELL_REVIEW_THRESHOLD if set to a number, else the threshold calibrated with the model."""
    if settings.review_threshold is not None:
        return settings.review_threshold
    return float((version.metrics.get("calibration") or {}).get("review_threshold", FALLBACK_REVIEW_THRESHOLD))


def ood_threshold(version: ModelVersion) -> float | None:
    """The out-of-distribution threshold calibrated with the model (None: it has no scorer)."""
    record = (version.metrics.get("calibration") or {}).get("ood")
    return float(record["threshold"]) if record else None


def version_classes(settings: Settings, version: str) -> list[str]:
    """The classes of one registered model version, by its name."""
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if row is None:
            raise NotFound(f"no model version {version[:80]!r}")
        return list(row.classes)
