"""Whole smear fields in a Pascal VOC folder (like ../shared/data/bccd): images, white-cell boxes, cell types.

Layout: ``images/ID.jpg``, ``annotations/ID.xml`` (one ``object`` per cell, ``name`` WBC / RBC / Platelets,
``bndbox`` in pixels), ``splits/{train,val,trainval,test}.txt`` (ids), and optionally ``labels.csv`` with
the white-cell type of each field (column ``Image``: the number in ``BloodImage_%05d``, column ``Category``:
one type, or several joined by commas when a field holds more than one).
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bloodcell_core.ml.fields import cell_crop, corners, encode_png, locator_scores
from bloodcell_core.ml.preprocessing import decode_image
from bloodcell_core.plugin_types import CellBox

WHITE_CELL = "WBC"
# BCCD's cell-type names -> bloodcell's classes
CELL_TYPES = {
    "NEUTROPHIL": "neutrophil",
    "EOSINOPHIL": "eosinophil",
    "LYMPHOCYTE": "lymphocyte",
    "MONOCYTE": "monocyte",
    "BASOPHIL": "basophil",
}


@dataclass(frozen=True)
class Box:
    xmin: int
    ymin: int
    xmax: int
    ymax: int

    @property
    def degenerate(self) -> bool:
        return self.xmax <= self.xmin or self.ymax <= self.ymin


@dataclass(frozen=True)
class Field:
    field_id: str
    image_path: Path
    white_cells: tuple[Box, ...]
    cell_type: str | None  # the bloodcell class of every white cell in it; None when unknown or mixed


def _boxes(annotation: Path) -> tuple[Box, ...]:
    root = ElementTree.parse(annotation).getroot()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != WHITE_CELL:
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{annotation}: a {WHITE_CELL} object without a bndbox")
        xmin, ymin, xmax, ymax = (int(float(bndbox.findtext(key, ""))) for key in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append(Box(xmin, ymin, xmax, ymax))
    return tuple(boxes)


def _cell_types(labels_csv: Path) -> dict[str, str | None]:
    """Field id -> the one bloodcell class of its white cells (None for several types or an unknown one)."""
    if not labels_csv.is_file():
        return {}
    types: dict[str, str | None] = {}
    with labels_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            category = (row.get("Category") or "").strip()
            if not category or not (row.get("Image") or "").strip().isdigit():
                continue
            names = {name.strip() for name in category.split(",")}
            types[f"BloodImage_{int(row['Image']):05d}"] = CELL_TYPES.get(names.pop()) if len(names) == 1 else None
    return types


def read_fields(root: Path | str, split: str = "test") -> list[Field]:
    """The fields of one split of a VOC folder, in the split file's order (fields without an image are skipped)."""
    root = Path(root)
    split_file = root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"no split {split!r} in {root} (expected {split_file})")
    types = _cell_types(root / "labels.csv")
    fields = []
    for field_id in split_file.read_text().split():
        image_path = root / "images" / f"{field_id}.jpg"
        annotation = root / "annotations" / f"{field_id}.xml"
        if image_path.is_file() and annotation.is_file():
            fields.append(Field(field_id, image_path, _boxes(annotation), types.get(field_id)))
    return fields


def typed_cell_crops(root: Path | str, split: str = "test") -> list[tuple[str, bytes, str]]:
    """(name, PNG bytes, class) for every white cell of a single-type field of the split, cropped by its box.

    The crop is ``fields.cell_crop``'s, as for cells found in a submitted field; PNG keeps the
    field's pixels exactly (no second JPEG loss).
    """
    crops = []
    for field in read_fields(root, split):
        if field.cell_type is None:
            continue
        image = None
        for k, box in enumerate(field.white_cells):
            if box.degenerate:
                continue
            if image is None:
                image = decode_image(field.image_path.read_bytes())
            crop = cell_crop(image, box.xmin, box.ymin, box.xmax, box.ymax)
            crops.append((f"{field.field_id}#{k}", encode_png(crop), field.cell_type))
    return crops


def score_locator(
    root: Path | str, split: str, locate: Callable[[np.ndarray], list[CellBox]], progress: Callable[[int], None] = lambda _: None
) -> dict[str, Any]:
    """A locator's precision, recall and F1 on the white-cell boxes of one split (``fields.locator_scores``).

    Degenerate boxes (zero width or height; BCCD has two) are no cells anyone could find and are left out.
    """
    rows = []
    for field in read_fields(root, split):
        truth = [(b.xmin, b.ymin, b.xmax, b.ymax) for b in field.white_cells if not b.degenerate]
        found = [corners(box) for box in locate(decode_image(field.image_path.read_bytes()))]
        rows.append((field.field_id, truth, found))
        progress(1)
    return locator_scores(rows) | {"split": split, "n_fields": len(rows)}
