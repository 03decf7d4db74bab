"""Morphology-free reference classifiers: how much of the accuracy needs no look at the cell?"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bloodcell_core.metrics import classification_metrics

HISTOGRAM_BINS = 16


def colour_features(images: np.ndarray) -> np.ndarray:
    """Per image: RGB channel means, standard deviations and 16-bin histograms (54 numbers, no shape)."""
    flat = images.reshape(len(images), -1, 3).astype(np.float32)
    histograms = [
        np.stack([np.histogram(image[:, c], bins=HISTOGRAM_BINS, range=(0, 256))[0] for c in range(3)]).ravel()
        for image in flat
    ]
    pixels = flat.shape[1]
    return np.hstack([flat.mean(axis=1), flat.std(axis=1), np.array(histograms, dtype=np.float32) / pixels])


def colour_only_baseline(
    train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
    classes: list[str],
) -> dict[str, Any]:
    """Logistic regression on whole-image colour statistics, trained and tested on the model's split."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    classifier.fit(colour_features(train_images), train_labels)
    probabilities = np.zeros((len(test_labels), len(classes)))
    probabilities[:, classifier.classes_] = classifier.predict_proba(colour_features(test_images))
    metrics = classification_metrics(test_labels, probabilities, classes)
    return {
        "features": "RGB means, standard deviations and 16-bin histograms of the preprocessed image",
        "classifier": "logistic regression",
        "n": metrics["n"],
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
    }
