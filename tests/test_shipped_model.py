"""The committed default model still meets its targets on its own held-out test split."""

import json

import numpy as np
import pytest
from conftest import DEFAULT_MODEL, KAGGLE5

from bloodcell_core.dataset import read_image_file
from bloodcell_core.inference import Classifier
from bloodcell_core.metrics import classification_metrics


@pytest.fixture(scope="module")
def classifier():
    return Classifier.from_dir(DEFAULT_MODEL)


def test_default_model_is_small_and_documented():
    metadata = json.loads((DEFAULT_MODEL / "metadata.json").read_text())
    assert (DEFAULT_MODEL / "model.keras").stat().st_size < 5 * 2**20
    assert metadata["dataset"]["fingerprint"]
    assert metadata["metrics"]["test"]["accuracy"] >= 0.98 and metadata["metrics"]["test"]["macro_f1"] >= 0.98


def test_default_model_meets_targets_on_its_test_split(classifier):
    """Re-scores the recorded test split through today's preprocessing and inference code."""
    test = classifier.artifact.split().parts["test"]
    images = [(item.paths[0], read_image_file(KAGGLE5 / item.paths[0])) for item in test]
    predictions = classifier.classify(images)
    assert all(p.error is None for p in predictions)
    classes = classifier.classes
    y = np.array([classes.index(item.label) for item in test])
    probabilities = np.array([[p.probabilities[c] for c in classes] for p in predictions])
    metrics = classification_metrics(y, probabilities, classes)
    assert metrics["accuracy"] >= 0.98 and metrics["macro_f1"] >= 0.98
    recorded = json.loads((DEFAULT_MODEL / "metadata.json").read_text())["metrics"]["test"]
    assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.002)
