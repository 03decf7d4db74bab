"""The out-of-distribution score and the one review rule: synthetic features, then the shipped model on images
that are not cells or come from another laboratory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import DEFAULT_MODEL, encode, run_cli

from bloodcell_core.ml.ood import (
    LOW_CONFIDENCE_REASON,
    UNFAMILIAR_REASON,
    OodScorer,
    auroc,
    fit_scorer,
    load_scorer,
    review_reasons,
)


def blobs(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + rng.normal(0, 1, (n, centres.shape[1])), labels


def test_the_threshold_lets_99_percent_of_validation_through_and_far_points_not():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (3, 8))
    train, labels = blobs(rng, 3000, centres)
    val, _ = blobs(rng, 1000, centres)
    scorer = fit_scorer(train, labels, val, 3)
    assert (scorer.score(val) <= scorer.threshold).mean() >= 0.99
    far = centres[0] + 12.0
    assert scorer.score(far[None])[0] > scorer.threshold


def test_the_score_is_the_squared_mahalanobis_distance_to_the_nearest_class_mean():
    """The expanded form the scorer computes equals the definition, also for a precision stored slightly
    asymmetric (float32 rounding of an inverse), whose quadratic form sees only its symmetric part."""
    rng = np.random.default_rng(2)
    means = rng.normal(0, 5, (4, 16))
    root = rng.normal(0, 1, (16, 16))
    precision = root @ root.T + np.eye(16) + rng.normal(0, 1e-3, (16, 16))
    scorer = OodScorer(means=means, precision=precision, threshold=1.0)
    features = np.concatenate([means + rng.normal(0, 0.1, means.shape), rng.normal(0, 20, (30, 16))])
    by_definition = np.array([min(float((x - m) @ precision @ (x - m)) for m in means) for x in features])
    assert np.allclose(scorer.score(features), by_definition, rtol=1e-9, atol=1e-9)


def test_auroc_matches_counting_pairs():
    rng = np.random.default_rng(1)
    inside, outside = rng.normal(0, 1, 50), rng.normal(1, 1, 40)
    pairs = np.mean([(o > i) + 0.5 * (o == i) for o in outside for i in inside])
    assert auroc(inside, outside) == pytest.approx(pairs, abs=1e-4)
    assert auroc(np.zeros(3), np.zeros(3)) == 0.5 and auroc(np.array([]), outside) is None


def test_review_reasons_is_the_one_rule():
    assert review_reasons(0.99, 0.9, 10.0, 20.0) == []
    assert review_reasons(0.5, 0.9, 10.0, 20.0) == [LOW_CONFIDENCE_REASON]
    assert review_reasons(0.99, 0.9, 30.0, 20.0) == [UNFAMILIAR_REASON]
    assert review_reasons(0.5, 0.9, 30.0, None) == [LOW_CONFIDENCE_REASON]  # a model without a scorer


def test_a_changed_scorer_file_is_refused(tmp_path):
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.ood import write_scorer

    record = write_scorer(tmp_path, OodScorer(np.zeros((2, 3)), np.eye(3), 5.0))
    assert load_scorer(tmp_path, record).threshold == 5.0
    (tmp_path / record["file"]).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match"):
        load_scorer(tmp_path, record)


@pytest.mark.slow
def test_the_shipped_model_sends_noise_to_review_as_unfamiliar(tmp_path):
    """The issue's case: a 360x363 PNG of uniform random RGB noise was a certain myeloblast. Now the image
    still gets a label, but never unreviewed: `bloodcell predict --json` says why."""
    rng = np.random.default_rng(0)
    for k in range(3):
        (tmp_path / f"noise{k}.png").write_bytes(encode(rng.integers(0, 256, (363, 360, 3), dtype=np.uint8)))
    result = run_cli("predict", str(DEFAULT_MODEL), *map(str, sorted(tmp_path.iterdir())), "--json")
    for entry in json.loads(result.stdout):
        assert entry["needs_review"] is True and UNFAMILIAR_REASON in entry["review_reasons"], entry
        assert entry["ood_score"] > json.loads((DEFAULT_MODEL / "metadata.json").read_text())["calibration"]["ood"]["threshold"]
