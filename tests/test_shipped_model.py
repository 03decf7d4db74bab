"""The committed models still meet their targets on their own held-out test splits."""

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
from conftest import DEFAULT_MODEL, KAGGLE5, PBC8

from bloodcell_core.dataset import read_image_file
from bloodcell_core.inference import Classifier
from bloodcell_core.metrics import classification_metrics

# model directory, its dataset, the accuracy and macro-F1 it keeps (the targets), whether it meets
# the abstention target (the pbc8 model does not yet: 94.0% of its test cells clear its review threshold,
# at accuracy 0.9948, where the target is 95% at 0.995; see the README)
SHIPPED = [(DEFAULT_MODEL, KAGGLE5, 0.99, True), (DEFAULT_MODEL.parent / "pbc8", PBC8, 0.97, False)]
SHIPPED = [entry for entry in SHIPPED if (entry[0] / "metadata.json").exists()]


@pytest.fixture(scope="module", params=SHIPPED, ids=[entry[0].name for entry in SHIPPED])
def shipped(request):
    model_dir, data_dir, floor, abstains_well = request.param
    return Classifier.from_dir(model_dir), data_dir, floor, abstains_well


def test_shipped_models_are_small_and_documented(shipped):
    classifier, _, floor, _ = shipped
    metadata = classifier.artifact.metadata
    model_file = classifier.artifact.directory / "model.keras"
    assert model_file.stat().st_size < 8 * 2**20  # a few MB: the weights and nothing else
    with zipfile.ZipFile(model_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        assert "optimizer" not in weights  # no optimiser state (Adam's would triple the file)
    assert metadata["dataset"]["fingerprint"] and metadata["calibration"]["temperature"] > 0
    assert metadata["metrics"]["test"]["accuracy"] >= floor and metadata["metrics"]["test"]["macro_f1"] >= floor


def test_shipped_models_meet_their_targets_on_their_test_split(shipped):
    """Re-scores the recorded test split through today's preprocessing, inference and calibration."""
    classifier, data_dir, floor, abstains_well = shipped
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
    # calibration and abstention: ECE <= 0.02; where the model meets the target, the cells over the review
    # threshold are >= 99.5% right and >= 95% of all cells; where it does not, it stays where it got to
    assert metrics["ece"] <= 0.02
    accepted = probabilities.max(axis=1) >= recorded["calibration"]["review_threshold"]
    accepted_accuracy = (probabilities.argmax(axis=1) == y)[accepted].mean()
    if abstains_well:
        assert accepted_accuracy >= 0.995 and accepted.mean() >= 0.95
    else:
        assert accepted_accuracy >= 0.994 and accepted.mean() >= 0.93
    assert json.loads((classifier.artifact.directory / "report" / "calibration.json").read_text())["temperature"] > 0
