"""Model versions: registration (a directory's weights and calibration make its version), production, thresholds."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import FALLBACK_REVIEW_THRESHOLD, REPORT_DIR, Classifier, read_metadata, served_views, version_id
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.errors import NotFound, ServiceError
from bloodcell_core.service.image_store import sha256_of
from bloodcell_core.service.results import ModelVersionInfo
from bloodcell_core.service.states import ModelStatus
from bloodcell_core.service.tables import ModelFile, ModelVersion


def register_model_version(session: Session, *, artifact_dir: Path, status: str, actor: str) -> ModelVersion:
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
    files = _store_files(session, row, artifact_dir)
    record_event(session, actor, "model.registered", version, status=status, artifact=row.artifact_path, files=files)
    return row


def _model_files(directory: Path) -> list[Path]:
    """Every file of a model directory a version consists of (hidden files and caches left out)."""
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(directory).parts)
    )


def _store_files(session: Session, row: ModelVersion, directory: Path) -> int:
    """Keep the version's files in the database: any worker that reaches it can fetch the version."""
    records = []
    for path in _model_files(directory):
        data = path.read_bytes()
        name = path.relative_to(directory).as_posix()
        records.append({"model_version_id": row.id, "name": name, "sha256": sha256_of(data), "n_bytes": len(data), "content": data})
    if records:
        session.execute(insert(ModelFile), records)
    return len(records)


def model_directory(settings: Settings, version: ModelVersion) -> Path:
    """A local directory holding VERSION: its registered path where this machine has it unchanged, else
    this worker's cache under BLOODCELL_MODELS_DIR/cache, filled from the database and every file's
    sha256 verified before it is used."""
    registered = Path(version.artifact_path)
    if (registered / "metadata.json").is_file() and version_id(registered) == version.version:
        return registered
    cached = settings.models_dir / "cache" / version.version
    with session_scope(settings.database_url) as session:
        listed = session.execute(
            select(ModelFile.name, ModelFile.sha256).where(ModelFile.model_version_id == version.id).order_by(ModelFile.name)
        ).all()
        if not listed:
            raise ServiceError(
                f"model {version.version} is neither at {registered} on this machine nor stored in the database "
                "(registered before model files were kept there): register it again from a machine that has it"
            )
        if cached.is_dir() and all(_file_sha256(cached / name) == sha256 for name, sha256 in listed):
            return cached
        partial = cached.parent / f".{version.version}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for name, sha256 in listed:
            content = session.scalar(select(ModelFile.content).where(ModelFile.model_version_id == version.id, ModelFile.name == name))
            if content is None or sha256_of(content) != sha256:
                raise ServiceError(f"model {version.version}: the stored {name} does not match its sha256 {sha256[:12]}")
            target = partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    if version_id(partial) != version.version:
        raise ServiceError(f"model {version.version}: the fetched files make model {version_id(partial)}")
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(partial, cached)  # whole or not at all: a reader never sees half a model
    return cached


def _file_sha256(path: Path) -> str | None:
    return sha256_of(path.read_bytes()) if path.is_file() else None


def load_classifier(settings: Settings, version: ModelVersion) -> Classifier:
    """The version's model from ``model_directory``, served by BLOODCELL_RUNTIME when it passes the parity check.

    A registered directory whose weights or calibration changed since (e.g. recalibrated in place) is
    not used: the threshold in the database row and the temperature in the files must belong to the
    same model, so the version's stored files are fetched instead.
    """
    directory = model_directory(settings, version)
    cache_root = settings.models_dir / "runtime-cache"
    return Classifier.from_dir(directory, runtime=settings.runtime, cache_root=cache_root, device=settings.worker_device)


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
                    current = register_model_version(
                        session, artifact_dir=settings.default_model, status=ModelStatus.PRODUCTION, actor="system"
                    )
                return current.version
        except IntegrityError:
            continue
    raise ServiceError("could not register the default model")


def find_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound(f"unknown model version {version[:128]!r}")
    return row


def list_versions(session: Session) -> list[ModelVersionInfo]:
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    return [
        ModelVersionInfo(
            version=r.version,
            plugin=r.plugin,
            status=ModelStatus(r.status),
            created_at=r.created_at.isoformat(),
            test_accuracy=r.metrics.get("training", {}).get("test", {}).get("accuracy"),
            test_macro_f1=r.metrics.get("training", {}).get("test", {}).get("macro_f1"),
            artifact=r.artifact_path,
        )
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


def version_classes(session: Session, *, version: str) -> list[str]:
    """The classes of one registered model version, by its name."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound(f"no model version {version[:80]!r}")
    return list(row.classes)


def report_file_names(session: Session, *, version: str) -> list[str]:
    """The files of VERSION's report (plots, generalisation.json): those stored with the version in the database,
    so any host can show them, and those its registered directory holds where this host has it (``bloodcell
    generalisation`` writes there after registration)."""
    prefix = f"{REPORT_DIR}/"
    row = find_version(session, version)
    stored = session.scalars(select(ModelFile.name).where(ModelFile.model_version_id == row.id, ModelFile.name.startswith(prefix)))
    names = {name.removeprefix(prefix) for name in stored}
    local = Path(row.artifact_path) / REPORT_DIR
    names |= {path.name for path in local.glob("*") if path.is_file()} if local.is_dir() else set()
    return sorted(names)


def report_file(session: Session, *, version: str, name: str) -> bytes:
    """One file of VERSION's report: from its registered directory where this host has it, else as stored with it."""
    row = find_version(session, version)
    local = Path(row.artifact_path) / REPORT_DIR / name
    if Path(name).name == name and local.is_file():  # a plain name: never a path out of the report
        return local.read_bytes()
    content = session.scalar(
        select(ModelFile.content).where(ModelFile.model_version_id == row.id, ModelFile.name == f"{REPORT_DIR}/{name}")
    )
    if content is None:
        raise NotFound(f"model {version[:80]!r} has no report file {name[:80]!r}")
    return content
