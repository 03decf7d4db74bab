"""Crop the largest centred square, so that resizing keeps the cell's aspect ratio.

Single-cell images are centred on the cell; their sources differ in aspect (360x363,
366x369, 400x400), and a plain resize would stretch cells differently per source.
"""

from __future__ import annotations

import numpy as np

from bloodcell_core import PreprocessingStep, hookimpl


def center_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


@hookimpl
def register_preprocessing_steps(register):
    register(
        PreprocessingStep(
            name="center_crop",
            description="Crop the largest centred square (keeps aspect ratio through the resize).",
            apply=center_crop,
        )
    )
