from pathlib import Path

import numpy as np
import pytest
from helpers import KAGGLE5, encode

from bloodcell_core.ml.dataset import index_dataset
from bloodcell_core.ml.splits import Split, make_split

pytestmark = pytest.mark.real_data


def test_split_is_stratified_deterministic_and_leak_free(pbc8_index):
    split = make_split(pbc8_index, seed=3)
    again = make_split(pbc8_index, seed=3)
    assert split.to_json() == again.to_json()
    assert make_split(pbc8_index, seed=4).hashes("test") != split.hashes("test")
    train, val, test = (split.hashes(name) for name in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    for label, n_train in split.counts()["train"].items():
        total = n_train + split.counts()["val"][label] + split.counts()["test"][label]
        assert abs(n_train / total - 0.70) < 0.01 and abs(split.counts()["test"][label] / total - 0.15) < 0.01


def test_duplicates_stay_together_and_conflicts_are_excluded(pbc8_index):
    split = make_split(pbc8_index, seed=0)
    paired = [item for items in split.parts.values() for item in items if len(item.paths) > 1]
    assert len(paired) == 15  # the 16 duplicate groups, less the cross-class one
    assert [sorted(e["paths"]) for e in split.excluded] == [["eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"]]
    all_paths = [p for items in split.parts.values() for item in items for p in item.paths]
    assert "neutrophil/.DS_169665.jpg" not in all_paths and len(all_paths) == len(set(all_paths))


def test_split_round_trips_through_json(pbc8_index):
    split = make_split(pbc8_index, seed=1)
    assert Split.from_json(split.to_json()).to_json() == split.to_json()


def test_adding_images_does_not_move_existing_ones_across_sides(tmp_path: Path):
    rng = np.random.default_rng(0)
    for label in ("x", "y"):
        (tmp_path / label).mkdir()
        for k in range(40):
            (tmp_path / label / f"{k}.png").write_bytes(encode(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)))
    before = make_split(index_dataset(tmp_path, progress=False))
    for k in range(40, 44):
        (tmp_path / "x" / f"{k}.png").write_bytes(encode(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)))
    after = make_split(index_dataset(tmp_path, progress=False))
    moved = sum(1 for h in before.hashes("test") if h not in after.hashes("test"))
    assert moved <= 1  # only a cut point can shift by one image


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        make_split(index_dataset(KAGGLE5, classes=["basophil"], progress=False), fractions=(0.8, 0.3, 0.1))
