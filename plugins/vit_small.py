"""A small Vision Transformer (Dosovitskiy et al. 2021), the original notebook's future-work item.

16x16 patches of the 128x128 image give 64 tokens of width 128, six pre-norm transformer blocks with
4 heads, and the mean token for the class. Position comes from a depthwise convolution over the patch
grid (a positional encoding generator, Chu et al. 2021) rather than a learned table, so the model is
built from stock Keras layers only. Trained from scratch on a few thousand images a ViT is data-hungry:
expect it below the CNNs here; it is the baseline for pretraining experiments.
"""

from __future__ import annotations

from typing import Callable

import keras

from bloodcell_core import Augmentation, ModelSpec, TrainingDefaults, hookimpl

PATCH, WIDTH, DEPTH, HEADS, MLP = 16, 128, 6, 4, 256


def transformer_block(x: keras.KerasTensor) -> keras.KerasTensor:
    y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    y = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=WIDTH // HEADS, dropout=0.1)(y, y)
    x = keras.layers.Add()([x, y])
    y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    y = keras.layers.Dense(MLP, activation="gelu")(y)
    y = keras.layers.Dropout(0.1)(y)
    y = keras.layers.Dense(WIDTH)(y)
    return keras.layers.Add()([x, y])


def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    grid = keras.layers.Conv2D(WIDTH, PATCH, strides=PATCH)(inputs)  # (8, 8, WIDTH) patch embeddings
    grid = keras.layers.Add()([grid, keras.layers.DepthwiseConv2D(3, padding="same")(grid)])  # position
    rows, cols = input_shape[0] // PATCH, input_shape[1] // PATCH
    x = keras.layers.Reshape((rows * cols, WIDTH))(grid)
    for _ in range(DEPTH):
        x = transformer_block(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vit_small")


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="vit_small",
            description="Small Vision Transformer: 16x16 patches, 6 blocks of width 128 (~0.9 M parameters).",
            build=build,
            input_size=(128, 128),
            defaults=TrainingDefaults(
                epochs=40,
                batch_size=32,
                learning_rate=5e-4,
                early_stopping_patience=12,
                preprocessing_steps=("center_crop",),
                augmentation=Augmentation(rotation_degrees=180.0, vertical_flip=True),
            ),
        )
    )
