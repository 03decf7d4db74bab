import numpy as np
import pytest
from sklearn.metrics import f1_score

from bloodcell_core.ml.metrics import classification_metrics, expected_calibration_error


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    probabilities = rng.dirichlet(np.ones(4), 500)
    metrics = classification_metrics(y, probabilities, ["a", "b", "c", "d"])
    predicted = probabilities.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx((predicted == y).mean())
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
    assert np.array(metrics["confusion_matrix"]).sum() == 500 and metrics["n"] == 500


def test_ece_of_known_cases():
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), confident_right) == 0.0
    assert expected_calibration_error(np.array([1, 0]), confident_right) == pytest.approx(1.0)
    # 0.8 confident, right 3 times out of 4: gap 0.05
    p = np.array([[0.8, 0.2]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), p) == pytest.approx(0.05)
