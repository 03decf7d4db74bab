"""What one training run is asked to do (``training.train`` carries it out). No Keras here: the service and the
CLI build plans without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence


@dataclass(frozen=True)
class TrainingPlan:
    """Train MODEL_NAME on DATA_DIR into OUT_DIR; a choice left at None takes the plugin's default.

    ``data_dir`` may be several dataset folders read as one (``dataset.index_dataset``), with ``renames``
    mapping folder names to class names; ``max_per_class`` keeps the first files per class (quick runs).
    ``preprocessing_steps`` replaces the plugin's default steps (e.g. to add colour normalisation);
    ``acquisition_augmentation`` adds stain and acquisition augmentation
    (``plugin_types.ACQUISITION_AUGMENTATION``) to the plugin's geometric one. ``init_from`` starts from that
    model directory's weights instead of random ones (a warm restart with a fresh learning-rate schedule); it
    must have the same plugin, classes, preprocessing and split. ``views`` replaces the plugin's test-time
    views, which the model is calibrated and served with, and ``view_gate`` its view gate ("default": the
    plugin's; None: every view for every cell; see ``inference.predict_views``). ``source_adversary`` > 0 trains
    with a source head behind a gradient reversal of that peak weight (``source_adversary`` module).
    """

    model_name: str
    data_dir: Path | str | Sequence[Path | str]
    out_dir: Path | str
    epochs: int | None = None
    seed: int = 0
    batch_size: int | None = None
    learning_rate: float | None = None
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    max_per_class: int | None = None
    preprocessing_steps: tuple[str, ...] | None = None
    renames: dict[str, str] | None = None
    acquisition_augmentation: bool = False
    init_from: Path | str | None = None
    views: tuple[str, ...] | None = None
    view_gate: float | None | Literal["default"] = "default"
    source_adversary: float = 0.0
