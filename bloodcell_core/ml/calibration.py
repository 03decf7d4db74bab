"""Calibration and abstention: temperature scaling and a review threshold, both chosen on the validation split.

Temperature scaling (Guo et al. 2017) divides the logits by one number T fitted to minimise the
validation negative log-likelihood; the predicted class never changes, only how sure the model says
it is. The review threshold is the lowest confidence at which the validation cells the model would
accept pass a binomial test of the target accuracy (the 90% Clopper-Pearson upper error bound, per
threshold): cells under it go to a technologist. Both are stored in the model's
metadata and applied by the Classifier, so every serving path sees calibrated probabilities.
"""

from __future__ import annotations

from typing import Any, Sequence, TypedDict

import numpy as np
from scipy.stats import beta

from bloodcell_core.ml.metrics import classification_metrics

TARGET_ACCURACY = 0.995
DELTA = 0.1  # each threshold's binomial test is at 90% confidence
EPSILON = float(np.finfo(np.float32).tiny)  # keeps log() finite without capping logit gaps
REVIEW_ALL = 2.0  # a threshold above any probability: every cell goes to review


class ChosenThreshold(TypedDict):
    threshold: float
    coverage: float
    accuracy: float | None  # None when no threshold passes and every cell goes to review


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the model ends in a softmax, so log p are its logits up to a constant."""
    return softmax(np.log(np.clip(probabilities, EPSILON, 1.0)) / temperature)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising NLL: a coarse log-spaced grid, then a golden-section refinement."""

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probabilities, float(np.exp(log_t))), labels)

    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    best = int(np.argmin([loss(g) for g in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return round(float(np.exp((low + high) / 2)), 4)


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """For each distinct confidence t: the share of cells with confidence >= t and their accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    order = np.argsort(-confidence, kind="stable")
    accepted = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / accepted
    points = []
    for k in range(len(order)):
        if k + 1 < len(order) and confidence[order[k + 1]] == confidence[order[k]]:
            continue  # a threshold accepts every cell with the same confidence
        points.append(
            {"threshold": float(confidence[order[k]]), "coverage": float(accepted[k] / len(order)), "accuracy": float(accuracy[k])}
        )
    return points


def error_upper_bound(errors: int, n: int, delta: float = DELTA) -> float:
    """Clopper-Pearson upper bound on an error rate: with probability 1 - delta the true rate is below it."""
    return 1.0 if errors >= n else float(beta.ppf(1 - delta, errors + 1, n - errors))


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target_accuracy: float, delta: float = DELTA) -> ChosenThreshold:
    """The lowest threshold whose accepted validation cells pass a binomial test of the target accuracy.

    The raw validation accuracy is too optimistic with few errors (3 in 638 gives a threshold that
    accepts everything), so at each threshold the Clopper-Pearson 1 - delta upper bound on the
    accepted cells' error rate must stay under 1 - target. The bound holds per threshold; choosing
    among many thresholds weakens the joint guarantee, and a strict one (fixed-sequence or Bonferroni
    testing) is out of reach with a few hundred validation cells at a 0.5% error target: even no
    error in 638 cells bounds the rate at 0.36% only for a single test at 90%. It is a conservative
    rule, not a certificate; the test split reports what it achieved.
    """
    n = len(labels)
    passing = [
        p
        for p in coverage_curve(probabilities, labels)
        if error_upper_bound(round((1 - p["accuracy"]) * p["coverage"] * n), round(p["coverage"] * n), delta) <= 1 - target_accuracy
    ]
    if not passing:  # too few validation cells for the rule: review everything
        return {"threshold": REVIEW_ALL, "coverage": 0.0, "accuracy": None}
    best = max(passing, key=lambda p: p["coverage"])
    return {"threshold": best["threshold"], "coverage": best["coverage"], "accuracy": best["accuracy"]}


def at_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Share of cells accepted at the threshold, and the accuracy of those (None when none is)."""
    accepted = probabilities.max(axis=1) >= threshold
    correct = probabilities.argmax(axis=1) == labels
    return {
        "coverage": round(float(accepted.mean()), 5) if len(labels) else 0.0,
        "accepted_accuracy": round(float(correct[accepted].mean()), 5) if accepted.any() else None,
    }


def calibrate(
    val_probabilities: np.ndarray,
    val_labels: np.ndarray,
    test_probabilities: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
    target_accuracy: float = TARGET_ACCURACY,
    views: Sequence[str] = ("identity",),
    view_gate: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit on validation, report on test: (the metadata record, calibrated test metrics for the report).

    ``views`` names the test-time views the probabilities were averaged over and ``view_gate`` the
    first-view confidence that skipped them (``inference.predict_views``); the record keeps both,
    because the temperature and threshold hold only for probabilities made the same way.
    """
    temperature = fit_temperature(val_probabilities, val_labels)
    val_calibrated = apply_temperature(val_probabilities, temperature)
    test_calibrated = apply_temperature(test_probabilities, temperature)
    chosen = choose_threshold(val_calibrated, val_labels, target_accuracy)
    test_before = classification_metrics(test_labels, test_probabilities, classes)
    test_after = classification_metrics(test_labels, test_calibrated, classes)
    record = {
        "method": "temperature scaling fitted on the validation split (NLL); review threshold: the lowest whose "
        f"accepted validation cells' Clopper-Pearson {1 - DELTA:.0%} upper error bound (per threshold) is "
        "under 1 - target_accuracy",
        "views": list(views),
        "view_gate": view_gate,
        "temperature": temperature,
        "review_threshold": round(chosen["threshold"], 6),
        "target_accuracy": target_accuracy,
        "val": {
            "nll_before": round(negative_log_likelihood(val_probabilities, val_labels), 5),
            "nll_after": round(negative_log_likelihood(val_calibrated, val_labels), 5),
            **at_threshold(val_calibrated, val_labels, chosen["threshold"]),
        },
        "test": {
            "ece_before": round(test_before["ece"], 5),
            "ece_after": round(test_after["ece"], 5),
            **at_threshold(test_calibrated, test_labels, chosen["threshold"]),
        },
    }
    curve = coverage_curve(test_calibrated, test_labels)
    return record, {"before": test_before, "after": test_after, "coverage_curve": curve}
