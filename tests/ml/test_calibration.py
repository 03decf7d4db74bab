"""Temperature scaling and the review threshold on synthetic predictions with known answers."""

import numpy as np
import pytest

from bloodcell_core.ml.calibration import (
    apply_temperature,
    at_threshold,
    calibrate,
    choose_threshold,
    coverage_curve,
    error_upper_bound,
    fit_temperature,
)
from bloodcell_core.ml.metrics import expected_calibration_error

pytestmark = pytest.mark.real_data


def overconfident(n: int, true_temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits / T) while the model reports softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 5))
    truth = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), true_temperature)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in truth.astype(np.float64)])
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels


def test_temperature_is_recovered_and_lowers_calibration_error():
    probabilities, labels = overconfident(4000, 2.0, seed=0)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    assert (
        expected_calibration_error(labels, apply_temperature(probabilities, temperature))
        < expected_calibration_error(labels, probabilities) / 2
    )


def test_temperature_keeps_every_predicted_class():
    probabilities, _ = overconfident(500, 2.0, seed=1)
    assert (apply_temperature(probabilities, 3.7).argmax(1) == probabilities.argmax(1)).all()


def test_threshold_passes_the_binomial_test_with_the_most_coverage():
    # 1000 confident correct cells, 10 errors at low confidence, 5 errors hidden at high confidence
    confidence = np.r_[np.linspace(0.99, 0.999, 1000), np.linspace(0.4, 0.6, 10), np.full(5, 0.995)]
    labels = np.r_[np.zeros(1000, int), np.ones(15, int)]
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    chosen = choose_threshold(probabilities, labels, target_accuracy=0.99)
    assert 0.6 < chosen["threshold"] <= 0.99 and chosen["coverage"] == pytest.approx(1005 / 1015)
    assert error_upper_bound(5, 1005) <= 0.01 < error_upper_bound(15, 1015)
    strict = choose_threshold(probabilities, labels, target_accuracy=0.999)
    assert strict["coverage"] < chosen["coverage"]
    assert at_threshold(probabilities, labels, 1.01) == {"coverage": 0.0, "accepted_accuracy": None}


def test_coverage_curve_is_monotone_and_ends_at_everything():
    probabilities, labels = overconfident(300, 1.5, seed=2)
    curve = coverage_curve(probabilities, labels)
    assert [p["coverage"] for p in curve] == sorted(p["coverage"] for p in curve)
    assert curve[-1]["coverage"] == 1.0
    assert curve[-1]["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).mean())


def test_calibration_record_is_fitted_on_validation_and_reported_on_test():
    val, val_labels = overconfident(2000, 2.0, seed=3)
    test, test_labels = overconfident(2000, 2.0, seed=4)
    record, calibrated = calibrate(val, val_labels, test, test_labels, [f"c{k}" for k in range(5)], target_accuracy=0.95)
    assert record["test"]["ece_after"] < record["test"]["ece_before"]
    assert record["review_threshold"] == pytest.approx(
        choose_threshold(apply_temperature(val, record["temperature"]), val_labels, 0.95)["threshold"], abs=1e-6
    )
    assert calibrated["after"]["accuracy"] == calibrated["before"]["accuracy"]


def test_a_model_recalibrated_after_registration_serves_as_registered(tiny_model, tmp_path):
    """The threshold lives in the database row, the temperature in the files: they must belong together, so
    a directory changed in place is not used; the version's own files, kept in the database, serve."""
    import shutil

    from servers import settings_for

    from bloodcell_core.ml.artifacts import update_metadata, version_id
    from bloodcell_core.service import db
    from bloodcell_core.service.states import ModelStatus
    from bloodcell_core.service.versions import load_classifier, register_model_version

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    settings = settings_for({"BLOODCELL_DATABASE_URL": url, "BLOODCELL_MODELS_DIR": str(tmp_path / "models")})
    db.upgrade(url)
    with db.session_scope(url) as session:
        row = register_model_version(session, artifact_dir=model_dir, status=ModelStatus.CANDIDATE, actor="test")
        session.expunge(row)
    registered = load_classifier(settings, row).artifact
    assert registered.directory == model_dir and registered.temperature > 0
    calibration = dict(row.metrics["calibration"], temperature=1.5)
    update_metadata(model_dir, calibration=calibration)
    served = load_classifier(settings, row).artifact
    assert served.directory == tmp_path / "models" / "cache" / row.version
    assert served.temperature == registered.temperature != 1.5 and version_id(served.directory) == row.version
    with db.session_scope(url) as session:
        again = register_model_version(session, artifact_dir=model_dir, status=ModelStatus.CANDIDATE, actor="test")
        assert again.version == version_id(model_dir) != row.version
