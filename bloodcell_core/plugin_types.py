"""What plugins register: model architectures and preprocessing steps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
