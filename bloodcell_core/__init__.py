"""bloodcell core: data audit, preprocessing, plugin system, training, evaluation and inference."""

from bloodcell_core.hookspecs import hookimpl
from bloodcell_core.plugin_types import (
    Augmentation,
    CellBox,
    CellLocator,
    ModelSpec,
    PreprocessingStep,
    Runtime,
    StepResult,
    TrainingDefaults,
)

__version__ = "0.1.0"
__all__ = [
    "Augmentation",
    "CellBox",
    "CellLocator",
    "ModelSpec",
    "PreprocessingStep",
    "Runtime",
    "StepResult",
    "TrainingDefaults",
    "hookimpl",
    "__version__",
]
