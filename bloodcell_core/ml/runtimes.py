"""Choosing an inference runtime for a model, and accepting it only after a parity check against Keras.

A runtime plugin (``register_runtimes``) compiles the Keras model into something faster. The compiled
model is what serves only when, on a fixed batch, its outputs stay within PARITY_TOLERANCE of Keras's
and it gives every image the same label; otherwise the reason is logged and Keras serves. Calibration,
test-time views, the view gate and the out-of-distribution score are computed from its outputs exactly
as from Keras's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bloodcell_core.plugin_manager import UnknownPlugin, get_runtime, runtimes
from bloodcell_core.plugin_types import Runtime

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # largest difference of any output value on the parity batch
PARITY_IMAGES = 32
# Keras computes its reference outputs this many images at a time: in a worker that then serves with the
# candidate, Keras never runs again, and the memory of a whole batch's activations would stay with the process
# (about 20 MiB less measured here for compact_cnn). The candidate gets the whole batch, as the Classifier
# hands it batches when it serves (a runtime may split them itself: OpenVINO's REQUEST_IMAGES).
REFERENCE_CHUNK = 8


def parity_batch(input_shape: tuple[int, ...]) -> np.ndarray:
    """A fixed batch: the same images for every check (uniform noise in [0, 1], seed 0)."""
    return np.random.default_rng(0).random((PARITY_IMAGES, *input_shape[1:]), dtype=np.float32)


def _outputs(model: Any, images: np.ndarray) -> list[np.ndarray]:
    answer = model.predict_on_batch(images)
    return [np.asarray(value) for value in (answer if isinstance(answer, list) else [answer])]


def _reference_outputs(model: Any, images: np.ndarray) -> list[np.ndarray]:
    chunks = [_outputs(model, images[start : start + REFERENCE_CHUNK]) for start in range(0, len(images), REFERENCE_CHUNK)]
    return [np.concatenate(parts) for parts in zip(*chunks)]


def parity_error(reference: Any, candidate: Any) -> str | None:
    """Why CANDIDATE may not stand in for the Keras model REFERENCE (None: it may)."""
    images = parity_batch(tuple(reference.input_shape))
    expected, got = _reference_outputs(reference, images), _outputs(candidate, images)
    if len(expected) != len(got) or any(a.shape != b.shape for a, b in zip(expected, got)):
        return f"outputs {[a.shape for a in got]} instead of {[a.shape for a in expected]}"
    difference = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    if not difference <= PARITY_TOLERANCE:  # NaN fails too
        return f"largest output difference {difference:.2e} > {PARITY_TOLERANCE:.0e}"
    if not (expected[-1].argmax(axis=1) == got[-1].argmax(axis=1)).all():
        return "another label for some parity images"
    return None


def compile_with(model: Any, runtime: Runtime, cache_dir: Path | None = None) -> tuple[Any, str | None]:
    """(RUNTIME's compiled MODEL, None), or (None, why it may not serve). CACHE_DIR: where the runtime may
    keep what it derives from this model (checked against its own hashes, and always parity-checked)."""
    if not runtime.available():
        return None, "not available here"
    try:
        compiled = runtime.compile(model, cache_dir)
        error = parity_error(model, compiled)
    except Exception as exc:  # a runtime that cannot take this model: Keras serves
        return None, f"{type(exc).__name__}: {exc}"
    return (compiled, None) if error is None else (None, error)


def compile_model(model: Any, choice: str, cache_dir: Path | None = None, device: str = "cpu") -> tuple[Any, str]:
    """(the model to serve with, the runtime's name) for CHOICE: ``keras``, a runtime's name, or ``auto``
    (each available runtime but Keras that runs on DEVICE, in name order, the first that passes the parity
    check). Each runtime caches under CACHE_DIR/<its name> when a CACHE_DIR is given."""
    if choice == "keras":
        return model, "keras"
    try:
        candidates = [get_runtime(choice)] if choice != "auto" else [r for name, r in sorted(runtimes().items()) if name != "keras"]
    except UnknownPlugin as exc:
        log.error("%s (BLOODCELL_RUNTIME); serving with keras", exc)
        return model, "keras"
    if choice != "auto" and device not in candidates[0].devices:
        runs_on = ", ".join(candidates[0].devices)
        log.error("runtime %s does not run on a %s worker (it runs on %s); serving with keras", choice, device, runs_on)
        return model, "keras"
    for runtime in (r for r in candidates if device in r.devices):
        compiled, error = compile_with(model, runtime, cache_dir / runtime.name if cache_dir is not None else None)
        if compiled is not None:
            log.info("serving with runtime %s (parity within %.0e of keras)", runtime.name, PARITY_TOLERANCE)
            return compiled, runtime.name
        log.warning("runtime %s refused for this model, serving with keras: %s", runtime.name, error)
    return model, "keras"
