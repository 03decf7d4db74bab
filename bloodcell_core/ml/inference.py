"""Classify images with a model directory: the path the CLI, evaluation and the workers share."""

from __future__ import annotations

import logging
import numbers
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from bloodcell_core.ml.artifacts import ArtifactError, ModelArtifact, ModelMetadata, load_artifact
from bloodcell_core.ml.calibration import EPSILON, apply_temperature, softmax
from bloodcell_core.ml.image_header import image_dimensions
from bloodcell_core.ml.ood import FALLBACK_REVIEW_THRESHOLD, feature_model, load_scorer, review_reasons
from bloodcell_core.ml.preprocessing import ImageDecodeError, Preprocessor, decode_image, scale
from bloodcell_core.ml.runtimes import compile_model

BATCH_SIZE = 64
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import keras


def padded_size(n: int, batch_size: int = BATCH_SIZE) -> int:
    """The batch shape a chunk of n images runs with: the next power of two, at most batch_size."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def predict_in_batches(model: "keras.Model", images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Inference-mode probabilities (n, classes) for scaled float images, through ``predict_on_batch``.

    ``predict_on_batch`` runs the model's compiled predict function directly, without the per-call
    setup of ``model.predict`` (data adapter, callbacks, progress bar). On JAX, which compiles one
    XLA program per input shape, each chunk is padded to a power-of-two batch: at most
    log2(batch_size) + 1 programs instead of one per sample size. TensorFlow relaxes the batch
    dimension after one retrace and PyTorch runs eagerly, so they get no padding (it would cost work).
    """
    return _outputs_in_batches(model, images, batch_size)[0]


def features_and_probabilities(
    two_outputs: "keras.Model", images: np.ndarray, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """(features, probabilities) from ``ood.feature_model``'s two outputs, in batches like ``predict_in_batches``."""
    features, probabilities = _outputs_in_batches(two_outputs, images, batch_size)
    return features, probabilities


def _outputs_in_batches(model: "keras.Model", images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Each of the model's outputs for every image, run in chunks (padded on JAX: see ``predict_in_batches``)."""
    import keras

    pad = keras.backend.backend() == "jax"
    shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    outputs: list[list[np.ndarray]] = [[] for _ in shapes]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padding = padded_size(len(chunk), batch_size) - len(chunk) if pad else 0
        if padding:
            chunk = np.concatenate([chunk, np.zeros((padding, *chunk.shape[1:]), chunk.dtype)])
        answer = model.predict_on_batch(chunk)
        for k, value in enumerate(answer if len(shapes) > 1 else [answer]):
            outputs[k].append(np.asarray(value)[: len(chunk) - padding])
    return [np.concatenate(parts) if parts else np.zeros((0, shape[-1]), np.float32) for parts, shape in zip(outputs, shapes)]


# A white cell in a smear has no up, down, left or right, so the models train on flipped and turned
# cells. Test-time augmentation asks the model about a few such views of each image and averages
# them, which smooths out the mistakes one orientation happens to make (pbc8 resnet_small: test
# accuracy 0.9695 -> 0.9754 with the four views below), at one model pass per view.
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda images: images,
    "flip_horizontal": lambda images: images[:, :, ::-1],
    "flip_vertical": lambda images: images[:, ::-1],
    "rotate_180": lambda images: images[:, ::-1, ::-1],
}


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """The views in VIEWS order without repeats (one spelling per set, so one version id), or ValueError."""
    if isinstance(views, str):
        raise TypeError("views is a sequence of view names, not one string")
    names = [view.strip() for view in views]
    unknown = [view for view in names if view not in VIEWS]
    if unknown:
        raise ValueError(f"unknown test-time views {unknown}; choose from {', '.join(VIEWS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"test-time views must name at least one view, each once; got {names}")
    return tuple(view for view in VIEWS if view in names)


def check_view_gate(gate: Any, views: Sequence[str]) -> float | None:
    """The gate in (0, 1], or None (every view for every cell); None with one view, where it means nothing."""
    if gate is None:
        return None
    if isinstance(gate, bool) or not isinstance(gate, numbers.Real) or not 0 < float(gate) <= 1:
        raise ValueError(f"the view gate is a confidence in (0, 1], or none; got {gate!r}")
    return None if len(views) == 1 else float(gate)


def served_views(metadata: ModelMetadata, directory: Path | str) -> tuple[tuple[str, ...], float | None]:
    """A model directory's test-time views in their canonical order and its view gate, or ArtifactError:
    refused when registered and when loaded."""
    try:
        views = check_views(metadata.views)
        return views, check_view_gate(metadata.view_gate, views)
    except ValueError as exc:
        raise ArtifactError(f"{directory}: {exc}") from None


def view_probabilities(model: "keras.Model", images: np.ndarray, views: Sequence[str], batch_size: int) -> np.ndarray:
    """The model's probabilities for each view of each image, (views, n, classes)."""
    stacked = np.concatenate([VIEWS[view](images) for view in views])  # a copy: contiguous
    return predict_in_batches(model, stacked, batch_size).reshape(len(views), len(images), -1)


def average_over_views(probabilities: np.ndarray) -> np.ndarray:
    """(views, n, classes) -> (n, classes): the normalised geometric mean (mean log-probability), the
    same rule as an ensemble of equally good models."""
    return softmax(np.log(np.clip(probabilities, EPSILON, 1.0)).mean(axis=0))


def predict_views(
    model: "keras.Model",
    images: np.ndarray,
    views: Sequence[str] = ("identity",),
    batch_size: int = BATCH_SIZE,
    gate: float | None = None,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities (n, classes) averaged over test-time VIEWS of each image (``average_over_views``).

    With a ``gate``, the model first sees only the first view, and the other views are asked for the
    cells whose first-view confidence is under the gate: a cell it is sure of at one look keeps that
    answer. The extra views pay off on the unsure cells, so the gate keeps their accuracy at a
    fraction of the passes. Views of batch_size images run together, so memory stays at one chunk.
    ``first``: the first view's probabilities when the caller has them already (from the pass that
    also gave the features for the out-of-distribution score).
    """
    if tuple(views) == ("identity",):
        return first if first is not None else predict_in_batches(model, images, batch_size)
    gate = None if len(views) == 1 else gate
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        known = first is not None and views[0] == "identity"  # VIEWS order: identity is first when present
        if gate is None and not known:
            outputs.append(average_over_views(view_probabilities(model, chunk, views, batch_size)))
            continue
        if known and first is not None:
            chunk_first = np.array(first[start : start + batch_size])
        else:
            chunk_first = view_probabilities(model, chunk, views[:1], batch_size)[0]
        if gate is None:
            others = view_probabilities(model, chunk, views[1:], batch_size)
            outputs.append(average_over_views(np.concatenate([chunk_first[None], others])))
            continue
        unsure = chunk_first.max(axis=1) < gate
        if unsure.any():
            others = view_probabilities(model, chunk[unsure], views[1:], batch_size)
            chunk_first[unsure] = average_over_views(np.concatenate([chunk_first[unsure][None], others]))
        outputs.append(chunk_first)
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)


@dataclass
class CellPrediction:
    """The result for one image: a class with its confidence, or an error for that image alone."""

    name: str
    label: str | None = None
    confidence: float | None = None
    top3: list[tuple[str, float]] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    ood_score: float | None = None  # distance from the training images (ood.py); None for a model without one
    review_reasons: list[str] = field(default_factory=list)  # empty: accepted at the model's own thresholds
    preprocessing_notes: list[str] = field(default_factory=list)  # a step's fallback on this image ("scale not measured")
    preprocess_ms: float = 0.0  # this image's decode + preprocessing time
    predict_ms: float = 0.0  # its share of the batch's model time

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reasons)

    def to_json(self) -> dict:
        if self.error is not None:
            return {"name": self.name, "error": self.error}
        return {
            "name": self.name,
            "label": self.label,
            "confidence": self.confidence,
            "top3": [{"label": label, "probability": p} for label, p in self.top3],
            "probabilities": self.probabilities,
            "ood_score": self.ood_score,
            "needs_review": self.needs_review,
            "review_reasons": self.review_reasons,
            "preprocessing_notes": self.preprocessing_notes,
        }


MIN_SIDE = 16  # pixels: a white cell in a smear image spans many times this


def too_small_error(data: bytes) -> str | None:
    size = image_dimensions(data)
    if size is not None and min(size) < MIN_SIDE:
        return f"image of {size[0]} x {size[1]} pixels is too small to show a cell (needs {MIN_SIDE} x {MIN_SIDE})"
    return None


# Mean spread between an image's largest and smallest channel, 0..255. Every stained smear image of
# kaggle5 and pbc8 has 15 or more (one in five checked); a grayscale image has 0.
MIN_MEAN_CHROMA = 4.0


def colourless_error(image: np.ndarray) -> str | None:
    """Why a colourless image is not classified, or None. The models only ever saw stained colour
    smears: they label a grayscale copy of any cell with high confidence, so it is refused, not guessed."""
    red, green, blue = cv2.split(image)  # OpenCV's per-pixel max and min: numpy's over a length-3 axis is ~30x slower
    chroma = float(cv2.mean(cv2.subtract(cv2.max(cv2.max(red, green), blue), cv2.min(cv2.min(red, green), blue)))[0])
    if chroma < MIN_MEAN_CHROMA:
        return (
            f"colourless image (mean channel spread {chroma:.1f} of 255, needs {MIN_MEAN_CHROMA:.0f}): "
            "bloodcell classifies stained colour smears, not grayscale images"
        )
    return None


class ProbabilitiesOutput:
    """The probabilities of a ``feature_model`` (features, probabilities), as a one-output model for the views."""

    def __init__(self, two_outputs: Any) -> None:
        self._two_outputs = two_outputs
        self.output_shape = two_outputs.output_shape[1]

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self._two_outputs.predict_on_batch(images)[1]


class Classifier:
    """A loaded model plus its preprocessing. Thread pool decodes; the model predicts in batches."""

    def __init__(
        self, artifact: ModelArtifact, threads: int = 2, runtime: str = "keras", cache_root: Path | None = None, device: str = "cpu"
    ) -> None:
        """``runtime``: ``keras``, a runtime plugin's name, or ``auto`` (``ml.runtimes.compile_model``), for a
        worker of ``device`` (cpu or gpu); ``cache_root``: where runtimes keep what they derive from models,
        per weights sha256."""
        self.views, self.view_gate = served_views(artifact.metadata, artifact.directory)
        self.artifact = artifact
        self.classes = artifact.classes
        self.preprocessor = Preprocessor(artifact.preprocessing)
        calibration = artifact.metadata.calibration or {}
        self.review_threshold = float(calibration.get("review_threshold", FALLBACK_REVIEW_THRESHOLD))
        self.ood = load_scorer(artifact.directory, calibration.get("ood"))
        # With a scorer, one two-output model serves (features and probabilities): one graph to compile,
        # check and hold, and the views read its probabilities.
        served = feature_model(artifact.model) if self.ood is not None else artifact.model
        part = "features" if self.ood is not None else "probabilities"
        cache = cache_root / f"{artifact.metadata.model_sha256[:16]}-{part}" if cache_root is not None else None
        compiled, self.runtime = compile_model(served, runtime, cache, device)
        self._features = compiled if self.ood is not None else None
        self._model = ProbabilitiesOutput(compiled) if self.ood is not None else compiled
        self._pool = ThreadPoolExecutor(max_workers=threads)

    @classmethod
    def from_dir(
        cls, directory: Path | str, runtime: str = "keras", cache_root: Path | None = None, device: str = "cpu"
    ) -> "Classifier":
        return cls(load_artifact(directory), runtime=runtime, cache_root=cache_root, device=device)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, classes) for preprocessed float32 images (n, h, w, 3)."""
        return self.predict_with_scores(images)[0]

    def predict_with_scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (n, classes) and out-of-distribution scores (n,) (None without a scorer).

        The scores come from the identity view's features, in the same pass as its probabilities.
        """
        first, scores = None, None
        if self._features is not None and self.ood is not None:  # the feature model exists for the scorer
            features, first = features_and_probabilities(self._features, images)
            scores = self.ood.score(features)
        probabilities = predict_views(self._model, images, self.views, gate=self.view_gate, first=first)
        temperature = self.artifact.temperature
        return (probabilities if temperature == 1.0 else apply_temperature(probabilities, temperature)), scores

    def _preprocess(self, data: bytes) -> tuple[np.ndarray | str, float, tuple[str, ...]]:
        """The model input (or the image's error), its preprocessing time in ms, and the steps' notes."""
        start = time.perf_counter()
        notes: tuple[str, ...] = ()
        try:
            result: np.ndarray | str | None = too_small_error(data)  # from the header, before any decoding
            if result is None:
                # judged on the image as sent: colour normalisation (reinhard) would colour a grayscale image
                image = decode_image(data)
                result = colourless_error(image)
                if result is None:
                    prepared, notes = self.preprocessor.from_decoded_with_notes(image)
                    result = scale(prepared)
        except ImageDecodeError as exc:
            result = str(exc)
        except Exception as exc:  # a bug in a preprocessing step fails this image, not its whole sample
            log.exception("preprocessing failed")
            result = f"preprocessing failed: {type(exc).__name__}: {exc}"
        return result, (time.perf_counter() - start) * 1000, notes

    def _result(self, name: str, probabilities: np.ndarray, ood_score: float | None) -> CellPrediction:
        order = np.argsort(probabilities)[::-1]
        confidence = float(probabilities[order[0]])
        return CellPrediction(
            name=name,
            label=self.classes[order[0]],
            confidence=confidence,
            top3=[(self.classes[k], float(probabilities[k])) for k in order[:3]],
            probabilities={label: float(p) for label, p in zip(self.classes, probabilities)},
            ood_score=ood_score,
            review_reasons=review_reasons(
                confidence, self.review_threshold, ood_score, self.ood.threshold if self.ood is not None else None
            ),
        )

    def classify(self, images: Iterable[tuple[str, bytes]]) -> list[CellPrediction]:
        """Classify (name, bytes) pairs; an image that fails to decode gets an error entry, alone."""
        return [result for batch in self.classify_batches(images) for result in batch]

    def classify_batches(self, images: Iterable[tuple[str, bytes]]) -> Iterator[list[CellPrediction]]:
        """``classify`` one batch at a time, in order, so a caller can keep each batch's results before the next.

        Decoding of the next batch runs in the thread pool while the model predicts this one.
        """
        items = list(images)
        chunks = [items[start : start + BATCH_SIZE] for start in range(0, len(items), BATCH_SIZE)]
        pending: Iterator[tuple[np.ndarray | str, float, tuple[str, ...]]] = iter(())
        if chunks:
            pending = self._pool.map(self._preprocess, [data for _, data in chunks[0]])
        for k, chunk in enumerate(chunks):
            prepared, preprocess_ms, notes = zip(*pending)
            if k + 1 < len(chunks):
                pending = self._pool.map(self._preprocess, [data for _, data in chunks[k + 1]])
            good = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
            start = time.perf_counter()
            probabilities: np.ndarray | list[np.ndarray] = []
            scores: np.ndarray | None = None
            if good:
                probabilities, scores = self.predict_with_scores(np.stack([prepared[i] for i in good]))
            predict_ms = (time.perf_counter() - start) * 1000 / max(len(good), 1)
            by_position = {i: (p, None if scores is None else float(scores[k])) for k, (i, p) in enumerate(zip(good, probabilities))}
            results: list[CellPrediction] = []
            for i, (name, _) in enumerate(chunk):
                if i in by_position:
                    result = self._result(name, *by_position[i])
                    result.predict_ms = predict_ms
                else:
                    result = CellPrediction(name=name, error=prepared[i])
                result.preprocess_ms, result.preprocessing_notes = preprocess_ms[i], list(notes[i])
                results.append(result)
            yield results

    def classify_one(self, data: bytes, name: str = "image") -> CellPrediction:
        prepared, preprocess_ms, notes = self._preprocess(data)
        if isinstance(prepared, str):
            return CellPrediction(name=name, error=prepared, preprocess_ms=preprocess_ms)
        start = time.perf_counter()
        probabilities, scores = self.predict_with_scores(prepared[None])
        result = self._result(name, probabilities[0], None if scores is None else float(scores[0]))
        result.preprocess_ms, result.predict_ms = preprocess_ms, (time.perf_counter() - start) * 1000
        result.preprocessing_notes = list(notes)
        return result
