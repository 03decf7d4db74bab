"""A compact CNN: six strided conv stages and global average pooling instead of a large Dense layer.

About a tenth of the baseline's parameters and file size and several times its CPU throughput.
Cells have no natural orientation, so it trains with full rotations and vertical flips too,
on a centred square crop.

Two variants of the same network for the cross-laboratory trials (docs/trials.md):
- ``compact_cnn_gn``: GroupNormalization instead of BatchNorm. BatchNorm's moving statistics are the
  training sources' activation statistics, a cue that travels with the laboratory; group norm normalises
  each image by its own statistics, which across scanners is the largest single lever published
  (wbc-benchmark, Tsutsui 2023). It needs a warm-up and a higher peak learning rate to converge in 10 epochs.
- ``compact_cnn_ln``: one group per layer (LayerNorm over each image's whole feature map), same schedule.
- ``compact_cnn_wide``: twice the filters of every stage (about 4x the parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from bloodcell_core import Augmentation, ModelSpec, TrainingDefaults, hookimpl

# (filters, stride): strided convolutions downsample instead of pooling, which keeps the
# full-resolution activations small; that is where a CPU spends its time on 128x128 input.
STAGES = ((32, 2), (48, 2), (96, 2), (96, 1), (192, 2), (256, 1))


GROUPS = 8  # divides every stage's width


def _normalisation(kind: str) -> keras.layers.Layer:
    if kind == "group":
        return keras.layers.GroupNormalization(groups=GROUPS)
    if kind == "layer":
        # One group: each image normalised over all its channels and pixels (LayerNorm for conv maps).
        return keras.layers.GroupNormalization(groups=1)
    # BatchNormalization momentum 0.9 (Keras default 0.99): with ~100 steps an epoch the moving
    # statistics otherwise lag the fast-changing weights, and validation scores collapse for epochs.
    return keras.layers.BatchNormalization(momentum=0.9)


def _builder(name: str, normalisation: str = "batch", width: int = 1) -> Callable[[tuple[int, int, int], int], keras.Model]:
    def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
        inputs = keras.Input(shape=input_shape)
        x = inputs
        for filters, stride in STAGES:
            x = keras.layers.Conv2D(filters * width, 3, strides=stride, padding="same", use_bias=False)(x)
            x = _normalisation(normalisation)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.3)(x)
        outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
        return keras.Model(inputs, outputs, name=name)

    return build


build = _builder("compact_cnn")


DEFAULTS = TrainingDefaults(
    epochs=30,
    batch_size=32,
    learning_rate=1e-3,
    early_stopping_patience=10,
    preprocessing_steps=("center_crop",),
    augmentation=Augmentation(rotation_degrees=180.0, vertical_flip=True),
)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="compact_cnn",
            description="Compact CNN with global average pooling (~0.75 M parameters, ~3 MB file).",
            build=build,
            input_size=(128, 128),
            defaults=DEFAULTS,
        )
    )
    register(
        ModelSpec(
            name="compact_cnn_gn",
            description="compact_cnn with GroupNormalization (8 groups) instead of BatchNorm: no training-set statistics.",
            build=_builder("compact_cnn_gn", normalisation="group"),
            input_size=(128, 128),
            defaults=dataclasses.replace(DEFAULTS, learning_rate=2e-3, warmup_epochs=1),
        )
    )
    register(
        ModelSpec(
            name="compact_cnn_ln",
            description="compact_cnn with one-group GroupNormalization (LayerNorm per feature map) instead of BatchNorm.",
            build=_builder("compact_cnn_ln", normalisation="layer"),
            input_size=(128, 128),
            defaults=dataclasses.replace(DEFAULTS, learning_rate=2e-3, warmup_epochs=1),
        )
    )
    register(
        ModelSpec(
            name="compact_cnn_wide",
            description="compact_cnn with twice the filters per stage (~3 M parameters).",
            build=_builder("compact_cnn_wide", width=2),
            input_size=(128, 128),
            defaults=DEFAULTS,
        )
    )
