"""A MobileNetV2-style network: inverted residual blocks with depthwise convolutions (Sandler et al. 2018).

Depthwise-separable convolutions cost a fraction of full ones, so this is the cheapest model to run
on CPU (about 0.3 M parameters); expansion 4 instead of 6 keeps it small for a few thousand images.
"""

from __future__ import annotations

from typing import Callable

import keras

from bloodcell_core import Augmentation, ModelSpec, TrainingDefaults, hookimpl

# (output channels, stride) per inverted residual block, after a 24-filter strided stem
BLOCKS = ((24, 1), (32, 2), (32, 1), (64, 2), (64, 1), (96, 2), (96, 1), (160, 1))
EXPANSION = 4


def inverted_residual(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    channels = x.shape[-1]
    y = keras.layers.Conv2D(channels * EXPANSION, 1, use_bias=False)(x)
    y = keras.layers.ReLU(max_value=6.0)(keras.layers.BatchNormalization(momentum=0.9)(y))
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
    y = keras.layers.ReLU(max_value=6.0)(keras.layers.BatchNormalization(momentum=0.9)(y))
    y = keras.layers.Conv2D(filters, 1, use_bias=False)(y)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)  # linear bottleneck: no activation
    if stride == 1 and channels == filters:
        y = keras.layers.Add()([x, y])
    return y


def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU(max_value=6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
    for filters, stride in BLOCKS:
        x = inverted_residual(x, filters, stride)
    x = keras.layers.Conv2D(320, 1, use_bias=False)(x)
    x = keras.layers.ReLU(max_value=6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mobilenet_small")


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="mobilenet_small",
            description="MobileNetV2-style inverted residuals with depthwise convolutions (~0.3 M parameters).",
            build=build,
            input_size=(128, 128),
            defaults=TrainingDefaults(
                epochs=30,
                batch_size=32,
                learning_rate=2e-3,
                early_stopping_patience=10,
                preprocessing_steps=("center_crop",),
                augmentation=Augmentation(rotation_degrees=180.0, vertical_flip=True),
            ),
        )
    )
