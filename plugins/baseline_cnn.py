"""The original notebook's CNN, layer for layer (about 6.5 M parameters, most in the Dense layer)."""

from __future__ import annotations

from typing import Callable

import keras

from bloodcell_core import ModelSpec, TrainingDefaults, hookimpl


def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Conv2D(32, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.BatchNormalization(),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.BatchNormalization(),
            keras.layers.Conv2D(128, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="baseline_cnn",
    )


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="baseline_cnn",
            description="The original notebook's CNN: Conv32-64-128 with pooling and batch norm, Dense256, dropout 0.5.",
            build=build,
            input_size=(128, 128),
            defaults=TrainingDefaults(epochs=20, batch_size=32, learning_rate=1e-3, early_stopping_patience=5),
        )
    )
