"""What plugins register: model architectures, preprocessing steps and result exporters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingDefaults:
    """How a model plugin trains unless the caller overrides it."""

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    early_stopping_patience: int = 5
    preprocessing_steps: tuple[str, ...] = ()
    augmentation: Augmentation = field(default_factory=Augmentation)
    # Test-time views (bloodcell_core.inference.VIEWS) the trained model is calibrated and served with.
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
class PreprocessingStep:
    """A deterministic image transform: RGB uint8 (H, W, 3) -> RGB uint8 (H', W', 3)."""

    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DifferentialRow:
    cell_type: str
    count: int
    percent: float


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
    signed_off_at: datetime | None = None


@dataclass(frozen=True)
class Exporter:
    """A report format for laboratory systems. ``render`` returns the document as text."""

    name: str  # as used in URLs and on the command line, e.g. "fhir-r4"
    description: str
    media_type: str
    render: Callable[[ReportDocument], str]
