"""What plugins register: model architectures, preprocessing steps, cell locators and result exporters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Augmentation:
    """Random affine augmentation applied to training images only.

    The defaults are the original notebook's: rotation 15 degrees, shifts 0.1, shear 0.1,
    zoom 0.1, horizontal flip. ``shear`` is a shear factor (Keras' ImageDataGenerator read
    the notebook's 0.1 as degrees, which is practically no shear).
    """

    rotation_degrees: float = 15.0
    shift: float = 0.1
    shear: float = 0.1
    zoom: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = False
    # Stain and acquisition augmentation (all off by default): how other laboratories' stains,
    # microscopes and cameras differ. See ``preprocessing.acquisition_jitter``.
    stain: float = 0.0  # std of the per-image shift of LAB a and b (0..255 scale), and of L scaled by 1.5
    contrast: float = 0.0  # std of the log contrast factor, per channel half of it
    gamma: float = 0.0  # std of log gamma
    blur: float = 0.0  # probability of a Gaussian blur with sigma in [0.3, 1.5] pixels
    noise: float = 0.0  # probability of Gaussian pixel noise with std in [2, 8]
    jpeg: float = 0.0  # probability of a JPEG re-encode at quality 30-90
    low_resolution: float = 0.0  # probability of a down- and up-scale by 1.5-3x
    grayscale: float = 0.0  # probability of mixing towards grey (0.3-1.0 of the way)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def acquisition(self) -> bool:
        return any((self.stain, self.contrast, self.gamma, self.blur, self.noise, self.jpeg, self.low_resolution, self.grayscale))


# What `bloodcell train --acquisition-augmentation` adds to a plugin's geometric augmentation.
ACQUISITION_AUGMENTATION: dict[str, Any] = {
    "stain": 8.0,
    "contrast": 0.15,
    "gamma": 0.15,
    "blur": 0.3,
    "noise": 0.3,
    "jpeg": 0.3,
    "low_resolution": 0.3,
    "grayscale": 0.1,
}


@dataclass(frozen=True)
class TrainingDefaults:
    """How a model plugin trains unless the caller overrides it."""

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_epochs: int = 0  # linear warm-up from 0 to learning_rate before the cosine decay
    early_stopping_patience: int = 5
    preprocessing_steps: tuple[str, ...] = ()
    augmentation: Augmentation = field(default_factory=Augmentation)
    # Test-time views (bloodcell_core.ml.inference.VIEWS) the trained model is calibrated and served with.
    test_time_views: tuple[str, ...] = ("identity",)
    # With several views: the other views only for cells whose first-view confidence is under this (None: always).
    view_gate: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model architecture.

    ``build(input_shape, num_classes)`` returns an uncompiled ``keras.Model`` that takes
    float32 images scaled to [0, 1] with shape ``input_shape`` = (height, width, 3) and ends
    in a softmax over ``num_classes``.
    """

    name: str
    description: str
    build: Callable[[tuple[int, int, int], int], "keras.Model"]
    input_size: tuple[int, int] = (128, 128)
    defaults: TrainingDefaults = field(default_factory=TrainingDefaults)


@dataclass(frozen=True)
class StepResult:
    """What a step returns when it fell back from its own method on this image: the image, and notes saying so
    ("scale not measured"). They are recorded on the cell's prediction and counted in its sample's report."""

    image: np.ndarray
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreprocessingStep:
    """A deterministic image transform: RGB uint8 (H, W, 3) -> RGB uint8 (H', W', 3), or a ``StepResult`` holding
    it with notes on a fallback.

    ``colour_only``: the step maps colours and leaves the geometry as it is (statistics over the whole image
    allowed, as Reinhard's). Such a step placed after the last geometric step runs after the resize to the
    model's input, on a fraction of the pixels (``preprocessing.Preprocessor``)."""

    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray | StepResult]
    colour_only: bool = False


@dataclass(frozen=True)
class CellBox:
    """A white cell found in an image: its box in pixels, and whether the image's edge cuts it."""

    x: int
    y: int
    width: int
    height: int
    stained_area: int  # pixels of nucleus stain inside the box
    touches_edge: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.width / 2.0, self.y + self.height / 2.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CellLocator:
    """Finds white cells in an RGB uint8 image: ``locate(image) -> list[CellBox]``, largest first."""

    name: str
    description: str
    locate: Callable[[np.ndarray], list[CellBox]]


@dataclass(frozen=True)
class DifferentialRow:
    cell_type: str
    count: int
    percent: float  # per 100 leukocytes, also for the cell types that are not leukocytes
    abnormal: bool = False  # this cell type's value is abnormal (blasts with the blast flag, immature cells with theirs)
    leukocyte: bool = True  # False: nucleated red cells, platelets: reported apart, not part of the 100


@dataclass(frozen=True)
class ReportDocument:
    """A sample's report as exporters receive it: everything a LIMS message needs, nothing to look up."""

    accession_id: str
    accession_system: str  # the LIMS namespace of accession ids (BLOODCELL_ACCESSION_SYSTEM)
    report_status: str  # preliminary | final | amended
    issued: datetime  # when this content was last changed or signed off
    model_version: str
    model_plugin: str
    differential: tuple[DifferentialRow, ...]
    n_classified: int
    n_failed: int
    n_reviewed: int  # cells whose label a technologist set
    n_needs_review: int  # low-confidence cells not reviewed yet
    blast_class: str
    blast_flag: bool
    conclusion: str
    signed_off_by: str | None = None
    # Sample-level flags, each of which sent the sample to review: "blasts", "immature_cells",
    # "unfamiliar_images"; ``warnings`` holds their text, in the same order.
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    immature_classes: tuple[str, ...] = ()  # the classes the immature-cell flag counts
    n_unfamiliar: int = 0  # cells unlike the training images, not reviewed yet
    n_leukocytes: int = 0  # the differential's denominator: classified cells less nucleated red cells and platelets
    signed_off_at: datetime | None = None
    signed_off_role: str | None = None  # the signer's console role; signed_off_* name the approval of this very version
    sign_off_comment: str = ""


@dataclass(frozen=True)
class Exporter:
    """A report format for laboratory systems. ``render`` returns the document as text."""

    name: str  # as used in URLs and on the command line, e.g. "fhir-r4"
    description: str
    media_type: str
    render: Callable[[ReportDocument], str]


@dataclass(frozen=True)
class Runtime:
    """Runs a Keras model's inference another way (a compiled graph, another library).

    ``available()`` says whether it can run here (its library installed, its device present).
    ``compile(model, cache_dir)`` returns an object with the two things inference uses of a Keras model:
    ``predict_on_batch(images)`` (float32 (n, h, w, 3) -> one array, or a list with one array per
    output) and ``output_shape``. ``cache_dir`` (or None) is this model's own directory for what the
    runtime derives from it (a converted graph), keyed by the weights' sha256; the runtime checks what
    it finds there. Serving accepts the result only after a parity check against Keras.
    ``devices``: the worker devices (``BLOODCELL_WORKER_DEVICE``) it runs the model on; a GPU worker never
    picks a CPU-only runtime.
    """

    name: str
    description: str
    available: Callable[[], bool]
    compile: Callable[[Any, Path | None], Any]
    devices: tuple[str, ...] = ("cpu",)
