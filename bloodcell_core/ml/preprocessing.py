"""The one preprocessing path, shared by training, evaluation, the CLI and the workers.

bytes -> OpenCV decode -> RGB uint8 -> plugin steps -> resize to the model input -> the plugin's colour-only steps
at the end of its list -> float32 in [0, 1].
Training additionally applies ``augment`` to the resized uint8 image, never in serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bloodcell_core.ml.image_header import ImageDecodeError, ImageTooLarge, image_dimensions
from bloodcell_core.plugin_manager import get_preprocessing_step
from bloodcell_core.plugin_types import Augmentation, PreprocessingStep, StepResult

# 2: colour-only steps after the last geometric one run after the resize. Version 1 ran them before it; its models
# are served the version 2 way: `bloodcell evaluate models/default` scored the same both ways (kaggle5 0.9824, pbc8
# 0.9620; docs/benchmarks.md).
PREPROCESSING_VERSION = 2
SERVED_VERSIONS = (1, 2)
# Refuse to decode more pixels than this anywhere (the HTTP API's own limit, BLOODCELL_MAX_IMAGE_PIXELS, is lower):
# a small compressed file can claim dimensions whose decoded array would exhaust memory.
MAX_DECODE_PIXELS = 100_000_000


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array (H, W, 3).

    Only images whose header Pillow reads (JPEG, PNG, TIFF, BMP, WebP, GIF, ...) are decoded, and
    only up to MAX_DECODE_PIXELS: the size is known before OpenCV allocates anything, so a file
    claiming huge dimensions in any format is refused. ``cv2.imdecode`` returns None instead of
    raising on bad input; that is turned into an ImageDecodeError here. Grayscale is expanded to
    RGB, alpha is dropped, 16-bit and float images are brought to 8 bits, and OpenCV's BGR order
    is converted to RGB.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        size = image_dimensions(data)
    except ImageTooLarge:
        raise ImageDecodeError(f"image exceeds the {MAX_DECODE_PIXELS:,} pixel limit") from None
    if size is None:
        raise ImageDecodeError(f"not an image file: {len(data):,} bytes in no image format this service reads")
    if size[0] * size[1] > MAX_DECODE_PIXELS:
        raise ImageDecodeError(f"image of {size[0]} x {size[1]} pixels exceeds the {MAX_DECODE_PIXELS:,} pixel limit")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"not an image file that decodes: its header says {size[0]} x {size[1]} pixels, its data is damaged")
    if image.dtype == np.uint16:
        image = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 2:  # grayscale + alpha
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(f"unsupported image with {channels} channels")


@dataclass(frozen=True)
class PreprocessingConfig:
    """Everything serving needs to reproduce a model's input; stored in its metadata."""

    input_size: tuple[int, int]  # (height, width)
    steps: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PREPROCESSING_VERSION,
            "decode": "opencv IMREAD_UNCHANGED; 16-bit >> 8; gray -> RGB; alpha dropped; BGR -> RGB",
            "steps": list(self.steps),
            "input_size": list(self.input_size),
            "resize": "cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging; after the last step that is "
            "not colour-only (the colour-only steps after it run on the resized image)",
            "scale": "uint8 / 255 -> float32 in [0, 1]",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PreprocessingConfig":
        if data.get("version") not in SERVED_VERSIONS:
            raise ValueError(
                f"model needs preprocessing version {data.get('version')}, this bloodcell serves versions {SERVED_VERSIONS}"
            )
        return cls(input_size=tuple(data["input_size"]), steps=tuple(data["steps"]))


class Preprocessor:
    """Applies one PreprocessingConfig; the steps are resolved through the plugin manager once."""

    def __init__(self, config: PreprocessingConfig) -> None:
        self.config = config
        steps = [get_preprocessing_step(name) for name in config.steps]
        # the colour-only steps at the end run after the resize: same colours, a fraction of the pixels
        before = len(steps)
        while before and steps[before - 1].colour_only:
            before -= 1
        self.before_resize, self.after_resize = steps[:before], steps[before:]

    def to_uint8(self, data: bytes) -> np.ndarray:
        """Decode, apply the steps and resize: (height, width, 3) uint8, ready to augment or scale."""
        return self.from_decoded(decode_image(data))

    def from_decoded(self, image: np.ndarray) -> np.ndarray:
        """Apply the steps to a decoded RGB uint8 image and resize it (the second half of ``to_uint8``)."""
        return self.from_decoded_with_notes(image)[0]

    def from_decoded_with_notes(self, image: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        """``from_decoded``, and the notes of the steps that fell back on this image (``StepResult``)."""
        image, before = apply_steps(self.before_resize, image)
        image, after = apply_steps(self.after_resize, resize(image, self.config.input_size))
        return image, before + after

    def __call__(self, data: bytes) -> np.ndarray:
        """The model input for one image: (height, width, 3) float32 in [0, 1]."""
        return scale(self.to_uint8(data))


def apply_step(step: PreprocessingStep, image: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """STEP applied to IMAGE: the image, and its notes if it fell back."""
    result = step.apply(image)
    return (result.image, result.notes) if isinstance(result, StepResult) else (result, ())


def apply_steps(steps: list[PreprocessingStep], image: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """STEPS applied in turn to IMAGE: the image, and the notes of those that fell back."""
    notes: tuple[str, ...] = ()
    for step in steps:
        image, step_notes = apply_step(step, image)
        notes += step_notes
    return image, notes


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """IMAGE resized to SIZE (height, width): area-averaged when shrinking, bilinear when enlarging."""
    height, width = size
    shrinking = image.shape[0] * image.shape[1] > height * width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def square_crop(image: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A side x side crop centred on (cx, cy); parts outside the image are filled by reflection."""
    side = max(8, int(side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    if pad:
        # reflection needs the padding smaller than the image; a crop much larger than it is padded with edge pixels
        border = cv2.BORDER_REFLECT_101 if pad < min(height, width) else cv2.BORDER_REPLICATE
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, border)
        x0, y0 = x0 + pad, y0 + pad
    return image[y0 : y0 + side, x0 : x0 + side]


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] (any leading shape)."""
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def random_affine(augmentation: Augmentation, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random 2x3 affine matrix about the image centre: flip, rotation, shear, zoom, shift."""
    height, width = size
    angle = np.deg2rad(rng.uniform(-augmentation.rotation_degrees, augmentation.rotation_degrees))
    shear = rng.uniform(-augmentation.shear, augmentation.shear)
    zoom_x, zoom_y = rng.uniform(1 - augmentation.zoom, 1 + augmentation.zoom, size=2)
    flip_x = -1.0 if augmentation.horizontal_flip and rng.random() < 0.5 else 1.0
    flip_y = -1.0 if augmentation.vertical_flip and rng.random() < 0.5 else 1.0
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([zoom_x * flip_x, zoom_y * flip_y])
    centre = np.array([width / 2.0, height / 2.0])
    shift = rng.uniform(-augmentation.shift, augmentation.shift, size=2) * np.array([width, height])
    offset = centre + shift - linear @ centre
    return np.hstack([linear, offset[:, None]])


def acquisition_jitter(image: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Training-only stain and acquisition changes of one uint8 RGB image: what another laboratory's stain,
    lamp, optics and camera do to the same cell (LAB shift, contrast, gamma, blur, noise, JPEG, lower
    resolution, washed-out colour). Each is drawn independently; with all zero the image is returned as it is."""
    a = augmentation
    height, width = image.shape[:2]
    out = image
    if a.stain or a.contrast:
        lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(np.float32)
        mean = lab.reshape(-1, 3).mean(axis=0)
        shift = rng.normal(0.0, a.stain, 3) * np.array([1.5, 1.0, 1.0])
        gain = np.exp(rng.normal(0.0, a.contrast) + rng.normal(0.0, a.contrast / 2, 3))
        lab = (lab - mean) * gain + mean + shift
        out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    if a.gamma:
        table = 255.0 * (np.arange(256) / 255.0) ** np.exp(rng.normal(0.0, a.gamma))
        out = cv2.LUT(out, np.clip(table, 0, 255).astype(np.uint8))
    if rng.random() < a.grayscale:
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, 1.0 - (w := rng.uniform(0.3, 1.0)), grey, w, 0.0)
    if rng.random() < a.low_resolution:
        factor = rng.uniform(1.5, 3.0)
        small = cv2.resize(out, (max(4, round(width / factor)), max(4, round(height / factor))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < a.blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < a.noise:
        out = np.clip(out + rng.normal(0.0, rng.uniform(2.0, 8.0), out.shape), 0, 255).astype(np.uint8)
    if rng.random() < a.jpeg:
        quality = int(rng.integers(30, 91))
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])  # channel order is irrelevant here
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else None
        out = out if decoded is None else decoded
    return out


def augment(image: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Training-only random augmentation of one uint8 image: affine (borders reflected), then stain and acquisition."""
    height, width = image.shape[:2]
    matrix = random_affine(augmentation, (height, width), rng)
    moved = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return acquisition_jitter(moved, augmentation, rng) if augmentation.acquisition else moved
