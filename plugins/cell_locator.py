"""Find white cells by their nucleus stain, and crop single-cell images to the cell at a fixed scale.

In a Romanowsky-stained smear the white cell's nucleus is the most strongly violet thing in view:
blue well above green, where red cells (pink), platelets' halo and the background (peach, grey or
bluish) are not. The locator thresholds that blue-minus-green score (Otsu, with a floor so that an
image with no stained nucleus finds nothing), joins the pieces of one cell (a neutrophil's lobes,
a basophil's granules) and reports a box per cell, largest first.

``locate_cell`` crops an image to the cell nearest its centre, square, with the side a fixed
multiple of the cell's stained extent. Every source then shows its cells at the same size in
pixels: the magnification, the image size and the amount of background, which differ between
laboratories and predicted the class in the training data, no longer carry it.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from bloodcell_core import CellBox, CellLocator, PreprocessingStep, hookimpl
from bloodcell_core.ml.preprocessing import square_crop

WORK_SIDE = 256  # the score is computed on a copy scaled to this longer side: same cost for any image size
MIN_SCORE = 30  # blue minus green, 0..255: no stained nucleus in view scores under this
MIN_AREA_FRACTION = 0.10  # of the largest stained piece: smaller pieces are platelets, debris or noise
JOIN_FRACTION = 0.15  # pieces closer than this share of the largest piece's extent belong to one cell
CROP_SCALE = 1.6  # crop side / the cell's stained extent (nucleus plus its nearby pieces)


def nucleus_score(image: np.ndarray) -> np.ndarray:
    """Blue minus green, clipped to 0..255 and smoothed: high on violet nuclear stain."""
    difference = image[..., 2].astype(np.int16) - image[..., 1].astype(np.int16)
    return cv2.GaussianBlur(np.clip(difference, 0, 255).astype(np.uint8), (5, 5), 0)


def locate_white_cells(image: np.ndarray) -> list[CellBox]:
    """White cells of an RGB uint8 image, largest stained area first; [] when no nucleus is in view."""
    height, width = image.shape[:2]
    factor = WORK_SIDE / max(height, width)
    small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))), interpolation=cv2.INTER_AREA)
    score = nucleus_score(small)
    if int(score.max()) < MIN_SCORE:
        return []
    otsu, _ = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask: np.ndarray = (score > max(otsu, MIN_SCORE)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    keep = np.flatnonzero(areas >= MIN_AREA_FRACTION * largest) + 1
    pieces = np.isin(labels, keep).astype(np.uint8)
    # Join the lobes and granules of one cell: dilate by a share of the largest piece's extent.
    largest_extent = int(stats[1:, [cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]].max())
    radius = max(1, round(JOIN_FRACTION * largest_extent))
    joined = cv2.dilate(pieces, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    m, cell_labels = cv2.connectedComponents(joined, connectivity=8)
    boxes = []
    for k in range(1, m):
        ys, xs = np.nonzero((cell_labels == k) & (pieces > 0))
        if len(xs) == 0:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        edge = x0 == 0 or y0 == 0 or x1 == small.shape[1] or y1 == small.shape[0]
        boxes.append(
            CellBox(
                x=int(x0 / factor),
                y=int(y0 / factor),
                width=max(1, round((x1 - x0) / factor)),
                height=max(1, round((y1 - y0) / factor)),
                stained_area=round(len(xs) / factor**2),
                touches_edge=bool(edge),
            )
        )
    return sorted(boxes, key=lambda box: -box.stained_area)


def central_cell(boxes: list[CellBox], height: int, width: int) -> CellBox | None:
    """The cell a single-cell image is about: large and near the centre (stained area over distance)."""
    if not boxes:
        return None
    diagonal = float(np.hypot(height, width))

    def weight(box: CellBox) -> float:
        cx, cy = box.centre
        return box.stained_area / (1.0 + 4.0 * np.hypot(cx - width / 2, cy - height / 2) / diagonal)

    return max(boxes, key=weight)


def locate_cell(image: np.ndarray) -> np.ndarray:
    """Crop to the central white cell at CROP_SCALE times its stained extent; the largest centred
    square when no nucleus is found (the out-of-distribution score then judges the image)."""
    height, width = image.shape[:2]
    cell = central_cell(locate_white_cells(image), height, width)
    if cell is None:
        side = min(height, width)
        return square_crop(image, width / 2, height / 2, side)
    cx, cy = cell.centre
    return square_crop(image, cx, cy, round(CROP_SCALE * max(cell.width, cell.height)))


@hookimpl
def register_cell_locators(register: Callable[[CellLocator], None]) -> None:
    register(
        CellLocator(
            name="stain_nucleus",
            description="OpenCV: Otsu threshold on blue-minus-green nuclear stain, pieces of one cell joined.",
            locate=locate_white_cells,
        )
    )


@hookimpl
def register_preprocessing_steps(register: Callable[[PreprocessingStep], None]) -> None:
    register(
        PreprocessingStep(
            name="locate_cell",
            description=f"Crop to the central white cell, square, {CROP_SCALE}x its stained extent (fixed cell scale).",
            apply=locate_cell,
        )
    )
