"""The machine-learning side's public API for the service: everything `bloodcell_core.service` may use.

The service imports nothing else from `bloodcell_core.ml` (a test reads the imports). Importing this
module does not import Keras or TensorFlow, so producers stay light: Keras loads when a classifier
is built (``Classifier.from_dir``) or a model is trained (``train``).
"""

from __future__ import annotations

from typing import Any

from bloodcell_core.ml.artifacts import REPORT_DIR, ArtifactError, ModelMetadata, read_metadata, version_id
from bloodcell_core.ml.dataset import index_dataset, list_class_files
from bloodcell_core.ml.evaluation import evaluate
from bloodcell_core.ml.fields import CutField, FieldTooCrowded, cut_field, draw_overlay
from bloodcell_core.ml.image_header import ImageDecodeError, ImageTooLarge, image_dimensions
from bloodcell_core.ml.inference import CellPrediction, Classifier, served_views
from bloodcell_core.ml.ood import FALLBACK_REVIEW_THRESHOLD, UNFAMILIAR_REASON, review_reasons
from bloodcell_core.ml.training_plan import TrainingPlan

__all__ = [
    "ArtifactError",
    "CellPrediction",
    "Classifier",
    "CutField",
    "FieldTooCrowded",
    "FALLBACK_REVIEW_THRESHOLD",
    "ImageDecodeError",
    "ImageTooLarge",
    "ModelMetadata",
    "REPORT_DIR",
    "TrainingPlan",
    "UNFAMILIAR_REASON",
    "confusion_matrix_figure",
    "cut_field",
    "draw_overlay",
    "evaluate",
    "image_dimensions",
    "index_dataset",
    "list_class_files",
    "read_metadata",
    "review_reasons",
    "served_views",
    "train",
    "version_id",
]


def train(plan: TrainingPlan, **options: Any) -> ModelMetadata:
    """``bloodcell_core.ml.training.train``, imported on first use: it imports Keras."""
    from bloodcell_core.ml.training import train as train_model

    return train_model(plan, **options)


def confusion_matrix_figure(counts: list[list[int]], classes: list[str], title: str, true_label: str, predicted_label: str) -> Any:
    """``bloodcell_core.ml.plots.confusion_matrix_figure`` (a matplotlib Figure), imported on first use."""
    from bloodcell_core.ml.plots import confusion_matrix_figure as figure

    return figure(counts, classes, title, true_label, predicted_label)
