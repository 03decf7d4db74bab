"""Red cells as ruler and colour chart: preprocessing steps that read scale and stain off the red cells in view.

A red cell is about 7.5 um across and pink with eosin in every Romanowsky stain, and nearly every analyser image
shows a few. Measured, they say how many pixels a micron is (so a lymphocyte stays smaller than a blast, which
``locate_cell``'s crop to the nucleus's extent hides) and what this laboratory's pink and background look like (so
colour can be referenced to them instead of to the image's own statistics, which also pull a cell's own colour,
an eosinophil's orange or a basophil's violet, towards the average).

- ``red_cell_scale``: crops a square field of FIELD_DIAMETERS red-cell diameters around the central white cell:
  every cell is then shown at one physical scale. Where no red cell can be measured it falls back to
  ``locate_cell``'s crop (the nucleus's extent): scale not measured.
- ``red_cell_colour``: maps each LAB channel so that the red cells and the background take reference colours.
  Where either cannot be measured it falls back to ``reinhard``.

``measure_red_cells`` measures on a copy scaled to WORK_SIDE, so its cost does not grow with the image.
Red cells are the pixels clearly darker in green than the background (haemoglobin absorbs green), pinker than
blue (a white cell's cytoplasm is bluer), away from nuclear stain, and not black padding. Each outline is
fitted with a circle, away from the image's edge, so cells cut by the edge still count; outlines that are no
circle (clumps, overlaps) are left out. The diameter is the median of the good fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from bloodcell_core import PreprocessingStep, StepResult, hookimpl
from bloodcell_core.ml.preprocessing import square_crop
from plugins.cell_locator import central_cell, locate_cell, locate_white_cells, stain_pieces
from plugins.colour_norm import reinhard

WORK_SIDE = 200  # a red cell is still 20-40 px across at this size in analyser images
FIELD_DIAMETERS = 3.0  # crop side in red-cell diameters (~22 um: a monocyte or a large blast fits)
RED_CELL_CONTRAST = 0.06  # a red-cell pixel's green is at least this share under the background's
BACKGROUND_PERCENTILE = 90  # of green, over the image: the background (the brightest of the smear)
MIN_POINTS = 20  # outline points away from the edge a circle fit needs
MAX_RESIDUAL = 0.08  # RMS distance of the outline from its circle, as a share of the radius
MIN_COVER = 0.2  # share of the circle's angle the outline must cover (a cell cut by the edge shows at least this)
MIN_RADIUS, MAX_RADIUS = 0.03, 0.4  # of WORK_SIDE: smaller is a platelet or noise, larger no red cell
WHITE_CELL_REACH = 1.6  # the cytoplasm reaches this many half-extents of the nuclear stain from its centre
MIN_PIECE = 0.1  # of the largest piece of nuclear stain: smaller pieces are platelets or specks
MIN_RED_PIXELS = 0.01  # share of the image red cells must cover for their colour to be read
# Reference colours (OpenCV 8-bit LAB): the middle of PBC's and Munich's red cells and backgrounds.
REFERENCE_RED_CELL = np.array([193.7, 141.0, 128.8], dtype=np.float32)
REFERENCE_BACKGROUND = np.array([237.8, 130.5, 137.0], dtype=np.float32)
MIN_SPREAD = 4.0  # LAB levels between red cells and background under which a channel is shifted, not stretched
MIN_GAIN, MAX_GAIN = 0.5, 2.0  # a slope outside these is a poor measurement, not a stain: shift only


@dataclass(frozen=True)
class RedCells:
    """What the red cells of one image say: their diameter in the image's pixels (None: not measured), and the
    mean LAB colour of red cells and background (None: too few red-cell pixels to read)."""

    diameter: float | None
    n_fitted: int
    red_cell_lab: np.ndarray | None
    background_lab: np.ndarray | None


def _fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """(radius, RMS residual, share of the angle covered) of the least-squares circle through the points."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    (cx, cy, c), *_ = np.linalg.lstsq(np.c_[2 * x, 2 * y, np.ones_like(x)], x * x + y * y, rcond=None)
    radius = float(np.sqrt(max(c + cx * cx + cy * cy, 0.0)))
    residual = float(np.sqrt(np.mean((np.hypot(x - cx, y - cy) - radius) ** 2)))
    sectors = np.unique(((np.arctan2(y - cy, x - cx) + np.pi) / (2 * np.pi) * 36).astype(int) % 36)
    return radius, residual, len(sectors) / 36


def white_cell_mask(small: np.ndarray) -> np.ndarray:
    """The white cell with its cytoplasm, which may be as pink as a red cell (an eosinophil's granules): a disc of
    WHITE_CELL_REACH times the half-extent of the nuclear stain (the locator's pieces; those under MIN_PIECE of the
    largest, platelets, left out) around its centre."""
    mask = np.zeros(small.shape[:2], np.uint8)
    found = stain_pieces(small)
    if found is None:
        return mask
    stats = found[1][1:]
    pieces = stats[stats[:, cv2.CC_STAT_AREA] >= MIN_PIECE * stats[:, cv2.CC_STAT_AREA].max()]
    x0, y0 = pieces[:, cv2.CC_STAT_LEFT].min(), pieces[:, cv2.CC_STAT_TOP].min()
    x1 = (pieces[:, cv2.CC_STAT_LEFT] + pieces[:, cv2.CC_STAT_WIDTH]).max()
    y1 = (pieces[:, cv2.CC_STAT_TOP] + pieces[:, cv2.CC_STAT_HEIGHT]).max()
    cv2.circle(mask, (int(x0 + x1) // 2, int(y0 + y1) // 2), int(WHITE_CELL_REACH * max(x1 - x0, y1 - y0) / 2), 1, -1)
    return mask


def red_cell_mask(small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(red-cell mask, background mask, white-cell mask) of an RGB uint8 image."""
    signed = small.astype(np.int16)
    red, green, blue = signed[..., 0], signed[..., 1], signed[..., 2]
    valid = signed.sum(axis=2) > 60  # not black padding (some Munich images have a black band)
    if not valid.any():
        empty = np.zeros(small.shape[:2], np.uint8)
        return empty, empty, empty
    histogram = np.cumsum(cv2.calcHist([small[..., 1]], [0], valid.astype(np.uint8), [256], [0, 256]).ravel())
    background_green = float(np.searchsorted(histogram, histogram[-1] * BACKGROUND_PERCENTILE / 100))
    white_cell = white_cell_mask(small)
    red_cells = (green < background_green * (1 - RED_CELL_CONTRAST)) & (red - blue > -5) & valid & (white_cell == 0)
    mask = cv2.morphologyEx(red_cells.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))  # the central pallor's rim joins
    background = (green >= background_green * (1 - RED_CELL_CONTRAST / 2)) & valid & (white_cell == 0)
    return mask, background.astype(np.uint8), white_cell


def measure_red_cells(image: np.ndarray) -> RedCells:
    """Measure the red cells of an RGB uint8 image: diameter (median of the circle fits) and colours."""
    height, width = image.shape[:2]
    factor = min(1.0, WORK_SIDE / max(height, width))
    small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))), interpolation=cv2.INTER_AREA)
    mask, background, white_cell = red_cell_mask(small)
    rows, cols = mask.shape
    # an outline where the image's edge or the white cell cuts a red cell is no part of its circle
    cut = cv2.dilate(white_cell, np.ones((5, 5), np.uint8))
    cut[:2, :] = cut[-2:, :] = cut[:, :2] = cut[:, -2:] = 1
    radii = []
    for contour in cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]:
        points = contour[:, 0, :]
        inner = points[cut[points[:, 1], points[:, 0]] == 0]
        if len(inner) < MIN_POINTS:
            continue
        radius, residual, cover = _fit_circle(inner)
        if MIN_RADIUS * WORK_SIDE < radius < MAX_RADIUS * WORK_SIDE and residual <= MAX_RESIDUAL * radius and cover >= MIN_COVER:
            radii.append(radius)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    enough = mask.mean() >= MIN_RED_PIXELS and background.mean() >= MIN_RED_PIXELS
    return RedCells(
        diameter=2 * float(np.median(radii)) / factor if radii else None,
        n_fitted=len(radii),
        red_cell_lab=np.array(cv2.mean(lab, mask)[:3], np.float32) if enough else None,
        background_lab=np.array(cv2.mean(lab, background)[:3], np.float32) if enough else None,
    )


SCALE_NOT_MEASURED = "scale not measured"  # no red cell measured: the crop is sized by the nucleus instead
COLOUR_NOT_REFERENCED = "colour not referenced to red cells"  # too few red-cell or background pixels: Reinhard instead


def red_cell_scale(image: np.ndarray) -> np.ndarray | StepResult:
    """The central white cell in a square of FIELD_DIAMETERS red-cell diameters; ``locate_cell``'s crop where no
    red cell can be measured, noted SCALE_NOT_MEASURED."""
    diameter = measure_red_cells(image).diameter
    if diameter is None:
        return StepResult(locate_cell(image), (SCALE_NOT_MEASURED,))
    height, width = image.shape[:2]
    cell = central_cell(locate_white_cells(image), height, width)
    cx, cy = cell.centre if cell is not None else (width / 2, height / 2)
    return square_crop(image, cx, cy, round(FIELD_DIAMETERS * diameter))


def colour_table(red_cell: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per LAB channel, the 256-entry table mapping the measured background and red-cell colours onto the
    references: for lightness a straight line through both; for the chroma channels, and for lightness where
    the two are too close or lie the other way round to set a slope (MIN_GAIN..MAX_GAIN), a shift of their
    midpoint onto the references'."""
    spread = (background - red_cell).astype(np.float32)
    reference_spread = REFERENCE_BACKGROUND - REFERENCE_RED_CELL
    gain = reference_spread / np.where(np.abs(spread) < MIN_SPREAD, np.inf, spread)
    gain = np.where((gain >= MIN_GAIN) & (gain <= MAX_GAIN), gain, 1.0).astype(np.float32)
    gain[1:] = 1.0  # chroma is shifted only: a slope set by two pale points would stretch the nuclei's violet
    middle, reference_middle = (background + red_cell) / 2, (REFERENCE_BACKGROUND + REFERENCE_RED_CELL) / 2
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = (levels - middle) * gain + reference_middle
    return np.clip(np.rint(table), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def red_cell_colour(image: np.ndarray) -> np.ndarray | StepResult:
    """Colour referenced to the red cells and the background; ``reinhard`` where they cannot be read, noted
    COLOUR_NOT_REFERENCED."""
    measured = measure_red_cells(image)
    if measured.red_cell_lab is None or measured.background_lab is None:
        return StepResult(reinhard(image), (COLOUR_NOT_REFERENCED,))
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    return cv2.cvtColor(cv2.LUT(lab, colour_table(measured.red_cell_lab, measured.background_lab)), cv2.COLOR_LAB2RGB)


@hookimpl
def register_preprocessing_steps(register: Callable[[PreprocessingStep], None]) -> None:
    register(
        PreprocessingStep(
            name="red_cell_scale",
            description=f"Crop the central white cell in a square of {FIELD_DIAMETERS:g} red-cell diameters (one physical "
            "scale); locate_cell's crop where no red cell can be measured.",
            apply=red_cell_scale,
        )
    )
    register(
        PreprocessingStep(
            name="red_cell_colour",
            description="Map LAB colour so red cells and background take reference colours; reinhard where they cannot be read.",
            apply=red_cell_colour,
        )
    )
