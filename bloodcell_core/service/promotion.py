"""Champion and challenger: fixed evaluation sets, the promotion gate, and shadow scoring of a candidate.

A retrained model is a candidate. It replaces production only after beating it on a fixed evaluation set
recorded in the database (same images, checked by fingerprint) by BLOODCELL_PROMOTION_MARGIN on accuracy
and macro-F1; forcing a promotion past the gate needs a reason and lands in the audit log. With
BLOODCELL_SHADOW=1 workers also classify live samples with the newest candidate, without touching the
reports, so its agreement with production can be read before promoting it.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import evaluate, index_dataset
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.classification import classify_cells_with
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.states import ModelStatus
from bloodcell_core.service.tables import CellReview, EvaluationSet, ModelEvaluation, ModelVersion, Prediction
from bloodcell_core.service.verification import verified_refusals
from bloodcell_core.service.versions import current_production, find_version, load_classifier

if TYPE_CHECKING:
    from bloodcell_core.ml.serving import Classifier


def _fingerprint(data_dir: str) -> tuple[str, int]:
    index = index_dataset(data_dir, progress=False)
    return index.fingerprint(), len({e.sha256 for e in index.valid})


def register_evaluation_set(settings: Settings, name: str, data_dir: Path | str, actor: str) -> dict[str, Any]:
    """Record a folder-per-class dataset as evaluation set NAME; the same name cannot point at other images."""
    data_dir = str(Path(data_dir).resolve())
    fingerprint, n_images = _fingerprint(data_dir)
    with session_scope(settings.database_url) as session:
        existing = session.scalar(select(EvaluationSet).where(EvaluationSet.name == name))
        if existing is not None and existing.fingerprint != fingerprint:
            raise Conflict(f"evaluation set {name!r} exists with other images ({existing.data_dir}); pick a new name")
        if existing is None:
            session.add(EvaluationSet(name=name, data_dir=data_dir, fingerprint=fingerprint, n_images=n_images))
            record_event(
                session, actor, "evaluation_set.registered", name, data_dir=data_dir, fingerprint=fingerprint, n_images=n_images
            )
    return {"name": name, "data_dir": data_dir, "fingerprint": fingerprint, "n_images": n_images}


def evaluate_on_set(settings: Settings, version: str, set_name: str, actor: str) -> dict[str, Any]:
    """Score a model version on an evaluation set (images it trained on are left out) and store the scores."""
    with session_scope(settings.database_url) as session:
        evaluation_set = _find_set(session, set_name)
        version_row = find_version(session, version)
        session.expunge(version_row)
        data_dir, fingerprint = evaluation_set.data_dir, evaluation_set.fingerprint
    if _fingerprint(data_dir)[0] != fingerprint:
        raise Conflict(f"the images of evaluation set {set_name!r} in {data_dir} changed since it was registered")
    metrics = evaluate(load_classifier(settings, version_row), data_dir, progress=False)
    scores = {key: metrics[key] for key in ("n", "accuracy", "macro_f1", "ece", "images_digest")}
    with session_scope(settings.database_url) as session:
        version_row, set_row = find_version(session, version), _find_set(session, set_name)
        row = session.scalar(
            select(ModelEvaluation).where(
                ModelEvaluation.model_version_id == version_row.id, ModelEvaluation.evaluation_set_id == set_row.id
            )
        )
        if row is None:
            session.add(ModelEvaluation(model_version_id=version_row.id, evaluation_set_id=set_row.id, **scores))
        else:
            for key, value in scores.items():
                setattr(row, key, value)
        record_event(session, actor, "model.evaluated", version, evaluation_set=set_name, **scores)
    return {"version": version, "evaluation_set": set_name, **scores}


def evaluate_for_gate(settings: Settings, candidate: str, actor: str) -> list[dict[str, Any]]:
    """After retraining: score the candidate, and production if it has no score yet, on the gate's set.

    Does nothing (returns []) while no evaluation set of that name is registered.
    """
    with session_scope(settings.database_url) as session:
        evaluation_set = session.scalar(select(EvaluationSet).where(EvaluationSet.name == settings.evaluation_set))
        if evaluation_set is None:
            return []
        production = current_production(session)
        todo = [candidate]
        if production is not None and _scores(session, production, evaluation_set) is None:
            todo.append(production.version)
    return [evaluate_on_set(settings, version, settings.evaluation_set, actor) for version in todo]


def _find_set(session: Session, name: str) -> EvaluationSet:
    row = session.scalar(select(EvaluationSet).where(EvaluationSet.name == name))
    if row is None:
        raise NotFound(f"no evaluation set {name!r}: register one with `bloodcell models evaluation-set {name} DIR`")
    return row


def _scores(session: Session, version: ModelVersion, evaluation_set: EvaluationSet) -> ModelEvaluation | None:
    return session.scalar(
        select(ModelEvaluation).where(
            ModelEvaluation.model_version_id == version.id, ModelEvaluation.evaluation_set_id == evaluation_set.id
        )
    )


def gate(session: Session, settings: Settings, candidate: ModelVersion, production: ModelVersion) -> list[str]:
    """Why the candidate may not replace production; an empty list means it may."""
    evaluation_set = _find_set(session, settings.evaluation_set)
    new, old = _scores(session, candidate, evaluation_set), _scores(session, production, evaluation_set)
    if new is None or old is None:
        missing = [v.version for v, score in ((candidate, new), (production, old)) if score is None]
        return [
            f"not evaluated on set {evaluation_set.name!r}: {', '.join(missing)} "
            f"(`bloodcell models evaluate VERSION --set {evaluation_set.name}`)"
        ]
    if new.images_digest != old.images_digest:
        return [
            f"the two were scored on different images of {evaluation_set.name!r} ({new.n} vs {old.n}): the set "
            "overlaps one model's training data; register a set neither model trained on"
        ]
    margin = settings.promotion_margin
    return [
        f"{metric} {getattr(new, metric):.4f} does not beat production's {getattr(old, metric):.4f} by {margin}"
        for metric in ("accuracy", "macro_f1")
        if getattr(new, metric) < getattr(old, metric) + margin
    ]


def promote(session: Session, *, settings: Settings, version: str, actor: str, force: bool = False, reason: str = "") -> ModelVersion:
    """Make VERSION production if it passes the gate; ``force`` (with a reason) overrides it, audited."""
    row = find_version(session, version)
    previous = current_production(session)
    refusals = []
    if previous is not None and previous.id != row.id:
        try:
            refusals = gate(session, settings, row, previous)
        except NotFound as exc:  # no evaluation set to compare on
            refusals = [str(exc)]
        if settings.promotion_verified:  # and on the laboratory's own verified cells
            refusals += verified_refusals(settings, version)
    if refusals and not force:
        raise Conflict(f"promotion of {version} refused: {'; '.join(refusals)} (force it with a reason to override)")
    if force and not reason.strip():
        raise ServiceError("a forced promotion needs a reason (it goes into the audit log)")
    if previous is not None and previous.id != row.id:
        previous.status = ModelStatus.RETIRED
    row.status = ModelStatus.PRODUCTION
    row.promoted_at = datetime.now(timezone.utc)
    record_event(
        session,
        actor,
        "model.promoted",
        version,
        previous=previous.version if previous else None,
        forced=bool(force and refusals),
        reason=reason,
        gate_refusals=refusals,
    )
    return row


def shadow_candidate(session: Session) -> ModelVersion | None:
    """The newest candidate: the one shadow scoring runs."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.CANDIDATE).order_by(ModelVersion.id.desc()))


def shadow_classify(settings: Settings, sample_pk: int, classifier_for: Callable[[ModelVersion], "Classifier"], worker: str) -> int:
    """Classify the sample's cells with the newest candidate too; stored, never used by a report. Returns the count."""
    with session_scope(settings.database_url) as session:
        candidate = shadow_candidate(session)
        if candidate is None:
            return 0
        session.expunge(candidate)
    return classify_cells_with(settings, candidate, sample_pk, classifier_for, f"shadow:{worker}")


def shadow_report(session: Session, *, version: str) -> dict[str, Any]:
    """How a candidate's shadow predictions compare with production's on the same live cells, and with reviews."""
    candidate = find_version(session, version)
    production = current_production(session)
    if production is None or production.id == candidate.id:
        raise Conflict("shadow scoring compares a candidate with a different production model")
    mine, theirs = aliased(Prediction), aliased(Prediction)
    pairs = session.execute(
        select(mine.image_sha256, mine.label, theirs.label)
        .join(theirs, theirs.image_sha256 == mine.image_sha256)
        .where(mine.model_version_id == candidate.id, theirs.model_version_id == production.id)
    ).all()
    reviewed = {review.image_sha256: review.label for review in session.scalars(select(CellReview).order_by(CellReview.id))}
    changes = Counter(f"{old} -> {new}" for _, new, old in pairs if new != old)
    checked = [(sha, new, old) for sha, new, old in pairs if sha in reviewed]
    return {
        "candidate": version,
        "production": production.version,
        "cells": len(pairs),
        "agreement": round(sum(new == old for _, new, old in pairs) / len(pairs), 4) if pairs else None,
        "changes": dict(changes.most_common()),
        "reviewed_cells": len(checked),
        "candidate_matches_review": sum(reviewed[sha] == new for sha, new, _ in checked),
        "production_matches_review": sum(reviewed[sha] == old for sha, _, old in checked),
    }
