"""Red cells as ruler and colour chart (plugins/red_cells.py), on generated smears of known scale and colour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bloodcell_core import StepResult
from bloodcell_core.ml.preprocessing import PreprocessingConfig, Preprocessor
from plugins.cell_locator import locate_cell
from plugins.colour_norm import reinhard
from plugins.red_cells import (
    FIELD_DIAMETERS,
    REFERENCE_BACKGROUND,
    REFERENCE_RED_CELL,
    measure_red_cells,
    red_cell_colour,
    red_cell_scale,
)

PEACH, PINK, VIOLET, PALE_BLUE = (238, 222, 205), (214, 160, 168), (80, 40, 150), (190, 180, 225)


def smear(
    diameter: float,
    size: tuple[int, int] = (400, 400),
    *,
    background: tuple[int, int, int] = PEACH,
    red: tuple[int, int, int] = PINK,
    nucleus: float = 0.9,
    cytoplasm: tuple[int, int, int] = PALE_BLUE,
    cell: float = 1.4,
    red_cells: bool = True,
) -> np.ndarray:
    """A field: red cells of ``diameter`` px with a central pallor (isolated ones, an overlapping pair, some cut by
    the edge) around a white cell in the middle (``cell`` and ``nucleus`` in red-cell diameters)."""
    height, width = size
    image = np.full((height, width, 3), background, np.uint8)
    radius = diameter / 2
    if red_cells:
        step = diameter * 1.35
        pallor = tuple(int((a + b) / 2) for a, b in zip(red, background))
        for cy in np.arange(-radius * 0.4, height + radius, step):
            for cx in np.arange(-radius * 0.4, width + radius, step):
                if np.hypot(cx - width / 2, cy - height / 2) < (cell / 2 + 0.6) * diameter:
                    continue  # room for the white cell
                centre = (int(cx), int(cy))
                cv2.circle(image, centre, int(radius), red, -1, cv2.LINE_AA)
                cv2.circle(image, centre, int(radius * 0.35), pallor, -1, cv2.LINE_AA)
        cv2.circle(image, (int(radius + 2), int(height / 2)), int(radius), red, -1, cv2.LINE_AA)  # a pair overlapping ...
        cv2.circle(image, (int(1.6 * radius + 2), int(height / 2)), int(radius), red, -1, cv2.LINE_AA)  # ... the edge
    centre = (width // 2, height // 2)
    cv2.circle(image, centre, int(cell * radius), cytoplasm, -1, cv2.LINE_AA)
    cv2.circle(image, centre, int(nucleus * radius), VIOLET, -1, cv2.LINE_AA)
    return image


@pytest.mark.parametrize(("diameter", "size"), [(40, (400, 400)), (74, (363, 360)), (100, (400, 400)), (150, (600, 800))])
def test_the_red_cell_diameter_is_measured_at_any_scale(diameter, size):
    measured = measure_red_cells(smear(diameter, size))
    assert measured.n_fitted >= 2
    assert measured.diameter == pytest.approx(diameter, rel=0.08)


def test_few_red_cells_in_a_tight_crop_still_give_the_scale():
    crop = smear(90)[110:290, 110:290]  # a white cell with a few red cells cut by the crop's edges
    measured = measure_red_cells(crop)
    assert measured.diameter == pytest.approx(90, rel=0.1)


def test_without_red_cells_the_scale_is_not_measured_and_the_crop_falls_back_to_the_nucleus():
    image = smear(80, red_cells=False)
    assert measure_red_cells(image).diameter is None
    result = red_cell_scale(image)
    assert isinstance(result, StepResult) and result.notes == ("scale not measured",)
    np.testing.assert_array_equal(result.image, locate_cell(image))
    # and the note reaches the cell's prediction through the one preprocessing path
    preprocessor = Preprocessor(PreprocessingConfig(input_size=(64, 64), steps=("red_cell_scale", "reinhard")))
    assert preprocessor.from_decoded_with_notes(image)[1] == ("scale not measured",)
    assert preprocessor.from_decoded_with_notes(smear(80))[1] == ()


def test_one_physical_scale_at_any_magnification():
    """The same cells at two magnifications give the same crop once resized; the crop is FIELD_DIAMETERS red cells."""
    crops = []
    for diameter in (60, 90):
        crop = red_cell_scale(smear(diameter, (500, 500)))
        assert crop.shape[0] == pytest.approx(FIELD_DIAMETERS * diameter, rel=0.08)
        crops.append(cv2.resize(crop, (128, 128), interpolation=cv2.INTER_AREA))
    nuclei = [float((cv2.cvtColor(c, cv2.COLOR_RGB2HSV)[..., 1] > 120).mean()) for c in crops]
    assert nuclei[0] == pytest.approx(nuclei[1], rel=0.1)


def test_a_small_cell_stays_smaller_than_a_large_one():
    """locate_cell shows every cell at one size; the red-cell ruler keeps a lymphocyte smaller than a blast."""
    small, large = smear(80, nucleus=0.9, cell=1.1), smear(80, nucleus=1.8, cell=2.3)

    def nucleus_share(image: np.ndarray) -> float:
        return float((cv2.cvtColor(cv2.resize(image, (128, 128)), cv2.COLOR_RGB2HSV)[..., 1] > 120).mean())

    assert nucleus_share(locate_cell(small)) == pytest.approx(nucleus_share(locate_cell(large)), rel=0.25)
    assert nucleus_share(red_cell_scale(large)) > 3 * nucleus_share(red_cell_scale(small))


def lab_mean(image: np.ndarray, colour: tuple[int, int, int], like: np.ndarray) -> np.ndarray:
    """Mean LAB of ``image`` where ``like`` (the image before the transform) has exactly ``colour``."""
    where = np.all(like == colour, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[where].astype(np.float32).mean(axis=0)


@pytest.mark.parametrize(
    ("background", "red"), [(PEACH, PINK), ((225, 232, 245), (205, 165, 185)), ((245, 235, 215), (190, 120, 130))]
)
def test_colour_is_referenced_to_the_red_cells_and_background(background, red):
    """Read again after the transform, red cells and background take the references' lightness, and the midpoint
    of their chroma the references' midpoint (chroma is shifted, not stretched)."""
    out = measure_red_cells(red_cell_colour(smear(70, background=background, red=red)))
    assert out.background_lab[0] == pytest.approx(REFERENCE_BACKGROUND[0], abs=4)
    assert out.red_cell_lab[0] == pytest.approx(REFERENCE_RED_CELL[0], abs=4)
    middle = (out.background_lab[1:] + out.red_cell_lab[1:]) / 2
    np.testing.assert_allclose(middle, (REFERENCE_BACKGROUND[1:] + REFERENCE_RED_CELL[1:]) / 2, atol=3)


def test_a_cells_own_colour_does_not_move_the_reference():
    """Reinhard matches the whole image's statistics, so a large orange-granulated cell drags the background
    with it; referenced to the red cells, the background stays where it is and the cell keeps its colour."""
    tight = (slice(90, 310), slice(90, 310))  # a single-cell image: the cell fills much of it
    orange, violet = smear(70, cytoplasm=(235, 140, 80), nucleus=1.0, cell=1.5)[tight], smear(70, cell=1.2)[tight]
    backgrounds = {
        name: [lab_mean(step(image), PEACH, image) for image in (orange, violet)]
        for name, step in (("red cells", red_cell_colour), ("reinhard", reinhard))
    }
    assert np.abs(backgrounds["red cells"][0] - backgrounds["red cells"][1]).max() <= 2
    assert np.abs(backgrounds["reinhard"][0] - backgrounds["reinhard"][1]).max() >= 4


def test_without_red_cells_colour_falls_back_to_reinhard():
    image = np.full((200, 200, 3), PEACH, np.uint8)
    cv2.circle(image, (100, 100), 60, VIOLET, -1)
    result = red_cell_colour(image)
    assert isinstance(result, StepResult) and result.notes == ("colour not referenced to red cells",)
    np.testing.assert_array_equal(result.image, reinhard(image))
