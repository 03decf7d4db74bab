"""A source adversary for training (``TrainingPlan.source_adversary``): features that cannot tell the sources apart.

Domain-adversarial training (Ganin and Lempitsky 2015): during training only, a small head reads the features the
classifier's last layer sees and learns to name the dataset folder (the source) of each cell; between the two, a
gradient-reversal layer hands the layers below the head's gradient with its sign flipped and scaled by the
adversary's weight, so they learn to make the source unreadable while the classifier keeps its task.

The head only judges cells of classes whose images come from more than one folder (in kaggle5 + pbc8: neutrophils,
Munich against PBC). A class that one source alone provides (myeloblast) cannot be judged: its source is its class,
and asking features to hide that would ask them to hide the class. The weight ramps up over training (Ganin's
``2 / (1 + exp(-10 p)) - 1``) so that the head learns from features worth reading before it pushes back.
The served model is the classifier alone: the head and the reversal are not saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from bloodcell_core.ml.splits import SplitItem

HEAD_UNITS = 64


class GradientReversal(keras.layers.Layer):
    """Identity going forward; going back, the gradient times ``-weight``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weight = keras.Variable(0.0, trainable=False, name="reversal_weight")

    def call(self, inputs):
        # (1 + w) x - w x is x; only the second term passes a gradient: -w
        return keras.ops.stop_gradient((1.0 + self.weight) * inputs) - self.weight * inputs


class AdversaryRamp(keras.callbacks.Callback):
    """Sets the reversal's weight at each epoch's start: ``peak * (2 / (1 + exp(-10 p)) - 1)``, p the share of
    epochs done."""

    def __init__(self, reversal: GradientReversal, peak: float, epochs: int) -> None:
        super().__init__()
        self.reversal, self.peak, self.epochs = reversal, peak, epochs

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        progress = epoch / max(self.epochs - 1, 1)
        self.reversal.weight.assign(self.peak * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0))


@dataclass(frozen=True)
class SourceTargets:
    """Each training cell's folder (one-hot over ``folders``) and the weight of its source loss: 0 for cells the
    head cannot judge (a class from one folder only, or a file found in two folders), and for the others the
    inverse of their share, so the source loss weighs like a full batch of judged cells."""

    folders: list[str]
    onehot: np.ndarray
    weights: np.ndarray
    judged_classes: list[str]

    def record(self, peak_weight: float) -> dict[str, Any]:
        """What the model's training record says of the adversary."""
        return {
            "peak_weight": peak_weight,
            "schedule": "peak * (2 / (1 + exp(-10 p)) - 1), p the share of epochs done",
            "folders": self.folders,
            "judged_classes": self.judged_classes,
            "judged_cells": int((self.weights > 0).sum()),
            "head": f"Dense {HEAD_UNITS} ReLU + softmax on the last layer's input; not saved",
        }


def source_targets(items: list[SplitItem]) -> SourceTargets:
    """The source head's targets for the training split's ITEMS (``SplitItem.paths`` start with the folder)."""
    item_folders = [{path.split("/")[0] for path in item.paths} for item in items]
    folders = sorted(set().union(*item_folders))
    single = np.array([len(found) == 1 for found in item_folders])
    labels = [item.label for item in items]
    per_class: dict[str, set[str]] = {}
    for label, found in zip(labels, item_folders):
        if len(found) == 1:
            per_class.setdefault(label, set()).update(found)
    judged_classes = sorted(label for label, found in per_class.items() if len(found) > 1)
    judged = single & np.array([label in judged_classes for label in labels])
    index = np.array([folders.index(min(found)) for found in item_folders])
    weights = np.zeros(len(items), dtype=np.float32)
    if judged.any():
        weights[judged] = len(items) / judged.sum()
    return SourceTargets(folders, np.eye(len(folders), dtype=np.float32)[index], weights, judged_classes)


def with_source_head(model: keras.Model, n_folders: int) -> tuple[keras.Model, GradientReversal]:
    """A training model sharing MODEL's layers, with outputs ``class`` (MODEL's) and ``source`` (the head's);
    and its reversal layer, whose weight ``AdversaryRamp`` sets."""
    reversal = GradientReversal(name="gradient_reversal")
    hidden = keras.layers.Dense(HEAD_UNITS, activation="relu", name="source_hidden")(reversal(model.layers[-1].input))
    source = keras.layers.Dense(n_folders, activation="softmax", name="source_out")(hidden)
    return keras.Model(model.inputs, {"class": model.outputs[0], "source": source}), reversal
