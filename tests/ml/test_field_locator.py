"""Whole smear fields: the stain_nucleus locator on generated and real (BCCD) fields, the crops, the scores."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers import BCCD, encode, run_cli, touching_cells_field

from bloodcell_core.ml.fields import (
    BOX_CONFIDENT,
    BOX_TO_REVIEW,
    FieldTooCrowded,
    cut_field,
    draw_overlay,
    iou,
    locator_scores,
    match_boxes,
)
from bloodcell_core.ml.preprocessing import ImageDecodeError, decode_image
from bloodcell_core.ml.smear_fields import read_fields, score_locator
from bloodcell_core.plugin_manager import get_cell_locator
from plugins.cell_locator import locate_field_cells

PEACH, PINK, VIOLET = (238, 214, 196), (214, 150, 160), (95, 50, 150)


def field(nuclei=((320, 240, 35),), red_cells=40, platelets=8, size=(480, 640), seed=0) -> np.ndarray:
    """A generated field: pink red cells, small violet platelets and violet nuclei at (x, y, radius)."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), PEACH, np.uint8)
    for _ in range(red_cells):
        cv2.circle(image, (int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))), 30, PINK, -1)
    for _ in range(platelets):
        cv2.circle(image, (int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))), 4, VIOLET, -1)
    for x, y, radius in nuclei:
        cv2.circle(image, (x, y), radius, VIOLET, -1)
    return image


def test_the_registered_locator_is_the_field_locator():
    assert get_cell_locator("stain_nucleus").locate is locate_field_cells


def test_white_cells_are_found_and_boxed_with_their_cytoplasm_while_red_cells_and_platelets_are_not():
    boxes = locate_field_cells(field(nuclei=((200, 200, 35), (480, 300, 30))))
    assert len(boxes) == 2
    first = boxes[0]
    assert abs(first.centre[0] - 200) <= 3 and abs(first.centre[1] - 200) <= 3
    assert 1.2 * 70 <= first.width <= 1.4 * 70  # the stained extent grown to the whole cell
    assert not any(box.touches_edge for box in boxes)


def test_a_field_without_white_cells_finds_none_even_with_platelets():
    assert locate_field_cells(field(nuclei=(), platelets=30)) == []


@pytest.mark.parametrize(
    "image",
    [
        np.full((480, 640, 3), PEACH, np.uint8),
        np.full((480, 640, 3), VIOLET, np.uint8),  # flat nuclear colour: no cell has a whole field of nucleus
        np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8),
        np.zeros((480, 640, 3), np.uint8),
    ],
    ids=["peach", "violet", "noise", "black"],
)
def test_flat_colour_and_noise_fields_have_no_cells(image):
    assert locate_field_cells(image) == []


def test_lobes_are_one_cell_and_a_cell_cut_by_the_edge_is_marked():
    lobes = field(nuclei=((300, 240, 18), (330, 230, 18), (358, 248, 18)))
    assert len(locate_field_cells(lobes)) == 1
    edge = locate_field_cells(field(nuclei=((10, 240, 35),)))
    assert len(edge) == 1 and edge[0].touches_edge


def test_touching_cells_with_separate_nuclei_are_counted_one_by_one():
    boxes = locate_field_cells(touching_cells_field(10, 6))
    assert len(boxes) == 60
    assert all(60 <= box.width <= 90 for box in boxes)


def test_a_crowded_field_fails_whole_and_the_cut_is_deterministic():
    data = encode(cv2.cvtColor(touching_cells_field(10, 6), cv2.COLOR_RGB2BGR))
    with pytest.raises(FieldTooCrowded, match="60 white cells found in one field, over 50"):
        cut_field(data, locate_field_cells, max_cells=50)
    first, again = (cut_field(data, locate_field_cells, max_cells=60) for _ in range(2))
    assert len(first.cells) == 60 and first == again  # same crops, byte for byte: same sha256s
    crop = decode_image(first.cells[0].png)
    assert crop.shape[0] == crop.shape[1] == round(1.25 * max(first.cells[0].box.width, first.cells[0].box.height))


def test_a_non_image_is_refused_clearly():
    with pytest.raises(ImageDecodeError, match="not an image file"):
        cut_field(b"GIF89a but not really", locate_field_cells, max_cells=50)


def test_the_overlay_is_the_field_with_its_boxes():
    image = field(nuclei=((200, 200, 35),))
    data = encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cut = cut_field(data, locate_field_cells, max_cells=50)
    box = cut.cells[0].box
    frame = (box.y + box.height // 2, box.x)  # a pixel of the box's left side
    confident = decode_image(draw_overlay(data, [(cell.box, "neutrophil", False) for cell in cut.cells]))
    assert confident.shape == image.shape
    assert tuple(confident[frame]) == BOX_CONFIDENT[::-1]  # RGB of the green frame
    # a cell to review is never green: it has a colour of its own, the one the console's legend names
    to_review = decode_image(draw_overlay(data, [(cell.box, "neutrophil", True) for cell in cut.cells]))
    assert tuple(to_review[frame]) == BOX_TO_REVIEW[::-1]


def test_scores_count_each_found_box_once():
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert match_boxes(truth, [(0, 0, 10, 10), (1, 1, 10, 10)]) == 1  # two boxes on one cell: one match
    scores = locator_scores([("a", truth, [(0, 0, 10, 10), (50, 50, 60, 60)]), ("b", [], [])])
    assert (scores["precision"], scores["recall"], scores["n_true"], scores["n_found"]) == (0.5, 0.5, 2, 2)
    assert [(f["field"], f["missed"], f["extra"]) for f in scores["erring_fields"]] == [("a", 1, 1)]


@pytest.mark.real_data
def test_on_bccd_test_fields_every_white_cell_is_found():
    """The README's figure. The extra boxes are white cells that BCCD's annotation lacks (looked at by eye)."""
    scores = score_locator(BCCD, "test", locate_field_cells)
    assert scores["n_fields"] == 72 and scores["n_true"] == 71
    assert scores["recall"] >= 0.97 and scores["precision"] >= 0.94
    assert {f["field"] for f in scores["erring_fields"]} == {
        "BloodImage_00135",
        "BloodImage_00171",
        "BloodImage_00178",
        "BloodImage_00327",
    }


@pytest.mark.real_data
def test_locate_commands_print_boxes_and_scores(tmp_path):
    fields = read_fields(BCCD, "test")
    two = next(f for f in fields if len(f.white_cells) == 2)
    (tmp_path / "not-an-image.jpg").write_bytes(b"hello")
    result = run_cli(
        "locate", str(two.image_path), str(tmp_path / "not-an-image.jpg"), "--json", "--crops", str(tmp_path / "crops"), check=False
    )
    assert result.returncode == 1  # one field failed, the other was still located
    entries = json.loads(result.stdout)
    assert len(entries[0]["cells"]) == 2 and set(entries[0]["cells"][0]) >= {"x", "y", "width", "height", "touches_edge"}
    assert "not an image file" in entries[1]["error"]
    assert len(list((tmp_path / "crops").glob("*.png"))) == 2
    scores = json.loads(run_cli("locate", "evaluate", str(BCCD), "--split", "test", "--json").stdout)
    assert set(scores) >= {"precision", "recall", "f1", "n_true", "n_found", "erring_fields"}
    assert scores["recall"] >= 0.97
