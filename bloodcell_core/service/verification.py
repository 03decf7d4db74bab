"""Local verification: the dossier a laboratory files before it reports, from its own signed-off samples.

The technologists' final labels are the reference: a cell's latest review label, else the label the report's
model gave it and the technologist accepted by signing the sample off. Against it, one model version (production
by default, or a candidate beside production) is scored per cell (agreement, sensitivity, specificity, PPV,
coverage), per sample (differential percentages: Passing-Bablok, Bland-Altman, samples outside the allowable
difference) and per flag (blasts, immature cells, and a sweep of the blast rule), then held against the
laboratory's acceptance criteria. Every statistic comes from ``bloodcell_core.ml.differential``; the files are
written by ``verification_report``. See docs/verification.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml import differential
from bloodcell_core.ml.differential import BLASTS, IMMATURE_CELLS, CellCall, FlagRule, SyntheticSample
from bloodcell_core.ml.serving import UNFAMILIAR_REASON
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.classification import classify_cells_with
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.samples import cell_review_reasons, latest_reviews, version_predictions
from bloodcell_core.service.states import CellStatus
from bloodcell_core.service.tables import AuditEvent, CellReview, ModelFile, ModelVersion, Prediction, Sample, SampleReport
from bloodcell_core.service.versions import current_production, find_version, ood_threshold, review_threshold

if TYPE_CHECKING:
    from bloodcell_core.ml.serving import Classifier

# Used where the laboratory's file leaves a criterion out (docs/verification.md explains each).
DEFAULT_CRITERIA: dict[str, Any] = {
    "min_samples": 20,
    "min_cells": 2000,
    "min_blast_flag_sensitivity": 0.9,
    "allowable_difference": {},  # class -> percentage points one sample may differ by
    "allowable_bias": {},  # class -> percentage points the mean difference may reach
}
BLAST_COUNTS_SWEPT = (1, 2, 3, 5, 8, 10, 15)


@dataclass(frozen=True)
class VerifiedSample:
    """A signed-off sample: who signed it and when, and each cell's reference label by image sha256."""

    accession_id: str
    signed_off_by: str
    signed_off_at: datetime
    report_status: str
    report_version: str
    n_reviewed: int
    reference: dict[str, str]


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ServiceError(f"{option} {text[:40]!r} is not a date (YYYY-MM-DD)") from None


def read_criteria(path: Path | None) -> dict[str, Any]:
    """The laboratory's acceptance criteria (a JSON file) over the defaults."""
    if path is None:
        return dict(DEFAULT_CRITERIA)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ServiceError(f"cannot read the criteria file {str(path)!r}: {exc.strerror}") from None
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise ServiceError(f"the criteria file {str(path)!r} does not parse: {exc}") from None
    if not isinstance(loaded, dict) or set(loaded) - set(DEFAULT_CRITERIA):
        unknown = sorted(set(loaded) - set(DEFAULT_CRITERIA)) if isinstance(loaded, dict) else "not a mapping"
        raise ServiceError(f"the criteria file {str(path)!r} has unknown keys {unknown}; known: {sorted(DEFAULT_CRITERIA)}")
    return DEFAULT_CRITERIA | loaded


def signed_off_samples(
    session: Session, day_from: date | None = None, day_to: date | None = None, accession_ids: Sequence[str] | None = None
) -> list[Sample]:
    """The samples whose signed-off differential stands, by sign-off date (inclusive) or by accession id.

    The one place that says what a signed-off sample is: signed off, with no relabel after its sign-off
    (a change after sign-off leaves a report nobody has signed). A listed id that is unknown or not
    signed off is an error, not silently left out.
    """
    if day_from and day_to and day_from > day_to:
        raise ServiceError(f"--from {day_from} is after --to {day_to}: give the earlier date first")
    last_review = select(CellReview.sample_id, func.max(CellReview.created_at).label("at")).group_by(CellReview.sample_id).subquery()
    query = (
        select(Sample)
        .outerjoin(last_review, last_review.c.sample_id == Sample.id)
        .where(Sample.signed_off_at.is_not(None))
        .where((last_review.c.at.is_(None)) | (last_review.c.at <= Sample.signed_off_at))
    )
    if day_from:
        query = query.where(Sample.signed_off_at >= datetime.combine(day_from, time(), timezone.utc))
    if day_to:
        query = query.where(Sample.signed_off_at < datetime.combine(day_to + timedelta(days=1), time(), timezone.utc))
    if accession_ids is not None:
        query = query.where(Sample.accession_id.in_(accession_ids))
    found = list(session.scalars(query.order_by(Sample.signed_off_at, Sample.id)))
    if accession_ids is not None:
        missing = sorted(set(accession_ids) - {s.accession_id for s in found})
        if missing:
            known = set(session.scalars(select(Sample.accession_id).where(Sample.accession_id.in_(missing))))
            unknown = [m for m in missing if m not in known]
            if unknown:
                raise NotFound(f"no sample {unknown[0][:128]!r} ({len(unknown)} listed ids unknown)")
            raise Conflict(
                f"sample {missing[0]!r} is not signed off, or was changed after its sign-off "
                f"({len(missing)} listed samples): sign it off again or leave it out of the list"
            )
    return found


def _verified(session: Session, sample: Sample) -> VerifiedSample:
    report = session.scalar(select(SampleReport).where(SampleReport.sample_id == sample.id))
    if report is None:
        raise Conflict(f"sample {sample.accession_id!r} is signed off without a report")
    reviews = latest_reviews(session, sample.id)
    done = [c.image_sha256 for c in sample.cells if c.status == CellStatus.DONE]
    accepted = version_predictions(session, report.model_version_id, done)
    reference = {
        sha: reviews[sha].label if sha in reviews else accepted[sha].label for sha in done if sha in reviews or sha in accepted
    }
    assert sample.signed_off_by is not None and sample.signed_off_at is not None  # signed_off_samples chose it so
    return VerifiedSample(
        sample.accession_id,
        sample.signed_off_by,
        sample.signed_off_at,
        sample.report_status,
        session.get(ModelVersion, report.model_version_id).version,  # type: ignore[union-attr]
        len(reviews),
        reference,
    )


def _sign_off_events(session: Session, accession_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each sample's latest sign-off in the audit log: actor, time, comment."""
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == "sample.signed_off", AuditEvent.subject.in_(accession_ids))
        .order_by(AuditEvent.id)
    )
    return {e.subject: {"actor": e.actor, "at": e.at.isoformat(), "comment": e.details.get("comment", "")} for e in events}


def _provenance_of(session: Session, version: ModelVersion) -> dict[str, Any]:
    """What identifies a model version: its files' sha256 (one digest over them all) and its preprocessing."""
    files = session.execute(
        select(ModelFile.name, ModelFile.sha256).where(ModelFile.model_version_id == version.id).order_by(ModelFile.name)
    ).all()
    metadata = session.scalar(
        select(ModelFile.content).where(ModelFile.model_version_id == version.id, ModelFile.name == "metadata.json")
    )
    return {
        "version": version.version,
        "plugin": version.plugin,
        "status": version.status,
        "classes": list(version.classes),
        "sha256": hashlib.sha256("\n".join(f"{name} {sha}" for name, sha in files).encode()).hexdigest(),
        "files": {name: sha for name, sha in files},
        "preprocessing": json.loads(metadata).get("preprocessing") if metadata else None,
        "review_threshold": None,
        "ood_threshold": ood_threshold(version),
    }


def _cell_level(calls: list[tuple[CellCall, bool]], classes: list[str]) -> dict[str, Any]:
    """Agreement, per-class sensitivity / specificity / PPV, the confusion matrix, coverage and accepted accuracy.
    ``calls``: (cell, accepted without review)."""
    labels = classes + sorted({c.true for c, _ in calls} - set(classes))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for cell, _ in calls:
        matrix[index[cell.true]][index[cell.predicted]] += 1
    n = len(calls)
    per_class = {}
    for label, i in index.items():
        tp = matrix[i][i]
        fn = sum(matrix[i]) - tp
        fp = sum(row[i] for row in matrix) - tp
        per_class[label] = differential.binary_agreement(tp, fp, fn, n - tp - fn - fp)
    accepted = [cell for cell, ok in calls if ok]
    return {
        "n_cells": n,
        "agreement": differential.proportion(sum(c.true == c.predicted for c, _ in calls), n),
        "per_class": per_class,
        "classes": labels,
        "confusion_matrix": matrix,  # rows: technologist (reference), columns: model
        "coverage": differential.proportion(len(accepted), n),
        "accepted_accuracy": differential.proportion(sum(c.true == c.predicted for c in accepted), len(accepted)),
    }


def _sample_level(
    samples: list[SyntheticSample], classes: list[str], rule: FlagRule, criteria: dict[str, Any], ids: list[str]
) -> dict[str, Any]:
    """Per cell type: model against verified percentages over the samples (regression, Bland-Altman, r, samples
    outside the allowable difference)."""
    percents = [
        (
            differential.differential_percent(s.counts("predicted"), rule.non_leukocyte_classes)[0],
            differential.differential_percent(s.counts("true"), rule.non_leukocyte_classes)[0],
        )
        for s in samples
    ]
    out = {}
    for label in classes:
        model = [p.get(label, 0.0) for p, _ in percents]
        verified = [t.get(label, 0.0) for _, t in percents]
        allowed = criteria["allowable_difference"].get(label)
        out[label] = {
            "verified_mean": round(sum(verified) / len(verified), 3) if verified else None,
            "model_mean": round(sum(model) / len(model), 3) if model else None,
            "agreement": differential.percent_agreement(model, verified),
            "passing_bablok": differential.passing_bablok(verified, model),
            "bland_altman": differential.bland_altman(verified, model),
            "allowable_difference": allowed,
            "outside_allowable": [
                {"sample_id": sid, "model": m, "verified": v, "difference": round(m - v, 2)}
                for sid, m, v in zip(ids, model, verified)
                if allowed is not None and abs(m - v) > allowed
            ],
            "pairs": [[v, m] for m, v in zip(model, verified)],  # (verified, model): the plots
        }
    return out


def _flags(samples: list[SyntheticSample], rule: FlagRule) -> dict[str, Any]:
    """Each sample's blast and immature flags from the model's calls against the same rule on the verified counts,
    and the blast rule swept over candidate counts: what it would cost in flagged normal samples and misses."""
    result: dict[str, Any] = {}
    truth = [set(differential.sample_flags(rule, s.counts("true"), len(s.cells), 0)) for s in samples]
    called = [
        set(differential.sample_flags(rule, s.counts("predicted"), len(s.cells), sum(c.unfamiliar for c in s.cells))) for s in samples
    ]
    for flag in (BLASTS, IMMATURE_CELLS):
        pairs = [(flag in t, flag in c) for t, c in zip(truth, called)]
        result[flag] = differential.binary_agreement(
            sum(t and c for t, c in pairs),
            sum(c and not t for t, c in pairs),
            sum(t and not c for t, c in pairs),
            sum(not t and not c for t, c in pairs),
        )
    positive = [s for s, t in zip(samples, truth) if BLASTS in t]
    negative = [s for s, t in zip(samples, truth) if BLASTS not in t]
    rules = [replace(rule, blast_count=k) for k in sorted({*BLAST_COUNTS_SWEPT, rule.blast_count})]
    sweep = []
    for rule_row in differential.threshold_sweep(negative, positive, rules):
        flagged_normal, found = rule_row["normal_flagged_blasts"], rule_row["leukaemic_flagged_blasts"]
        sweep.append(
            {
                "blast_count": rule_row["rule"]["blast_count"],
                "blast_percent": rule_row["rule"]["blast_percent"],
                "in_force": rule_row["rule"]["blast_count"] == rule.blast_count,
                "sensitivity": found,
                "specificity": None if flagged_normal is None else round(1 - flagged_normal, 4),
                "extra_reviews": round(flagged_normal * len(negative)) if flagged_normal is not None else 0,
                "missed": round((1 - found) * len(positive)) if found is not None else 0,
            }
        )
    result["sweep"] = sweep
    result["n_positive"], result["n_negative"] = len(positive), len(negative)
    return result


def _criteria_results(scored: dict[str, Any], criteria: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    """Each criterion as met or not, and the conclusion: accepted, not accepted, or no conclusion (too little evidence)."""
    n_samples, n_cells = scored["n_samples"], scored["cell_level"]["n_cells"]
    sensitivity = scored["flags"][BLASTS]["sensitivity"]["value"]
    rows = [
        {
            "criterion": "samples",
            "required": f">= {criteria['min_samples']}",
            "observed": n_samples,
            "met": n_samples >= criteria["min_samples"],
        },
        {
            "criterion": "cells",
            "required": f">= {criteria['min_cells']}",
            "observed": n_cells,
            "met": n_cells >= criteria["min_cells"],
        },
        {
            "criterion": "blast flag sensitivity",
            "required": f">= {criteria['min_blast_flag_sensitivity']}",
            "observed": "no blast-positive sample" if sensitivity is None else sensitivity,
            "met": None if sensitivity is None else sensitivity >= criteria["min_blast_flag_sensitivity"],
        },
    ]
    for label, allowed in criteria["allowable_bias"].items():
        bias = scored["sample_level"].get(label, {}).get("bland_altman", {}).get("bias")
        rows.append(
            {
                "criterion": f"{label} bias (points)",
                "required": f"|bias| <= {allowed}",
                "observed": "not measured" if bias is None else bias,
                "met": None if bias is None else abs(bias) <= allowed,
            }
        )
    for label, allowed in criteria["allowable_difference"].items():
        outside = len(scored["sample_level"].get(label, {}).get("outside_allowable", []))
        rows.append(
            {"criterion": f"{label} samples outside ±{allowed} points", "required": "none", "observed": outside, "met": outside == 0}
        )
    short = [row["criterion"] for row in rows[:2] if not row["met"]]
    if short or rows[2]["met"] is None:
        reasons = [
            f"too few {name}: {row['observed']}, the criteria ask {row['required']}"
            for name, row in zip(("samples", "cells"), rows[:2])
            if not row["met"]
        ]
        if rows[2]["met"] is None:
            reasons.append("no verified sample is blast-positive, so the blast flag's sensitivity cannot be measured")
        return rows, "no conclusion", "; ".join(reasons) + ": collect more signed-off samples before concluding"
    failed = [row["criterion"] for row in rows if row["met"] is False]
    if failed:
        return rows, "not accepted", f"criteria not met: {', '.join(failed)}"
    return rows, "accepted", "every acceptance criterion is met"


def _score(
    session: Session,
    settings: Settings,
    version: ModelVersion,
    verified: list[VerifiedSample],
    rule: FlagRule,
    criteria: dict[str, Any],
) -> dict[str, Any]:
    """One model version against the verified samples: cell level, sample level, flags, criteria and conclusion."""
    everything = [sha for v in verified for sha in v.reference]
    predictions: dict[str, Prediction] = {}
    for start in range(0, len(everything), 500):  # an IN list of bounded size
        predictions |= version_predictions(session, version.id, everything[start : start + 500])
    missing = len(set(everything) - set(predictions))
    if missing:
        raise Conflict(
            f"model {version.version} has no predictions on {missing} of the {len(set(everything))} verified cells: "
            f"score them first with `bloodcell verify --model {version.version} --classify ...`"
        )
    threshold, unfamiliar_above = review_threshold(settings, version), ood_threshold(version)
    calls: list[tuple[CellCall, bool]] = []
    samples = []
    for v in verified:
        cells = []
        for sha, label in v.reference.items():
            reasons = cell_review_reasons(predictions[sha], threshold, unfamiliar_above, False)
            cell = CellCall(label, predictions[sha].label, UNFAMILIAR_REASON in reasons)
            cells.append(cell)
            calls.append((cell, not reasons))
        samples.append(SyntheticSample("verified", 0.0, tuple(cells)))
    classes = list(version.classes)
    scored: dict[str, Any] = {
        "version": version.version,
        "n_samples": len(verified),
        "review_threshold": threshold,
        "cell_level": _cell_level(calls, classes),
        "sample_level": _sample_level(samples, classes, rule, criteria, [v.accession_id for v in verified]),
        "flags": _flags(samples, rule),
    }
    scored["criteria"], scored["conclusion"], scored["conclusion_text"] = _criteria_results(scored, criteria)
    return scored


def build_dossier(
    settings: Settings,
    *,
    model: str | None = None,
    day_from: date | None = None,
    day_to: date | None = None,
    accession_ids: Sequence[str] | None = None,
    criteria: dict[str, Any] | None = None,
    classify: bool = False,
    classifier_for: Callable[[ModelVersion], "Classifier"] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """The dossier as JSON: production scored on the signed-off samples, and MODEL beside it when it is another
    version. ``classify`` first scores the verified cells MODEL has not classified (with ``classifier_for``)."""
    criteria = criteria if criteria is not None else dict(DEFAULT_CRITERIA)
    rule = FlagRule.from_settings(settings)
    with session_scope(settings.database_url) as session:
        production = current_production(session)
        if production is None:
            raise Conflict("no production model: promote one before verifying it")
        versions = [production]
        if model is not None and model != production.version:
            versions.append(find_version(session, model))
        samples = signed_off_samples(session, day_from, day_to, accession_ids)
        if not samples:
            window = f" signed off between {day_from or 'the start'} and {day_to or 'today'}" if day_from or day_to else ""
            raise Conflict(f"no signed-off samples{window}: the dossier needs samples a technologist has reviewed and signed off")
        sample_pks = [s.id for s in samples]
        for row in versions:
            session.expunge(row)
    if classify:
        assert classifier_for is not None, "classify needs a classifier"
        for row in versions[1:]:
            for pk in sample_pks:
                classify_cells_with(settings, row, pk, classifier_for, "verify")
    with session_scope(settings.database_url) as session:
        samples = [session.get(Sample, pk) for pk in sample_pks]  # type: ignore[misc]
        verified = [_verified(session, s) for s in samples]
        sign_offs = _sign_off_events(session, [v.accession_id for v in verified])
        models = []
        for row in versions:
            attached = session.merge(row, load=False)
            scored = _score(session, settings, attached, verified, rule, criteria)
            provenance = _provenance_of(session, attached)
            provenance["review_threshold"] = scored["review_threshold"]
            models.append({"role": "production" if row.id == production.id else "candidate", "provenance": provenance} | scored)
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "software": {"bloodcell": package_version("bloodcell")},
        "selection": {
            "from": day_from.isoformat() if day_from else None,
            "to": day_to.isoformat() if day_to else None,
            "samples_file": list(accession_ids) if accession_ids is not None else None,
        },
        "settings": {"flag_rule": rule.to_json(), "review_threshold": settings.review_threshold},
        "criteria": criteria,
        "samples": [
            {
                "sample_id": v.accession_id,
                "signed_off_by": v.signed_off_by,
                "signed_off_at": v.signed_off_at.isoformat(),
                "report_status": v.report_status,
                "report_model_version": v.report_version,
                "n_cells": len(v.reference),
                "n_reviewed": v.n_reviewed,
                "sign_off": sign_offs.get(v.accession_id),
            }
            for v in verified
        ],
        "models": models,
    }


def verified_refusals(settings: Settings, candidate: str) -> list[str]:
    """Why CANDIDATE may not replace production on the laboratory's own signed-off samples (the promotion gate's
    part with BLOODCELL_PROMOTION_VERIFIED): a lower cell agreement or blast-flag sensitivity than production's on
    the same cells. Nothing to compare on (no signed-off samples, cells the candidate has not classified) refuses too."""
    try:
        dossier = build_dossier(settings, model=candidate)
    except ServiceError as exc:
        return [f"no local verification to compare on: {exc}"]
    if len(dossier["models"]) == 1:  # the candidate is production
        return []
    production, challenger = dossier["models"]
    figures = {
        "cell agreement": lambda scored: scored["cell_level"]["agreement"]["value"],
        "blast flag sensitivity": lambda scored: scored["flags"][BLASTS]["sensitivity"]["value"],
    }
    refusals = []
    for name, figure in figures.items():
        new, old = figure(challenger), figure(production)
        if new is not None and old is not None and new < old:
            refusals.append(f"on {len(dossier['samples'])} verified samples its {name} {new:.4f} is below production's {old:.4f}")
    return refusals


def make_dossier(settings: Settings, out_dir: Path, actor: str, **options: Any) -> dict[str, Any]:
    """Build the dossier (``build_dossier``'s options), write its files into OUT_DIR and audit it."""
    from bloodcell_core.service.verification_report import write_dossier

    dossier = build_dossier(settings, **options)
    write_dossier(dossier, out_dir)
    with session_scope(settings.database_url) as session:
        record_event(
            session,
            actor,
            "verification.dossier",
            dossier["models"][0]["version"],
            out_dir=str(out_dir),
            models=[m["version"] for m in dossier["models"]],
            conclusions=[m["conclusion"] for m in dossier["models"]],
            samples=len(dossier["samples"]),
        )
    return dossier


def dossiers_dir(settings: Settings) -> Path:
    """Where the console keeps the dossiers it makes: BLOODCELL_HOME/verification/<UTC time>/."""
    return settings.home / "verification"


def latest_dossier(settings: Settings) -> Path | None:
    """The folder of the newest dossier made from the console, or None."""
    made = sorted(path.parent for path in dossiers_dir(settings).glob("*/dossier.json"))
    return made[-1] if made else None
