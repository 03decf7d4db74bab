"""The stain-nucleus cell locator and the locate_cell step: synthetic smears with known cells, then real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import KAGGLE5, PBC8

from bloodcell_core.ml.dataset import read_image_file
from bloodcell_core.ml.preprocessing import ImageDecodeError, decode_image
from bloodcell_core.plugin_manager import get_preprocessing_step
from plugins.cell_locator import locate_cell, locate_white_cells, nucleus_score

pytestmark = pytest.mark.real_data

PEACH, PINK, VIOLET = (238, 214, 196), (214, 150, 160), (95, 50, 150)


def smear(size=(300, 400), nuclei=((200, 150, 30),), red_cells=12, seed=0) -> np.ndarray:
    """A peach background, pink red cells, and violet nuclei at (x, y, radius)."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), PEACH, np.uint8)
    for _ in range(red_cells):
        cv2.circle(image, (int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))), 22, PINK, -1)
    for x, y, radius in nuclei:
        cv2.circle(image, (x, y), radius, VIOLET, -1)
    return image


def test_the_step_is_a_plugin():
    assert get_preprocessing_step("locate_cell").apply is locate_cell


def test_one_nucleus_is_found_and_red_cells_are_not():
    boxes = locate_white_cells(smear())
    assert len(boxes) == 1
    box = boxes[0]
    assert abs(box.centre[0] - 200) <= 3 and abs(box.centre[1] - 150) <= 3
    assert 54 <= box.width <= 66 and 54 <= box.height <= 66 and not box.touches_edge


def test_lobes_of_one_cell_are_joined_and_separate_cells_are_not():
    lobes = smear(nuclei=((180, 150, 14), (205, 140, 14), (228, 156, 14)))
    assert len(locate_white_cells(lobes)) == 1
    two = smear(nuclei=((80, 80, 25), (320, 220, 25)))
    assert len(locate_white_cells(two)) == 2


def test_a_cell_cut_by_the_edge_is_marked():
    boxes = locate_white_cells(smear(nuclei=((10, 150, 30),)))
    assert len(boxes) == 1 and boxes[0].touches_edge


@pytest.mark.parametrize(
    "image",
    [np.full((300, 400, 3), PEACH, np.uint8), np.zeros((50, 60, 3), np.uint8), np.full((300, 400, 3), PINK, np.uint8)],
    ids=["peach", "black", "pink"],
)
def test_no_nucleus_finds_nothing_and_the_step_falls_back_to_a_centred_square(image):
    assert locate_white_cells(image) == []
    crop = locate_cell(image)
    assert crop.shape[0] == crop.shape[1] == min(image.shape[:2])


def test_the_crop_is_a_fixed_multiple_of_the_cell_whatever_the_magnification():
    """The same cell at two magnifications gives the same crop, up to resampling: the size cue is gone."""
    small = smear(nuclei=((200, 150, 30),), red_cells=0)
    large = cv2.resize(smear(nuclei=((200, 150, 30),), red_cells=0), (800, 600), interpolation=cv2.INTER_LINEAR)
    crops = [cv2.resize(locate_cell(image), (64, 64), interpolation=cv2.INTER_AREA) for image in (small, large)]
    assert locate_cell(large).shape[0] == pytest.approx(2 * locate_cell(small).shape[0], rel=0.08)
    assert np.abs(crops[0].astype(int) - crops[1].astype(int)).mean() < 6


def first_images(folder, count: int) -> list[np.ndarray]:
    """The first COUNT decodable images of a folder (the real folders hold a non-image or two)."""
    images = []
    for path in sorted(folder.iterdir()):
        try:
            images.append(decode_image(read_image_file(path)))
        except ImageDecodeError:
            continue
        if len(images) == count:
            break
    return images


def stained_share(image: np.ndarray) -> float:
    score = nucleus_score(image)
    threshold, _ = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float((score > max(threshold, 30)).mean())


def test_real_cells_of_both_sources_come_out_at_one_scale():
    """Neutrophils from Munich (400x400, about twice the magnification) and from PBC (360x363): the share of
    the image their nucleus covers differs by source; after locate_cell it is alike."""
    munich, pbc = (first_images(folder, 20) for folder in (KAGGLE5 / "seg_neutrophil", PBC8 / "neutrophil"))
    raw = [np.median([stained_share(image) for image in images]) for images in (munich, pbc)]
    located = [np.median([stained_share(locate_cell(image)) for image in images]) for images in (munich, pbc)]
    assert raw[0] > 1.4 * raw[1]  # the magnification cue, before
    assert 0.6 < located[0] / located[1] < 1.6  # and after


def joined_by_pixels(labels: np.ndarray, keep: np.ndarray, radius: int) -> list[tuple[int, int, int, int, int]]:
    """The direct way: dilate the whole mask, then collect each group's stained pixels."""
    pieces = np.isin(labels, keep).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    m, cell_labels = cv2.connectedComponents(cv2.dilate(pieces, kernel), connectivity=8)
    groups = [np.nonzero((cell_labels == k) & (pieces > 0)) for k in range(1, m)]
    return [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, len(xs)) for ys, xs in groups if len(xs)]


def test_joining_from_piece_statistics_matches_the_direct_pixel_computation(monkeypatch):
    """``_join`` dilates only the pieces' region and sums their own statistics; on real cells of both
    sources, real smear fields and synthetic smears (lobes, two cells, a cell at the edge) it gives the
    same cells, in the same order, as dilating the whole mask and collecting pixels. Each call the two
    locators make is checked with the very inputs they hand to ``_join``."""
    from helpers import BCCD

    from plugins import cell_locator

    calls = []
    join = cell_locator._join

    def checked_join(labels, stats, keep, radius):
        cells = join(labels, stats, keep, radius)
        calls.append((cells, joined_by_pixels(labels, keep, radius)))
        return cells

    monkeypatch.setattr(cell_locator, "_join", checked_join)
    cells = first_images(KAGGLE5 / "seg_neutrophil", 15) + first_images(PBC8 / "basophil", 15)
    cells += [smear(nuclei=((180, 150, 14), (205, 140, 14), (228, 156, 14))), smear(nuclei=((80, 80, 25), (320, 220, 25)))]
    cells += [smear(nuclei=((10, 150, 30),))]
    for image in cells:
        cell_locator.locate_white_cells(image)
    for image in first_images(BCCD / "images", 10):
        cell_locator.locate_field_cells(image)
    assert len(calls) == len(cells) + 10
    for got, expected in calls:
        assert got == expected
