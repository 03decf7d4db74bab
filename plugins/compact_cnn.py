"""A compact CNN: six strided conv stages and global average pooling instead of a large Dense layer.

About a tenth of the baseline's parameters and file size and several times its CPU throughput.
Cells have no natural orientation, so it trains with full rotations and vertical flips too,
on a centred square crop.

Two variants of the same network for the cross-laboratory trials (docs/trials.md):
- ``compact_cnn_gn``: GroupNormalization instead of BatchNorm. BatchNorm's moving statistics are the
  training sources' activation statistics, a cue that travels with the laboratory; group norm normalises
  each image by its own statistics, which across scanners is the largest single lever published
  (wbc-benchmark, Tsutsui 2023). It needs a warm-up and a higher peak learning rate to converge in 10 epochs.
- ``compact_cnn_gn_ws`` and ``compact_cnn_ws``: weight-standardised convolutions with GroupNorm, and with no
  normalisation layer at all: nothing in the network depends on the training data's statistics.
- ``compact_cnn_ln``: one group per layer (LayerNorm over each image's whole feature map), same schedule.
- ``compact_cnn_wide``: twice the filters of every stage (about 4x the parameters).
- ``compact_cnn_mixstyle``: MixStyle after the first stages (``MixStyle``): training mixes each image's feature
  statistics with another image's of the batch, so a source's style marks no class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras

from bloodcell_core import Augmentation, ModelSpec, TrainingDefaults, hookimpl

# (filters, stride): strided convolutions downsample instead of pooling, which keeps the
# full-resolution activations small; that is where a CPU spends its time on 128x128 input.
STAGES = ((32, 2), (48, 2), (96, 2), (96, 1), (192, 2), (256, 1))


GROUPS = 8  # divides every stage's width


@keras.saving.register_keras_serializable(package="compact_cnn")
class StandardisedConv2D(keras.layers.Conv2D):
    """Conv2D with weight standardisation (Qiao et al. 2019): each filter is used at zero mean and unit
    spread. It smooths the loss landscape the way BatchNorm does, without any statistics of the training
    data's activations, and lets group-normalised or unnormalised nets train at BatchNorm's pace."""

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        spread = keras.ops.sqrt(keras.ops.var(kernel, axis=(0, 1, 2), keepdims=True) + 1e-5)
        return super().convolution_op(inputs, (kernel - mean) / spread)


@keras.saving.register_keras_serializable(package="compact_cnn")
class ScaledStandardisedConv2D(StandardisedConv2D):
    """Weight standardisation scaled by He's gain, sqrt(2 / fan-in) (Brock et al. 2021): without a
    normalisation layer after it, each ReLU stage then keeps its input's spread instead of multiplying it."""

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
        return super().convolution_op(inputs, kernel) * (2.0 / fan_in) ** 0.5


MIXSTYLE_STAGES = 3  # the first stages' statistics are the image's style (stain, optics, camera): mix after each
MIXSTYLE_PROBABILITY, MIXSTYLE_ALPHA = 0.5, 0.1  # the paper's


@keras.saving.register_keras_serializable(package="compact_cnn")
class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al. 2021), in training only: with probability ``probability`` an image's per-channel
    feature mean and spread are replaced by a mix, weight ~ Beta(alpha, alpha), of its own and another image's of
    the batch. Early feature statistics carry the laboratory's stain and camera; mixed across the batch's sources,
    they stop marking one source's cells, so no class can lean on them. The identity at inference."""

    def __init__(
        self, probability: float = MIXSTYLE_PROBABILITY, alpha: float = MIXSTYLE_ALPHA, seed: int | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.probability, self.alpha, self.seed = probability, alpha, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training:
            return inputs
        ops = keras.ops
        n = ops.shape(inputs)[0]
        mean = ops.stop_gradient(ops.mean(inputs, axis=(1, 2), keepdims=True))
        spread = ops.stop_gradient(ops.sqrt(ops.var(inputs, axis=(1, 2), keepdims=True) + 1e-6))
        weight = keras.random.beta((n, 1, 1, 1), self.alpha, self.alpha, seed=self.seed_generator)
        other = keras.random.shuffle(ops.arange(n), seed=self.seed_generator)
        mixed_mean = weight * mean + (1.0 - weight) * ops.take(mean, other, axis=0)
        mixed_spread = weight * spread + (1.0 - weight) * ops.take(spread, other, axis=0)
        chosen = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < self.probability
        return ops.where(chosen, (inputs - mean) / spread * mixed_spread + mixed_mean, inputs)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"probability": self.probability, "alpha": self.alpha, "seed": self.seed}


def _normalisation(kind: str) -> keras.layers.Layer:
    if kind == "none":
        return keras.layers.Identity()
    if kind == "group":
        return keras.layers.GroupNormalization(groups=GROUPS)
    if kind == "layer":
        # One group: each image normalised over all its channels and pixels (LayerNorm for conv maps).
        return keras.layers.GroupNormalization(groups=1)
    # BatchNormalization momentum 0.9 (Keras default 0.99): with ~100 steps an epoch the moving
    # statistics otherwise lag the fast-changing weights, and validation scores collapse for epochs.
    return keras.layers.BatchNormalization(momentum=0.9)


def _builder(
    name: str, normalisation: str = "batch", width: int = 1, standardise: bool = False, mixstyle: bool = False
) -> Callable[[tuple[int, int, int], int], keras.Model]:
    conv = keras.layers.Conv2D
    if standardise:
        conv = ScaledStandardisedConv2D if normalisation == "none" else StandardisedConv2D

    def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
        inputs = keras.Input(shape=input_shape)
        x = inputs
        for stage, (filters, stride) in enumerate(STAGES):
            # without any normalisation layer the convolution's bias is the only per-channel shift
            x = conv(filters * width, 3, strides=stride, padding="same", use_bias=normalisation == "none")(x)
            x = _normalisation(normalisation)(x)
            x = keras.layers.ReLU()(x)
            if mixstyle and stage < MIXSTYLE_STAGES:
                x = MixStyle(seed=stage)(x)
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


# Group-, layer- and un-normalised nets start slower: a 1-epoch warm-up to a higher peak learning rate.
NO_BATCH_STATISTICS = dataclasses.replace(DEFAULTS, learning_rate=2e-3, warmup_epochs=1)

# The trial variants (docs/trials.md): name -> (description, builder options, training defaults)
VARIANTS: dict[str, tuple[str, dict[str, Any], TrainingDefaults]] = {
    "compact_cnn_gn": (
        "compact_cnn with GroupNormalization (8 groups) instead of BatchNorm: no training-set statistics.",
        {"normalisation": "group"},
        NO_BATCH_STATISTICS,
    ),
    "compact_cnn_gn_ws": (
        "compact_cnn_gn with weight-standardised convolutions.",
        {"normalisation": "group", "standardise": True},
        NO_BATCH_STATISTICS,
    ),
    "compact_cnn_ws": (
        "compact_cnn with weight-standardised convolutions and no normalisation layer.",
        {"normalisation": "none", "standardise": True},
        NO_BATCH_STATISTICS,
    ),
    "compact_cnn_ln": (
        "compact_cnn with one-group GroupNormalization (LayerNorm per feature map) instead of BatchNorm.",
        {"normalisation": "layer"},
        NO_BATCH_STATISTICS,
    ),
    "compact_cnn_mixstyle": (
        f"compact_cnn mixing feature style (MixStyle) across the batch's images after its first {MIXSTYLE_STAGES} stages.",
        {"mixstyle": True},
        DEFAULTS,
    ),
    "compact_cnn_wide": ("compact_cnn with twice the filters per stage (~3 M parameters).", {"width": 2}, DEFAULTS),
}


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
    for name, (description, options, defaults) in VARIANTS.items():
        build_variant = _builder(name, **options)
        register(ModelSpec(name=name, description=description, build=build_variant, input_size=(128, 128), defaults=defaults))
