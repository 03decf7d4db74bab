"""Find white cells by their nucleus stain: in whole smear fields, and in single-cell images to crop them at a fixed scale.

In a Romanowsky-stained smear the white cell's nucleus is the most strongly violet thing in view:
blue well above green, where red cells (pink), platelets' halo and the background (peach, grey or
bluish) are not. The locator thresholds that blue-minus-green score (Otsu, with a floor so that an
image with no stained nucleus finds nothing), joins the pieces of one cell (a neutrophil's lobes,
a basophil's granules) and reports a box per cell, largest first.

``locate_field_cells`` (the registered ``stain_nucleus`` locator) works on whole fields, where there
may be no white cell at all: its thresholds are shares of the field's area rather than of the largest
piece, so platelets stay out, and it reports each cell's whole-cell box (the stained extent grown to
take in the cytoplasm), as a technologist or an annotator would draw it.

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

# Whole fields (tuned on BCCD's trainval split only; its test split is for reporting). Shares of the
# largest piece or cell keep the rules free of the magnification; the floors (shares of the field)
# keep a field without any white cell from turning its platelets into cells.
FIELD_WORK_SIDE = 640  # larger fields are scaled down to this longer side first
FIELD_PIECE_FLOOR = 0.0008  # of the field's area, and ...
FIELD_PIECE_SHARE = 0.05  # ... of the largest piece: a smaller stained piece is a platelet or debris
FIELD_JOIN_SHARE = 0.10  # of the largest piece's extent: pieces closer than this are lobes of one cell
FIELD_CELL_FLOOR = 0.003  # of the field's area, and ...
FIELD_CELL_SHARE = 0.35  # ... of the most stained cell: a white cell has at least this much nuclear stain
FIELD_CELL_CEILING = 0.25  # of the field's area: more stain in one piece is a flat-coloured image, not a cell
FIELD_GROW = 1.3  # whole-cell box side / stained extent: the cytoplasm around the nucleus


def nucleus_score(image: np.ndarray) -> np.ndarray:
    """Blue minus green, clipped to 0..255 and smoothed: high on violet nuclear stain."""
    _, green, blue = cv2.split(image)
    return cv2.GaussianBlur(cv2.subtract(blue, green), (5, 5), 0)  # uint8 subtraction saturates at 0


def _scaled(image: np.ndarray, factor: float) -> np.ndarray:
    """IMAGE scaled by FACTOR. Down to half size bilinear: the score is smoothed after it anyway, and area
    averaging at an analyser image's factor (about 0.64) cost five times as much (1.7 core-ms of a 5 ms pipeline).
    Further down bilinear would skip pixels (a thin lobe could vanish), so area averaging."""
    if factor == 1.0:
        return image
    height, width = image.shape[:2]
    interpolation = cv2.INTER_LINEAR if factor >= 0.5 else cv2.INTER_AREA
    return cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))), interpolation=interpolation)


def stain_pieces(small: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, stats) of the connected pieces of nuclear stain; None when nothing is stained."""
    score = nucleus_score(small)
    if int(score.max()) < MIN_SCORE:
        return None
    otsu, _ = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, mask = cv2.threshold(score, max(otsu, MIN_SCORE), 1, cv2.THRESH_BINARY)  # score > threshold: 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # 16-bit labels (a third of the cost) wherever they cannot overflow: after the opening, at most one piece per
    # four pixels
    label_type = cv2.CV_16U if mask.size <= 4 * np.iinfo(np.uint16).max else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, label_type, cv2.CCL_DEFAULT)
    return (labels, stats) if n > 1 else None


def _join(labels: np.ndarray, stats: np.ndarray, keep: np.ndarray, radius: int) -> list[tuple[int, int, int, int, int]]:
    """The kept pieces within RADIUS of each other joined as one cell: (x0, y0, x1, y1, stained area) of
    each cell's pieces, in the order of the dilated mask's connected components.

    Only the kept pieces' bounding region, grown by the radius, is dilated (nothing outside it can be
    reached), and each cell's box and area are the union and sum of its pieces' own statistics.
    """
    left, top = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    right, bottom = left + stats[keep, cv2.CC_STAT_WIDTH], top + stats[keep, cv2.CC_STAT_HEIGHT]
    if len(keep) == 1:  # one piece is one cell (most single-cell images): the dilation would only cost time
        return [(int(left[0]), int(top[0]), int(right[0]), int(bottom[0]), int(stats[keep[0], cv2.CC_STAT_AREA]))]
    height, width = labels.shape
    x0, y0 = max(0, int(left.min()) - radius), max(0, int(top.min()) - radius)
    x1, y1 = min(width, int(right.max()) + radius), min(height, int(bottom.max()) + radius)
    region = labels[y0:y1, x0:x1]
    is_kept = np.zeros(len(stats), np.uint8)
    is_kept[keep] = 1
    pieces = is_kept[region]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    _, cell_labels = cv2.connectedComponents(cv2.dilate(pieces, kernel), connectivity=8)
    cell_of_piece = np.zeros(len(stats), np.int32)
    stained = pieces > 0
    cell_of_piece[region[stained]] = cell_labels[stained]  # every pixel of one piece lies in one cell
    cells = []
    for cell in np.unique(cell_of_piece[keep]):
        mine = cell_of_piece[keep] == cell
        area = int(stats[keep, cv2.CC_STAT_AREA][mine].sum())
        cells.append((int(left[mine].min()), int(top[mine].min()), int(right[mine].max()), int(bottom[mine].max()), area))
    return cells


def locate_white_cells(image: np.ndarray) -> list[CellBox]:
    """White cells of a single-cell RGB uint8 image, boxed by their stain, largest first; [] when no
    nucleus is in view. Thresholds are shares of the largest piece: the image is about one cell."""
    height, width = image.shape[:2]
    factor = WORK_SIDE / max(height, width)
    small = _scaled(image, factor)
    found = stain_pieces(small)
    if found is None:
        return []
    labels, stats = found
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    keep = np.flatnonzero(areas >= MIN_AREA_FRACTION * largest) + 1
    # Join the lobes and granules of one cell: dilate by a share of the largest piece's extent.
    largest_extent = int(stats[1:, [cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]].max())
    radius = max(1, round(JOIN_FRACTION * largest_extent))
    boxes = []
    for x0, y0, x1, y1, stained_area in _join(labels, stats, keep, radius):
        edge = x0 == 0 or y0 == 0 or x1 == small.shape[1] or y1 == small.shape[0]
        boxes.append(
            CellBox(
                x=int(x0 / factor),
                y=int(y0 / factor),
                width=max(1, round((x1 - x0) / factor)),
                height=max(1, round((y1 - y0) / factor)),
                stained_area=round(stained_area / factor**2),
                touches_edge=bool(edge),
            )
        )
    return sorted(boxes, key=lambda box: -box.stained_area)


def locate_field_cells(image: np.ndarray) -> list[CellBox]:
    """White cells of a whole smear field (RGB uint8), largest stained area first, each boxed whole.

    Small stained pieces are platelets or debris; pieces close together are one cell's lobes or
    granules; a group with much less stain than the most stained one is no white cell (the FIELD_*
    constants). Touching cells whose nuclei stay apart are two cells; nuclei that touch are counted
    as one. A cell whose box reaches the field's edge is marked ``touches_edge``.
    """
    height, width = image.shape[:2]
    factor = min(1.0, FIELD_WORK_SIDE / max(height, width))
    small = _scaled(image, factor)
    found = stain_pieces(small)
    if found is None:
        return []
    labels, stats = found
    small_height, small_width = small.shape[:2]
    area = small_height * small_width
    piece_areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(piece_areas >= max(FIELD_PIECE_FLOOR * area, FIELD_PIECE_SHARE * piece_areas.max())) + 1
    if len(keep) == 0:  # only specks
        return []
    largest_extent = int(stats[keep, cv2.CC_STAT_WIDTH : cv2.CC_STAT_HEIGHT + 1].max())
    cells = _join(labels, stats, keep, max(1, round(FIELD_JOIN_SHARE * largest_extent)))
    most = max(cell[4] for cell in cells)
    boxes = []
    for left, top, right, bottom, stained_area in cells:
        if not max(FIELD_CELL_FLOOR * area, FIELD_CELL_SHARE * most) <= stained_area <= FIELD_CELL_CEILING * area:
            continue
        cx, cy = (left + right) / 2, (top + bottom) / 2
        half_width, half_height = FIELD_GROW * (right - left) / 2, FIELD_GROW * (bottom - top) / 2
        x0, y0 = max(0.0, cx - half_width), max(0.0, cy - half_height)
        x1, y1 = min(float(small_width), cx + half_width), min(float(small_height), cy + half_height)
        boxes.append(
            CellBox(
                x=int(x0 / factor),
                y=int(y0 / factor),
                width=max(1, min(width, round(x1 / factor)) - int(x0 / factor)),
                height=max(1, min(height, round(y1 / factor)) - int(y0 / factor)),
                stained_area=round(stained_area / factor**2),
                touches_edge=bool(x0 == 0 or y0 == 0 or x1 == small_width or y1 == small_height),
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
            description="OpenCV: Otsu threshold on blue-minus-green nuclear stain; platelets dropped by size, "
            "lobes of one cell joined, each cell boxed with its cytoplasm.",
            locate=locate_field_cells,
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
