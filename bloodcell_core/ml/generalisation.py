"""The generalisation table: how a model fares beyond the source it was tested on (`bloodcell generalisation`).

For each model directory, through the serving path (its preprocessing, views, calibration, review rule):
- same source: its own held-out test split;
- source swap: neutrophils of each visible source it did not train on (PBC ``pbc8/neutrophil`` and Munich
  ``kaggle5/seg_neutrophil``), each of which must be called a neutrophil. For a model that saw only one of the
  two sources' neutrophils, the other row is a leave-one-source-out test;
- another laboratory: the white cells of BCCD's test split, cropped from the fields by their boxes, typed by
  ``labels.csv`` (single-type fields only);
- synthetic shifts of the same-source test images (blur, stain, magnification) and uniform noise, which say
  whether the out-of-distribution score notices what the softmax does not.
Columns: accuracy, macro-F1, share of cells accepted (neither under the review threshold nor unfamiliar), the
accuracy of those, the share flagged unfamiliar, and the out-of-distribution AUROC of the set's cells against
the same-source test cells. Only cells of classes the model knows are scored (``n``). On the source-swap rows,
the accuracy of a linear probe that tells PBC from Munich neutrophils by the model's features: the measure of
whether the model still carries the source (0.5 is chance).

Per sample (``sample_rows``, statistics in ``differential``): seeded synthetic differentials composed from the cells
of the same-source and BCCD sets as the model called them (normal, and leukaemic at BLAST_PERCENTS blasts): the
share of samples each flag fires on, and predicted against true blast and immature percentages.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from bloodcell_core.ml.artifacts import ModelMetadata
from bloodcell_core.ml.dataset import read_image_file
from bloodcell_core.ml.differential import (
    BLAST_PERCENTS,
    NORMAL_DIFFERENTIAL,
    CellCall,
    FlagRule,
    SyntheticSample,
    compose_samples,
    leukaemic_composition,
    summarise_samples,
    threshold_sweep,
)
from bloodcell_core.ml.metrics import classification_metrics
from bloodcell_core.ml.ood import UNFAMILIAR_REASON, auroc

# A class another source names differently: PBC's "neutrophil" is Munich's "seg_neutrophil".
ALIASES = {"neutrophil": "seg_neutrophil"}
SYNTHETIC_IMAGES = 300  # same-source test images per synthetic shift
NOISE_IMAGES = 100
BLAST_CLASS = FlagRule().blast_class
SAME_SOURCE = "held-out test split"
OTHER_LABORATORY = "BCCD test split, white cells by box"
SAMPLES_PER_GROUP = 50  # synthetic samples of 100 cells per group of the per-sample rows
SAME_NORMAL = "normal samples, same sources (test split)"
OTHER_NORMAL = "normal samples, another laboratory (BCCD test split, drawn with replacement)"
ALL_LEUKAEMIC = "leukaemic samples, same sources, all blast levels"
THRESHOLD_SWEEP = "flag threshold sweep"
SWEEP_BLAST_COUNTS = (2, 3, 5, 8, 10, 15)  # blast cells of 100 for the blast flag
SWEEP_IMMATURE_PERCENTS = (5.0, 10.0, 15.0, 20.0, 30.0)  # immature percent above which the immature flag fires


@dataclass
class EvaluationSet:
    name: str
    kind: str  # same source | source swap | other laboratory | synthetic shift
    images: list[tuple[str, bytes, str]]  # (name, bytes, true class)


def model_class(label: str, classes: list[str]) -> str | None:
    """The model's class for a true label, through ALIASES; None when it has none."""
    if label in classes:
        return label
    alias = ALIASES.get(label)
    return alias if alias in classes else None


def _encode_png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 2.5)


def _stain(image: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.int16)
    lab[..., 1] -= 12  # less magenta
    lab[..., 2] += 18  # more yellow: an under-stained, warmer smear
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _half_magnification(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur (sigma 2.5 px)": _blur,
    "stain shift (LAB a -12, b +18)": _stain,
    "half magnification": _half_magnification,
}


def evaluation_sets(metadata: ModelMetadata, split: Any, data_root: Path) -> list[EvaluationSet]:
    """The sets of the table for one model; folders missing under DATA_ROOT are left out."""
    from bloodcell_core.ml.preprocessing import ImageDecodeError, decode_image
    from bloodcell_core.ml.smear_fields import typed_cell_crops

    own_root = metadata.dataset_root
    test = [(item.paths[0], read_image_file(own_root / item.paths[0]), item.label) for item in split.parts["test"]]
    sets = [EvaluationSet(SAME_SOURCE, "same source", test)]
    seen = split.hashes("train", "val")
    for folder, label, title in (
        ("pbc8/neutrophil", "neutrophil", "PBC neutrophils (pbc8/neutrophil)"),
        ("kaggle5/seg_neutrophil", "neutrophil", "Munich neutrophils (kaggle5/seg_neutrophil)"),
    ):
        path = data_root / folder
        if not path.is_dir():
            continue
        images = []
        for file in sorted(path.iterdir()):
            data = read_image_file(file)
            if hashlib.sha256(data).hexdigest() not in seen:
                images.append((f"{folder}/{file.name}", data, label))
        sets.append(EvaluationSet(title, "source swap", images))
    if (data_root / "bccd" / "splits").is_dir():
        sets.append(EvaluationSet(OTHER_LABORATORY, "other laboratory", typed_cell_crops(data_root / "bccd", "test")))
    decoded = []
    for name, data, label in test[:SYNTHETIC_IMAGES]:
        try:
            decoded.append((name, decode_image(data), label))
        except ImageDecodeError:
            continue
    for title, shift in SHIFTS.items():
        sets.append(
            EvaluationSet(title, "synthetic shift", [(name, _encode_png(shift(image)), label) for name, image, label in decoded])
        )
    rng = np.random.default_rng(0)
    noise = [(f"noise-{k}", _encode_png(rng.integers(0, 256, (363, 360, 3), dtype=np.uint8)), "") for k in range(NOISE_IMAGES)]
    sets.append(EvaluationSet("uniform RGB noise (not cells)", "synthetic shift", noise))
    return sets


def score_set(classifier: Any, images: list[tuple[str, bytes, str]]) -> dict[str, Any]:
    """Metrics of one set through ``Classifier.classify``: the review rule is the service's."""
    classes = classifier.classes
    known = [(name, data, model_class(label, classes)) for name, data, label in images]
    predictions = classifier.classify([(name, data) for name, data, _ in known])
    good = [(p, label) for p, (_, _, label) in zip(predictions, known) if p.error is None]
    scores = np.array([p.ood_score for p, _ in good if p.ood_score is not None])
    unfamiliar = np.array([UNFAMILIAR_REASON in p.review_reasons for p, _ in good], dtype=bool)
    labelled = [(p, label) for p, label in good if label is not None]
    # a set without labels (noise) still says how much of it would be reported without review
    accepted_share = round(float(np.mean([not p.needs_review for p, _ in good])), 4) if good else None
    row: dict[str, Any] = {
        "n": len(labelled),
        "n_images": len(images),
        "n_failed": len(predictions) - len(good),
        "accuracy": None,
        "macro_f1": None,
        "coverage": accepted_share,
        "accepted_accuracy": None,
        "unfamiliar_share": round(float(unfamiliar.mean()), 4) if len(good) else None,
    }
    if labelled:
        y_true = np.array([classes.index(label) for _, label in labelled])
        probabilities = np.array([[p.probabilities[c] for c in classes] for p, _ in labelled])
        metrics = classification_metrics(y_true, probabilities, classes)
        accepted = np.array([not p.needs_review for p, _ in labelled])
        correct = probabilities.argmax(axis=1) == y_true
        row |= {
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "coverage": round(float(accepted.mean()), 4),
            "accepted_accuracy": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
            "predicted": {c: int(n) for c, n in zip(classes, np.bincount(probabilities.argmax(axis=1), minlength=len(classes))) if n},
        }
        if metrics["per_class"].get(BLAST_CLASS, {}).get("support"):
            row["myeloblast_recall"] = round(metrics["per_class"][BLAST_CLASS]["recall"], 4)
        if BLAST_CLASS in classes and (y_true != classes.index(BLAST_CLASS)).any():
            normal = y_true != classes.index(BLAST_CLASS)
            row["normal_called_blast"] = round(float((probabilities.argmax(axis=1)[normal] == classes.index(BLAST_CLASS)).mean()), 4)
    calls = [CellCall(label, p.label or "", UNFAMILIAR_REASON in p.review_reasons) for p, label in labelled]
    return row | {"_scores": scores, "_calls": calls}


def source_probe(
    classifier: Any, first: list[tuple[str, bytes, str]], second: list[tuple[str, bytes, str]], folds: int = 5
) -> float | None:
    """Cross-validated accuracy of a logistic regression telling two sources' cells apart from the model's
    features (the last layer's input). Near 0.5 means the features do not carry the source; near 1 that they do."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bloodcell_core.ml.inference import features_and_probabilities
    from bloodcell_core.ml.ood import feature_model
    from bloodcell_core.ml.preprocessing import ImageDecodeError, scale

    n = min(len(first), len(second))
    if n < folds:
        return None
    arrays, sources = [], []
    for k, images in enumerate((first[:n], second[:n])):
        for _, data, _ in images:
            try:
                arrays.append(scale(classifier.preprocessor.to_uint8(data)))
            except ImageDecodeError:  # the real folders hold a non-image or two
                continue
            sources.append(k)
    features = features_and_probabilities(feature_model(classifier.artifact.model), np.stack(arrays))[0]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    scores = cross_val_score(probe, features, np.array(sources), cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    return round(float(scores.mean()), 4)


def _pool(calls: list[CellCall]) -> dict[str, list[CellCall]]:
    """Classified cells by their true class, named as the normal differential names them (``neutrophil``)."""
    pool: dict[str, list[CellCall]] = {}
    for call in calls:
        true = next((name for name, alias in ALIASES.items() if alias == call.true), call.true)
        pool.setdefault(true, []).append(call)
    return pool


SampleGroup = tuple[str, str, list[SyntheticSample]]  # (set name, kind, samples)


def sample_groups(calls: dict[str, list[CellCall]], classes: list[str], blast_class: str = BLAST_CLASS) -> list[SampleGroup]:
    """Seeded synthetic samples from the cells each set's classification produced: normal differentials of the same
    sources (test split) and of another laboratory (BCCD), and leukaemic ones (test-split blasts at BLAST_PERCENTS).

    Empty for a model that cannot count a normal differential (it lacks one of its classes)."""
    if any(model_class(label, classes) is None for label in NORMAL_DIFFERENTIAL):
        return []
    same = _pool(calls.get(SAME_SOURCE, []))
    groups: list[SampleGroup] = [
        (SAME_NORMAL, "same source",
         compose_samples(same, NORMAL_DIFFERENTIAL, SAMPLES_PER_GROUP, kind="normal", seed=0)),
    ]  # fmt: skip
    if calls.get(OTHER_LABORATORY):
        other = compose_samples(_pool(calls[OTHER_LABORATORY]), NORMAL_DIFFERENTIAL, SAMPLES_PER_GROUP, kind="normal", seed=1)
        groups.append((OTHER_NORMAL, "other laboratory", other))
    if blast_class in classes and same.get(blast_class):
        leukaemic = []
        for k, percent in enumerate(BLAST_PERCENTS):
            composition = leukaemic_composition(percent, blast_class)
            drawn = compose_samples(same, composition, SAMPLES_PER_GROUP, kind="leukaemic", blast_class=blast_class, seed=10 + k)
            groups.append((f"leukaemic samples, same sources, {percent} % blasts", "same source", drawn))
            leukaemic += drawn
        groups.append((ALL_LEUKAEMIC, "same source", leukaemic))
    return groups


def sample_rows(groups: list[SampleGroup], rule: FlagRule = FlagRule()) -> list[dict[str, Any]]:
    """The per-sample rows: each group's flagged shares and predicted against true percentages under RULE."""
    return [{"set": name, "kind": kind, "level": "sample"} | summarise_samples(samples, rule) for name, kind, samples in groups]


def candidate_rules(base: FlagRule = FlagRule()) -> list[FlagRule]:
    """The flag rules the threshold sweep compares: blast count (of 100 cells) by immature percent, the
    blast percent rule kept (in 100-cell samples it never fires before the count does)."""
    grid = [(count, percent) for count in SWEEP_BLAST_COUNTS for percent in SWEEP_IMMATURE_PERCENTS]
    return [replace(base, blast_count=count, immature_percent=percent) for count, percent in grid]


def threshold_rows(groups: list[SampleGroup], rules: list[FlagRule]) -> list[dict[str, Any]]:
    """For each candidate rule (``differential.threshold_sweep``): normal samples flagged, of the same sources and of
    another laboratory, and leukaemic samples flagged (any flag; blast flag, in all and per blast level)."""
    named = {name: samples for name, _, samples in groups}
    same = threshold_sweep(named[SAME_NORMAL], named.get(ALL_LEUKAEMIC, []), rules)
    other = threshold_sweep(named.get(OTHER_NORMAL, []), [], rules)
    return [
        {
            "blast_count": rule.blast_count,
            "immature_percent": rule.immature_percent,
            "same_normal_flagged_any": s["normal_flagged_any"],
            "other_normal_flagged_any": o["normal_flagged_any"],
            "other_normal_flagged_blasts": o["normal_flagged_blasts"],
            "leukaemic_flagged_any": s["leukaemic_flagged_any"],
            "leukaemic_flagged_blasts": s["leukaemic_flagged_blasts"],
            "leukaemic_flagged_blasts_by_percent": s["leukaemic_flagged_blasts_by_percent"],
        }
        for rule, s, o in zip(rules, same, other)
    ]


def model_rows(model_dir: Path, data_root: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    from bloodcell_core.ml.inference import Classifier

    classifier = Classifier.from_dir(model_dir)
    metadata, split = classifier.artifact.metadata, classifier.artifact.split()
    steps = metadata.preprocessing["steps"]
    identity = {"model": model_dir.name, "model_dir": str(model_dir), "plugin": metadata.plugin, "steps": steps}
    rows, in_source, calls = [], None, {}
    sets = evaluation_sets(metadata, split, data_root)
    swaps = [s for s in sets if s.kind == "source swap"]
    probe = source_probe(classifier, swaps[0].images, swaps[1].images) if len(swaps) == 2 else None
    log(f"{model_dir}: a linear probe tells PBC from Munich neutrophils with accuracy {probe} (chance 0.5)")
    for evaluation in sets:
        log(f"{model_dir}: {evaluation.name} ({len(evaluation.images)} images)")
        row = score_set(classifier, evaluation.images)
        scores, calls[evaluation.name] = row.pop("_scores"), row.pop("_calls")
        if in_source is None:
            in_source = scores
            row["ood_auroc"] = None
        else:
            row["ood_auroc"] = auroc(in_source, scores) if len(scores) else None
        rows.append(
            identity
            | {"set": evaluation.name, "kind": evaluation.kind}
            | row
            | ({"source_probe_accuracy": probe} if evaluation.kind == "source swap" else {})
        )
    groups = sample_groups(calls, metadata.classes)
    sweep = [{"set": THRESHOLD_SWEEP, "level": "thresholds", "rules": threshold_rows(groups, candidate_rules())}] if groups else []
    return rows + [identity | row for row in sample_rows(groups) + sweep]


def _cell(value: Any) -> str:
    return "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def sample_table(rows: list[dict[str, Any]]) -> str:
    """The per-sample rows as markdown: flagged shares, and predicted against true blast and immature percentages."""
    header = ["model", "samples", "n", "any flag (blast or immature)", "blast flag", "immature flag", "unfamiliar warning",
              "blast % r", "blast % bias", "immature % r", "immature % bias"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        blast, immature = r["blast_percent"], r["immature_percent"]
        cells = [r["model"], r["set"], str(r["n_samples"]), _cell(r["flagged_any"]), _cell(r["flagged_blasts"]),
                 _cell(r["flagged_immature"]), _cell(r["flagged_unfamiliar"]), _cell(blast["r"]), _cell(blast["bias"]),
                 _cell(immature["r"]), _cell(immature["bias"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Both tables: per cell, then (where any model has them) per sample."""
    per_sample = [r for r in rows if r.get("level") == "sample"]
    sweeps = [r for r in rows if r.get("level") == "thresholds"]
    rows = [r for r in rows if r.get("level") is None]
    header = [
        "model",
        "set",
        "kind",
        "n",
        "accuracy",
        "macro-F1",
        "accepted",
        "accuracy of accepted",
        "unfamiliar",
        "OOD AUROC vs same-source test",
        "source probe (PBC vs Munich neutrophils)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    cell = _cell
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["set"],
                    r["kind"],
                    str(r["n"]),
                    cell(r.get("accuracy")),
                    cell(r.get("macro_f1")),
                    cell(r.get("coverage")),
                    cell(r.get("accepted_accuracy")),
                    cell(r.get("unfamiliar_share")),
                    cell(r.get("ood_auroc")),
                    cell(r.get("source_probe_accuracy")) if r["kind"] == "source swap" else "",
                ]
            )
            + " |"
        )
    table = "\n".join(lines)
    if per_sample:
        table += "\n\n**Per sample** (flag rule: BLOODCELL_* defaults)\n\n" + sample_table(per_sample)
    for sweep in sweeps:
        table += f"\n\n**Flag thresholds, {sweep['model']}** (samples as above; blast flag at N blasts of 100 cells)\n\n"
        table += threshold_table(sweep["rules"])
    return table


def threshold_table(rules: list[dict[str, Any]]) -> str:
    """The threshold sweep as markdown: one row per candidate rule."""
    levels = list(rules[0]["leukaemic_flagged_blasts_by_percent"]) if rules else []
    header = ["blast flag at N blasts", "immature flag above %", "same-source normal: any flag", "BCCD normal: any flag",
              "BCCD normal: blast flag", "leukaemic: any flag", "leukaemic: blast flag"]  # fmt: skip
    header += [f"blast flag at {level} % blasts" for level in levels]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rules:
        cells = [str(r["blast_count"]), f"{r['immature_percent']:g}", _cell(r["same_normal_flagged_any"]),
                 _cell(r["other_normal_flagged_any"]), _cell(r["other_normal_flagged_blasts"]),
                 _cell(r["leukaemic_flagged_any"]), _cell(r["leukaemic_flagged_blasts"])]  # fmt: skip
        cells += [_cell(r["leukaemic_flagged_blasts_by_percent"][level]) for level in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_table(model_dirs: list[Path], data_root: Path, out_dir: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Score every model on every set; write OUT/generalisation.json and OUT/generalisation.md, and each
    model's own rows to MODEL_DIR/report/generalisation.json (the review console's model page shows them)."""
    rows = []
    for model_dir in model_dirs:
        own = model_rows(model_dir, data_root, log)
        (Path(model_dir) / "report").mkdir(parents=True, exist_ok=True)
        (Path(model_dir) / "report" / "generalisation.json").write_text(json.dumps(own, indent=1) + "\n")
        rows += own
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "generalisation.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "generalisation.md").write_text(markdown_table(rows) + "\n")
    return rows
