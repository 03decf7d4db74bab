"""Classification metrics from predicted probabilities: accuracy, F1, confusion, calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: confidence-vs-accuracy gap of the top class, averaged over equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": int((which == b).sum()),
            "accuracy": float(correct[which == b].mean()) if (which == b).any() else 0.0,
            "confidence": float(confidence[which == b].mean()) if (which == b).any() else 0.0,
        }
        for b in range(bins)
    ]


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The metrics every evaluation reports; top-level keys accuracy, macro_f1, ece, n."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    per_class = {}
    f1s = []
    for k, label in enumerate(classes):
        tp = matrix[k, k]
        support = int(matrix[k].sum())
        predicted = int(matrix[:, k].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": support}
        if support:
            f1s.append(f1)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "ece": expected_calibration_error(y_true, probabilities) if len(y_true) else 0.0,
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": matrix.tolist(),
        "reliability": reliability_bins(y_true, probabilities) if len(y_true) else [],
    }


def format_classification_report(metrics: dict[str, Any]) -> str:
    lines = [f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for label, row in metrics["per_class"].items():
        lines.append(f"{label:<16}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>9}")
    lines.append("")
    lines.append(f"{'accuracy':<16}{metrics['accuracy']:>30.4f}{metrics['n']:>9}")
    lines.append(f"{'macro F1':<16}{metrics['macro_f1']:>30.4f}")
    lines.append(f"{'ECE (15 bins)':<16}{metrics['ece']:>30.4f}")
    return "\n".join(lines)
