"""The committed models still meet their targets on their own held-out test splits."""

import json

import numpy as np
import pytest
from conftest import DEFAULT_MODEL, KAGGLE5, PBC8

from bloodcell_core.dataset import read_image_file
from bloodcell_core.inference import Classifier
from bloodcell_core.metrics import classification_metrics

# model directory, its dataset, the accuracy and macro-F1 it must keep
SHIPPED = [(DEFAULT_MODEL, KAGGLE5, 0.98), (DEFAULT_MODEL.parent / "pbc8", PBC8, 0.97)]
SHIPPED = [entry for entry in SHIPPED if (entry[0] / "metadata.json").exists()]


@pytest.fixture(scope="module", params=SHIPPED, ids=[entry[0].name for entry in SHIPPED])
def shipped(request):
    model_dir, data_dir, floor = request.param
    return Classifier.from_dir(model_dir), data_dir, floor


def test_shipped_models_are_small_and_documented(shipped):
    classifier, _, floor = shipped
    metadata = classifier.artifact.metadata
    assert (classifier.artifact.directory / "model.keras").stat().st_size < 5 * 2**20
    assert metadata["dataset"]["fingerprint"] and metadata["calibration"]["temperature"] > 0
    assert metadata["metrics"]["test"]["accuracy"] >= floor and metadata["metrics"]["test"]["macro_f1"] >= floor


def test_shipped_models_meet_their_targets_on_their_test_split(shipped):
    """Re-scores the recorded test split through today's preprocessing, inference and calibration."""
    classifier, data_dir, floor = shipped
    test = classifier.artifact.split().parts["test"]
    images = [(item.paths[0], read_image_file(data_dir / item.paths[0])) for item in test]
    predictions = classifier.classify(images)
    assert all(p.error is None for p in predictions)
    classes = classifier.classes
    y = np.array([classes.index(item.label) for item in test])
    probabilities = np.array([[p.probabilities[c] for c in classes] for p in predictions])
    metrics = classification_metrics(y, probabilities, classes)
    assert metrics["accuracy"] >= floor and metrics["macro_f1"] >= floor
    recorded = classifier.artifact.metadata
    assert metrics["accuracy"] == pytest.approx(recorded["metrics"]["test"]["accuracy"], abs=0.002)
    # calibration and abstention: ECE <= 0.02; cells over the review threshold >= 95% of all, >= 99.5% right
    assert metrics["ece"] <= 0.02
    accepted = probabilities.max(axis=1) >= recorded["calibration"]["review_threshold"]
    assert accepted.mean() >= 0.95 and (probabilities.argmax(axis=1) == y)[accepted].mean() >= 0.995
    assert json.loads((classifier.artifact.directory / "report" / "calibration.json").read_text())["temperature"] > 0
