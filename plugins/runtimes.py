"""Inference runtimes: Keras itself, and OpenVINO on CPU (its graph compiler, at float32 precision).

OpenVINO's CPU default precision is bf16 on CPUs that have it: fast, but it moves probabilities by up
to about 0.01, enough to move a cell across the review threshold. The precision hint is therefore
pinned to f32, which keeps it within about 1e-6 of Keras.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bloodcell_core import Runtime, hookimpl

# Images per inference request. Measured here (models/default, 2 cores, several runs each): requests of 8
# were about 20% faster than requests of 64 (medians), probably because 64 images' activations outgrow the
# CPU caches, and the process held about 80 MiB less (docs/benchmarks.md, "Runtimes").
REQUEST_IMAGES = 8


class OpenVinoModel:
    """A Keras model converted (through a TensorFlow SavedModel) and compiled by OpenVINO for the CPU.

    With a ``cache_dir``, the converted model (OpenVINO IR: model.xml and model.bin) is kept there with
    the sha256 of each file, and read back instead of converted again when both still match.
    """

    def __init__(self, model: Any, cache_dir: Path | None = None) -> None:
        import openvino

        core = openvino.Core()
        converted = _read_cached(core, cache_dir) if cache_dir is not None else None
        if converted is None:
            with tempfile.TemporaryDirectory(prefix="bloodcell-openvino-") as saved:
                model.export(saved, format="tf_saved_model", verbose=False)
                converted = openvino.convert_model(saved)
            if cache_dir is not None:
                _write_cache(converted, cache_dir)
        self._compiled = core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._request = self._compiled.create_infer_request()
        self.output_shape = model.output_shape

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """The model's outputs for IMAGES, inferred REQUEST_IMAGES at a time."""
        parts: list[list[np.ndarray]] = [[] for _ in self._compiled.outputs]
        for start in range(0, max(len(images), 1), REQUEST_IMAGES):  # an empty batch: one request, empty outputs
            answer = self._request.infer(np.ascontiguousarray(images[start : start + REQUEST_IMAGES], np.float32))
            for part, output in zip(parts, self._compiled.outputs):
                part.append(np.array(answer[output]))  # a copy: the request reuses its buffers
        outputs = [np.concatenate(part) for part in parts]
        return outputs if isinstance(self.output_shape, list) else outputs[0]


IR_FILES = ("model.xml", "model.bin")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_cached(core: Any, cache_dir: Path) -> Any:
    """The cached IR when every file matches the sha256 recorded with it, else None (it is rebuilt)."""
    try:
        recorded = json.loads((cache_dir / "sha256.json").read_text())
        if all(_digest(cache_dir / name) == recorded.get(name) for name in IR_FILES):
            return core.read_model(str(cache_dir / "model.xml"))
    except (OSError, ValueError):
        pass
    return None


def _write_cache(converted: Any, cache_dir: Path) -> None:
    import openvino

    partial = cache_dir.parent / f".{cache_dir.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    openvino.save_model(converted, str(partial / "model.xml"), compress_to_fp16=False)  # f32 weights, as trained
    (partial / "sha256.json").write_text(json.dumps({name: _digest(partial / name) for name in IR_FILES}))
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.replace(partial, cache_dir)


def _keras_model(model: Any, cache_dir: Path | None = None) -> Any:
    return model


@hookimpl
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    register(
        Runtime(
            name="keras",
            description="Keras predict_on_batch (the reference; on a GPU worker, the backend's GPU)",
            available=lambda: True,
            compile=_keras_model,
            devices=("cpu", "gpu"),
        )
    )
    register(
        Runtime(
            name="openvino",
            description="OpenVINO on CPU, float32 precision pinned (pip install openvino)",
            available=lambda: importlib.util.find_spec("openvino") is not None,
            compile=OpenVinoModel,
        )
    )
