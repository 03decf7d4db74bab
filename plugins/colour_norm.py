"""Reinhard colour normalisation: match each image's LAB mean and spread to one fixed reference.

Smears from different labs, stains and scanners differ in colour more than cells of one type do;
this removes the per-image colour cast before the model sees it (Reinhard et al. 2001, applied to
histology by many since). The reference is the average per-image LAB statistics of 600 images drawn
from kaggle5 and pbc8 (OpenCV 8-bit LAB: L, a, b in 0..255, a and b centred on 128). The step is
deterministic and parameter-free, so a model trained with it records only its name, and serving
applies it identically.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from bloodcell_core import PreprocessingStep, hookimpl

REFERENCE_MEAN = np.array([202.4, 139.7, 131.2], dtype=np.float32)
REFERENCE_STD = np.array([41.8, 11.1, 15.6], dtype=np.float32)
MIN_STD = 1.0  # a flat channel (blank image) is shifted, not stretched


def reinhard(image: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    mean, std = (values.ravel() for values in cv2.meanStdDev(lab))  # float64 sums: exact for any image size
    # The transform is per channel and its input is 8-bit: a 256-entry table per channel applies it.
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = (levels - mean.astype(np.float32)) / np.maximum(std, MIN_STD).astype(np.float32) * REFERENCE_STD + REFERENCE_MEAN
    return cv2.cvtColor(cv2.LUT(lab, np.clip(table, 0, 255).astype(np.uint8).reshape(256, 1, 3)), cv2.COLOR_LAB2RGB)


@hookimpl
def register_preprocessing_steps(register: Callable[[PreprocessingStep], None]) -> None:
    register(
        PreprocessingStep(
            name="reinhard",
            description="Reinhard colour normalisation: LAB mean and spread matched to a fixed reference.",
            apply=reinhard,
            colour_only=True,
        )
    )
