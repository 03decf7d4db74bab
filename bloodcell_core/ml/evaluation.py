"""Evaluate a model directory on any folder-per-class dataset, through the serving path."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bloodcell_core.ml.dataset import index_dataset, list_class_files, read_image_file
from bloodcell_core.ml.inference import Classifier
from bloodcell_core.ml.metrics import classification_metrics
from bloodcell_core.ml.ood import UNFAMILIAR_REASON


def evaluate(
    classifier: Classifier,
    data_dir: Path | str,
    include_seen: bool = False,
    progress: bool = True,
    renames: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics on the classes the model knows; the report says what was left out and why.

    ``renames`` maps folder names to the model's classes (kaggle5's seg_neutrophil is the differential's
    neutrophil). Images the model trained or early-stopped on (same bytes as its train or validation split)
    are excluded unless ``include_seen``: a dataset that overlaps the training data (the PBC
    images shared by kaggle5 and pbc8) would otherwise flatter the model. Duplicates count once,
    and images filed under two classes are excluded.
    """
    data_dir, renames = Path(data_dir), renames or {}
    classes = classifier.classes
    folders = sorted({renames.get(label, label) for label, _ in list_class_files(data_dir)})
    known = [label for label in folders if label in classes]
    if not known:
        raise ValueError(f"{data_dir} has no class folder the model knows (model: {classes}; folders: {folders})")
    index = index_dataset(data_dir, classes=known, progress=progress, renames=renames)
    seen = set() if include_seen else classifier.artifact.split().hashes("train", "val")

    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    first_path: dict[str, str] = {}
    for entry in index.valid:
        labels_by_hash[entry.sha256].add(entry.label)
        first_path.setdefault(entry.sha256, entry.path)
    conflicting = sorted(sha for sha, labels in labels_by_hash.items() if len(labels) > 1)
    usable = sorted(sha for sha, labels in labels_by_hash.items() if len(labels) == 1 and sha not in seen)

    images = [(first_path[sha], read_image_file(index.root / first_path[sha])) for sha in usable]
    predictions = classifier.classify(images)
    good = [(sha, p) for sha, p in zip(usable, predictions) if p.error is None]
    y_true = np.array([classes.index(next(iter(labels_by_hash[sha]))) for sha, _ in good], dtype=np.int64)
    probabilities = np.array([[p.probabilities[c] for c in classes] for _, p in good]).reshape(-1, len(classes))
    metrics = classification_metrics(y_true, probabilities, classes)
    # the service's review rule (ood.review_reasons) at the model's own thresholds
    accepted = np.array([not p.needs_review for _, p in good], dtype=bool)
    correct = probabilities.argmax(axis=1) == y_true
    metrics["coverage"] = float(accepted.mean()) if len(good) else 0.0
    metrics["accepted_accuracy"] = float(correct[accepted].mean()) if accepted.any() else None
    metrics["unfamiliar_share"] = float(np.mean([UNFAMILIAR_REASON in p.review_reasons for _, p in good])) if good else 0.0
    metrics["excluded"] = {
        "unknown_class_folders": [label for label in folders if label not in classes],
        "unreadable": [{"path": e.path, "error": e.error} for e in index.unreadable],
        "seen_in_training": sum(1 for sha in labels_by_hash if sha in seen),
        "duplicate_files": len(index.valid) - len(labels_by_hash),
        "conflicting_labels": [first_path[sha] for sha in conflicting],
    }
    # which images were scored: two models are comparable on a set only if this matches
    metrics["images_digest"] = hashlib.sha256("".join(sha for sha, _ in good).encode()).hexdigest()
    metrics["data_dir"] = str(data_dir)
    metrics["model"] = str(classifier.artifact.directory)
    return metrics
