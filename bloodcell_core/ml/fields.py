"""Whole smear fields: cut into white-cell crops, scored against annotated boxes, drawn with their boxes.

A field is decoded once; a locator plugin finds its white cells; each cell becomes a PNG crop (a
square of CROP_MARGIN times the box's longer side, centred on the box, so the model's own
``locate_cell`` step sees the whole cell and some background, as in a single-cell image). The crop
is then an ordinary cell image: stored by its sha256, classified, reviewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from bloodcell_core.ml.preprocessing import decode_image, square_crop
from bloodcell_core.plugin_types import CellBox

CROP_MARGIN = 1.25  # crop side / the box's longer side
IOU_MATCH = 0.5  # a found box matches a true one at this intersection over union or more (PASCAL VOC's rule)
Corners = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in pixels


class FieldTooCrowded(ValueError):
    """More white cells in one field than the limit allows: nothing of the field is kept."""


@dataclass(frozen=True)
class FieldCell:
    box: CellBox
    png: bytes  # the cell's crop, lossless


@dataclass(frozen=True)
class CutField:
    width: int
    height: int
    cells: tuple[FieldCell, ...]


def cell_crop(image: np.ndarray, xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
    """The square crop of CROP_MARGIN times the box's longer side around a box (padded at the field's edge)."""
    side = round(CROP_MARGIN * max(xmax - xmin, ymax - ymin))
    return square_crop(image, (xmin + xmax) / 2, (ymin + ymax) / 2, max(1, side))


def encode_png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("the crop could not be encoded as PNG")
    return encoded.tobytes()


def cut_field(data: bytes, locate: Callable[[np.ndarray], list[CellBox]], max_cells: int) -> CutField:
    """Decode a field, find its white cells and crop each one; deterministic, so the same field gives
    the same crops (and sha256s) every time. ImageDecodeError for bytes that are no image,
    FieldTooCrowded above MAX_CELLS."""
    image = decode_image(data)
    boxes = locate(image)
    if len(boxes) > max_cells:
        raise FieldTooCrowded(f"{len(boxes)} white cells found in one field, over {max_cells} (BLOODCELL_MAX_CELLS_PER_FIELD)")
    height, width = image.shape[:2]
    cells = tuple(FieldCell(box, encode_png(cell_crop(image, box.x, box.y, box.x + box.width, box.y + box.height))) for box in boxes)
    return CutField(width, height, cells)


def corners(box: CellBox) -> Corners:
    return (box.x, box.y, box.x + box.width, box.y + box.height)


def iou(a: Corners, b: Corners) -> float:
    """Intersection over union of two boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(truth: Sequence[Corners], found: Sequence[Corners], threshold: float = IOU_MATCH) -> int:
    """How many true boxes a found box matches, each found box used once (greedy by overlap, as VOC scores)."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_truth: set[int] = set()
    used_found: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i not in used_truth and j not in used_found:
            used_truth.add(i)
            used_found.add(j)
    return len(used_truth)


def locator_scores(fields: Iterable[tuple[str, Sequence[Corners], Sequence[Corners]]], threshold: float = IOU_MATCH) -> dict[str, Any]:
    """Precision, recall and F1 of found boxes against true ones over (field id, true, found) triples,
    and the fields where the two disagree (a box missed, or one found where none is annotated)."""
    n_true = n_found = n_matched = 0
    erring = []
    for field_id, truth, found in fields:
        matched = match_boxes(truth, found, threshold)
        n_true, n_found, n_matched = n_true + len(truth), n_found + len(found), n_matched + matched
        if matched < len(truth) or matched < len(found):
            erring.append(
                {
                    "field": field_id,
                    "n_true": len(truth),
                    "n_found": len(found),
                    "missed": len(truth) - matched,
                    "extra": len(found) - matched,
                    "found": [[round(v) for v in box] for box in found],
                    "true": [[round(v) for v in box] for box in truth],
                }
            )
    precision = n_matched / n_found if n_found else 1.0
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "iou_threshold": threshold,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "n_true": n_true,
        "n_found": n_found,
        "n_matched": n_matched,
        "erring_fields": erring,
    }


# BGR box colours of an overlay; the console's legend (web/static/console.css, .legend) shows the same three
BOX_CONFIDENT, BOX_TO_REVIEW, BOX_CUT_BY_EDGE = (40, 170, 40), (40, 40, 220), (0, 160, 255)


def draw_overlay(data: bytes, cells: Sequence[tuple[CellBox, str, bool]]) -> bytes:
    """The field as PNG with each cell's box drawn and its label written above it. A cell is (box, label,
    needs review): a cell to review is red, whatever else holds; one cut by the field's edge orange; others green."""
    image = cv2.cvtColor(decode_image(data), cv2.COLOR_RGB2BGR)
    thickness = max(2, round(max(image.shape[:2]) / 320))
    scale = max(0.5, max(image.shape[:2]) / 1280)
    for box, label, needs_review in cells:
        colour = BOX_TO_REVIEW if needs_review else BOX_CUT_BY_EDGE if box.touches_edge else BOX_CONFIDENT
        cv2.rectangle(image, (box.x, box.y), (box.x + box.width - 1, box.y + box.height - 1), colour, thickness)
        if label:
            (text_width, text_height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = max(0, box.y - text_height - baseline - 4)
            cv2.rectangle(image, (box.x, top), (box.x + text_width + 4, top + text_height + baseline + 4), colour, -1)
            cv2.putText(image, label, (box.x + 2, top + text_height + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("the overlay could not be encoded as PNG")
    return encoded.tobytes()
