"""Inference runtimes: OpenVINO serves only when it matches Keras, and then gives every real cell the same
result as Keras (label, probabilities, out-of-distribution score, review decision), views and gate included."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import DEFAULT_MODEL, unseen_images

from bloodcell_core import Runtime
from bloodcell_core.ml.artifacts import load_artifact
from bloodcell_core.ml.inference import Classifier
from bloodcell_core.ml.ood import feature_model
from bloodcell_core.ml.runtimes import PARITY_TOLERANCE, _outputs, compile_model, compile_with
from bloodcell_core.plugin_manager import get_runtime, runtimes

pytestmark = pytest.mark.real_data
GATED_MODEL = DEFAULT_MODEL.parent / "pbc8"  # four test-time views behind a gate


def test_keras_and_openvino_are_runtime_plugins():
    assert {"keras", "openvino"} <= set(runtimes())
    assert get_runtime("openvino").available()  # a declared dependency on x86_64


@pytest.mark.parametrize("model_dir", [DEFAULT_MODEL, GATED_MODEL], ids=["default", "gated-views"])
def test_openvino_gives_every_real_cell_the_keras_result(model_dir):
    images = [(str(p), p.read_bytes()) for p in unseen_images(None, 96)]
    keras_served = Classifier.from_dir(model_dir)
    openvino_served = Classifier.from_dir(model_dir, runtime="openvino")
    assert (keras_served.runtime, openvino_served.runtime) == ("keras", "openvino")
    for a, b in zip(keras_served.classify(images), openvino_served.classify(images), strict=True):
        assert a.error is None and b.error is None
        assert a.label == b.label and a.needs_review == b.needs_review and a.review_reasons == b.review_reasons
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= PARITY_TOLERANCE
        if a.ood_score is not None:
            assert b.ood_score == pytest.approx(a.ood_score, rel=1e-3)


class Drifting:
    """A 'compiled' model whose probabilities are off by 0.01: what bf16 precision does."""

    def __init__(self, model, cache_dir=None):
        self.model, self.output_shape = model, model.output_shape

    def predict_on_batch(self, images):
        return np.asarray(self.model.predict_on_batch(images)) + 0.01


def test_a_runtime_that_drifts_is_refused_and_keras_serves(caplog):
    model = load_artifact(DEFAULT_MODEL).model
    drifting = Runtime("drifting", "test", available=lambda: True, compile=Drifting)
    compiled, error = compile_with(model, drifting)
    assert compiled is None and error is not None and "largest output difference 1.00e-02" in error
    broken = Runtime("broken", "test", available=lambda: True, compile=lambda m, c: 1 / 0)
    assert compile_with(model, broken)[1] == "ZeroDivisionError: division by zero"
    absent = Runtime("absent", "test", available=lambda: False, compile=Drifting)
    assert compile_with(model, absent) == (None, "not available here")
    with caplog.at_level(logging.ERROR):
        assert compile_model(model, "no-such-runtime") == (model, "keras")
    assert "unknown runtime 'no-such-runtime'" in caplog.text


def test_a_gpu_worker_never_serves_with_a_cpu_only_runtime(caplog):
    """``auto`` on a GPU worker leaves the model to Keras (the backend's GPU); naming a CPU-only runtime there
    is refused with a log line. On a CPU worker ``auto`` picks OpenVINO."""
    assert get_runtime("keras").devices == ("cpu", "gpu") and get_runtime("openvino").devices == ("cpu",)
    model = load_artifact(DEFAULT_MODEL).model
    assert compile_model(model, "auto", device="gpu") == (model, "keras")
    with caplog.at_level(logging.ERROR):
        assert compile_model(model, "openvino", device="gpu") == (model, "keras")
    assert "runtime openvino does not run on a gpu worker" in caplog.text
    assert compile_model(model, "auto", device="cpu")[1] == "openvino"


def test_the_converted_model_is_cached_hashed_and_rebuilt_when_it_changed(tmp_path):
    model = load_artifact(DEFAULT_MODEL).model
    openvino = get_runtime("openvino")
    first, error = compile_with(model, openvino, tmp_path / "cache")
    assert error is None and {p.name for p in (tmp_path / "cache").iterdir()} == {"model.xml", "model.bin", "sha256.json"}
    built = (tmp_path / "cache" / "model.bin").stat().st_mtime_ns
    assert compile_with(model, openvino, tmp_path / "cache")[1] is None
    assert (tmp_path / "cache" / "model.bin").stat().st_mtime_ns == built  # read back, not converted again
    with open(tmp_path / "cache" / "model.bin", "r+b") as handle:  # a damaged cache file
        handle.seek(1000)
        handle.write(b"\xff" * 64)
    again, error = compile_with(model, openvino, tmp_path / "cache")
    assert error is None and (tmp_path / "cache" / "model.bin").stat().st_mtime_ns != built  # rebuilt


def test_openvino_answers_a_batch_of_any_size_through_its_small_requests():
    """OpenVINO infers REQUEST_IMAGES at a time: a batch that is not a multiple of it loses and repeats nothing,
    for a one-output model and for the two-output graph served with a scorer (features, probabilities)."""
    from plugins.runtimes import REQUEST_IMAGES

    artifact = load_artifact(DEFAULT_MODEL)
    images = np.random.default_rng(1).random((2 * REQUEST_IMAGES + 5, *artifact.model.input_shape[1:]), dtype=np.float32)
    for model, n_outputs in ((artifact.model, 1), (feature_model(artifact.model), 2)):
        compiled, error = compile_with(model, get_runtime("openvino"))
        assert error is None
        for n in (1, REQUEST_IMAGES, REQUEST_IMAGES + 1, len(images)):
            expected, got = _outputs(model, images[:n]), _outputs(compiled, images[:n])
            assert len(got) == n_outputs and [g.shape for g in got] == [e.shape for e in expected]
            assert got[-1].shape == (n, len(artifact.classes))
            assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) <= PARITY_TOLERANCE
        assert [e.shape[0] for e in _outputs(compiled, images[:0])] == [0] * n_outputs
