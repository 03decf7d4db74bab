"""Out-of-distribution score: how unlike the training images a cell is, from the model's own features.

The softmax confidence cannot see a change of laboratory, stain or camera: a model trained on two
sources is as sure of a cell from a third, or of random noise, as of its own test images (OpenMIBOOD
2025: maximum-softmax AUROC about 0.53 for scanner and stain shifts). Distances in feature space do
better. Here: the features are the input of the model's last (softmax) layer; each class gets its
mean on the clean training images and all share one covariance (shrunk towards its diagonal so it
inverts); a cell's score is its squared Mahalanobis distance to the nearest class mean (Lee et al.
2018). The threshold lets OOD_KEEP of the in-source validation cells through; a cell above it goes
to review as "unlike the training images". The statistics live in the model directory (ood.npz),
their digest in the calibration record, so they are part of the model version.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

OOD_FILE = "ood.npz"
OOD_KEEP = 0.99  # share of in-source validation cells the threshold lets through
SHRINKAGE = 0.1  # covariance = (1 - s) * sample covariance + s * its diagonal
FALLBACK_REVIEW_THRESHOLD = 0.80  # for a model without calibration
UNFAMILIAR_REASON = "unlike the training images"
LOW_CONFIDENCE_REASON = "low confidence"


def feature_model(model: "keras.Model") -> "keras.Model":
    """A model with two outputs: the features the last layer sees, and the probabilities."""
    import keras

    last = model.layers[-1]
    return keras.Model(model.inputs, [last.input, model.outputs[0]])


@dataclass(frozen=True)
class OodScorer:
    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features): inverse of the shared covariance
    threshold: float

    @cached_property
    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S, S m per class, m'S m per class), S the symmetric part of the precision (the form sees only that)."""
        symmetric = (self.precision + self.precision.T) / 2
        projected = self.means @ symmetric  # (classes, features)
        return symmetric, projected, np.einsum("cf,cf->c", projected, self.means)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to its nearest class mean, (n,)."""
        # (x - m)' S (x - m) = x'Sx - 2 m'Sx + m'Sm: one (n, f) x (f, f) product instead of one per class,
        # and the terms without x computed once per scorer.
        features = np.asarray(features, np.float64)
        symmetric, projected, offsets = self._quadratic_form
        distances = np.einsum("nf,nf->n", features @ symmetric, features)[:, None] - 2 * features @ projected.T + offsets
        return distances.min(axis=1)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            means=self.means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            threshold=np.array(self.threshold),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> "OodScorer":
        with np.load(path, allow_pickle=False) as data:
            return cls(
                means=data["means"].astype(np.float64),
                precision=data["precision"].astype(np.float64),
                threshold=float(data["threshold"]),
            )


def fit_scorer(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, n_classes: int) -> OodScorer:
    """Class means and shared, shrunk covariance on the training features; threshold from validation."""
    features = np.asarray(train_features, np.float64)
    means = np.stack(
        [features[train_labels == k].mean(axis=0) if (train_labels == k).any() else features.mean(axis=0) for k in range(n_classes)]
    )
    centred = features - means[train_labels]
    covariance = centred.T @ centred / max(len(features) - n_classes, 1)
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance))
    covariance += 1e-6 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    scorer = OodScorer(means=means, precision=np.linalg.inv(covariance), threshold=np.inf)
    val_scores = scorer.score(val_features)
    # the smallest score at or above which at most 1 - OOD_KEEP of validation cells lie
    threshold = float(np.quantile(val_scores, OOD_KEEP, method="higher")) if len(val_scores) else float("inf")
    return OodScorer(means=means, precision=scorer.precision, threshold=threshold)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float | None:
    """P(score of an out-of-distribution cell > score of an in-source cell), ties half: the Mann-Whitney AUROC."""
    if len(in_scores) == 0 or len(out_scores) == 0:
        return None
    combined = np.concatenate([in_scores, out_scores])
    order = combined.argsort(kind="mergesort")
    ranks = np.empty(len(combined))
    ranks[order] = np.arange(1, len(combined) + 1)
    for value in np.unique(combined):  # average ranks of ties
        tied = combined == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    out_ranks = ranks[len(in_scores) :].sum()
    n_in, n_out = len(in_scores), len(out_scores)
    return round(float((out_ranks - n_out * (n_out + 1) / 2) / (n_in * n_out)), 4)


def write_scorer(directory: Path, scorer: OodScorer) -> dict[str, Any]:
    """Write OOD_FILE; returns the record for the calibration: method, threshold and the file's digest."""
    data = scorer.to_bytes()
    (directory / OOD_FILE).write_bytes(data)
    return {
        "method": "squared Mahalanobis distance of the last layer's input features to the nearest class mean "
        f"(clean training images, shared covariance shrunk {SHRINKAGE} towards its diagonal)",
        "threshold": round(scorer.threshold, 4),
        "keep": OOD_KEEP,
        "file": OOD_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def load_scorer(directory: Path, record: dict[str, Any] | None) -> OodScorer | None:
    """The model directory's scorer, checked against the digest in its calibration record (None without one)."""
    if not record:
        return None
    path = Path(directory) / record["file"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
        from bloodcell_core.ml.artifacts import ArtifactError

        raise ArtifactError(f"{path} is missing or does not match the sha256 in the calibration record")
    return OodScorer.load(path)


def review_reasons(confidence: float, review_threshold: float, ood_score: float | None, ood_threshold: float | None) -> list[str]:
    """Why a classified cell goes to a technologist: the one rule the CLI, evaluation and the service share."""
    reasons = []
    if confidence < review_threshold:
        reasons.append(LOW_CONFIDENCE_REASON)
    if ood_score is not None and ood_threshold is not None and ood_score > ood_threshold:
        reasons.append(UNFAMILIAR_REASON)
    return reasons
