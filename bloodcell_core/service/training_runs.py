"""Retraining runs: requested by a producer, trained by a worker on the training queue, registered as candidates."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import TrainingPlan, train
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.errors import NotFound
from bloodcell_core.service.results import TrainingRunInfo
from bloodcell_core.service.review import training_data_with_reviews
from bloodcell_core.service.states import ModelStatus, TrainingRunStatus
from bloodcell_core.service.tables import ModelVersion, TrainingRun
from bloodcell_core.service.versions import register_model_version

FINAL_TRAINING_RUN_STATUSES = frozenset({TrainingRunStatus.DONE, TrainingRunStatus.FAILED})


def training_run_status(session: Session, *, run_id: int) -> TrainingRunInfo:
    """A run's status, its error, and the model version it made (None until done)."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id}")
    version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    return TrainingRunInfo(
        run=run_id, status=TrainingRunStatus(run.status), error=run.error, version=version.version if version else None
    )


def create_training_run(session: Session, *, plugin: str, data_dir: str, parameters: dict[str, Any], actor: str) -> int:
    run = TrainingRun(plugin=plugin, data_dir=data_dir, parameters=parameters)
    session.add(run)
    session.flush()
    record_event(session, actor, "training.requested", f"run {run.id}", plugin=plugin, data_dir=data_dir, parameters=parameters)
    return run.id


def run_training(settings: Settings, run_id: int, actor: str) -> str:
    """Train the run's plugin into BLOODCELL_MODELS_DIR and register the result as a candidate.

    With the parameter ``include_reviewed`` the technologists' reviewed cells join the dataset.
    """
    with session_scope(settings.database_url) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFound(f"no training run {run_id}")
        if run.status == TrainingRunStatus.DONE:  # a redelivered task: the candidate exists already
            return get_row(session, ModelVersion, run.model_version_id).version
        run.status = TrainingRunStatus.RUNNING
        plugin, parameters = run.plugin, dict(run.parameters)
        data_dir: Path | str = run.data_dir
    out_dir = settings.models_dir / f"run-{run_id}-{plugin}"
    try:
        if parameters.pop("include_reviewed", False):
            data_dir = training_data_with_reviews(settings, Path(data_dir), settings.models_dir / f"run-{run_id}-data")
        if not (out_dir / "metadata.json").exists():
            train(TrainingPlan(plugin, data_dir, out_dir, **parameters), progress=False, log=lambda _: None)
    except Exception as exc:
        with session_scope(settings.database_url) as session:
            run = get_row(session, TrainingRun, run_id)
            run.status, run.error, run.finished_at = (
                TrainingRunStatus.FAILED,
                f"{type(exc).__name__}: {exc}",
                datetime.now(timezone.utc),
            )
        raise
    with session_scope(settings.database_url) as session:
        version = register_model_version(session, artifact_dir=out_dir, status=ModelStatus.CANDIDATE, actor=actor)
        run = get_row(session, TrainingRun, run_id)
        run.status, run.model_version_id, run.finished_at = TrainingRunStatus.DONE, version.id, datetime.now(timezone.utc)
        return version.version
