"""Inference runtimes: Keras itself, and OpenVINO on CPU (its graph compiler, at float32 precision).

OpenVINO's CPU default precision is bf16 on CPUs that have it: fast, but it moves probabilities by up
to about 0.01, enough to move a cell across the review threshold. The precision hint is therefore
pinned to f32, which keeps it within about 1e-6 of Keras.
"""

from __future__ import annotations

import importlib.util
import tempfile
from typing import Any, Callable

import numpy as np

from bloodcell_core import Runtime, hookimpl


class OpenVinoModel:
    """A Keras model converted (through a TensorFlow SavedModel) and compiled by OpenVINO for the CPU."""

    def __init__(self, model: Any) -> None:
        import openvino

        with tempfile.TemporaryDirectory(prefix="bloodcell-openvino-") as saved:
            model.export(saved, format="tf_saved_model", verbose=False)
            converted = openvino.convert_model(saved)
        self._compiled = openvino.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._request = self._compiled.create_infer_request()
        self.output_shape = model.output_shape

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray | list[np.ndarray]:
        answer = self._request.infer(np.ascontiguousarray(images, np.float32))
        outputs = [np.array(answer[output]) for output in self._compiled.outputs]  # copies: the request reuses its buffers
        return outputs if isinstance(self.output_shape, list) else outputs[0]


def _keras_model(model: Any) -> Any:
    return model


@hookimpl
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    register(Runtime(name="keras", description="Keras predict_on_batch (the reference)", available=lambda: True, compile=_keras_model))
    register(
        Runtime(
            name="openvino",
            description="OpenVINO on CPU, float32 precision pinned (pip install openvino)",
            available=lambda: importlib.util.find_spec("openvino") is not None,
            compile=OpenVinoModel,
        )
    )
