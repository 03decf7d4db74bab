"""The generalisation table and lab adaptation, end to end on real data with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import DATA, run_cli

from bloodcell_core.ml.artifacts import read_metadata
from bloodcell_core.ml.smear_fields import read_fields, typed_cell_crops

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_bccd_fields_and_typed_crops():
    fields = read_fields(DATA / "bccd", "test")
    assert len(fields) == 72 and sum(len(f.white_cells) for f in fields) == 71
    crops = typed_cell_crops(DATA / "bccd", "test")
    assert len(crops) == 71 and {label for _, _, label in crops} <= {"neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"}
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for _, data, _ in crops)
    with pytest.raises(FileNotFoundError, match="no split 'nope'"):
        read_fields(DATA / "bccd", "nope")


def test_generalisation_table_for_a_model(tiny_model: Path, tmp_path: Path):
    result = run_cli("generalisation", str(tiny_model), "--out", str(tmp_path), "--json")
    rows = json.loads(result.stdout)
    assert json.loads((tmp_path / "generalisation.json").read_text()) == rows
    assert (tmp_path / "generalisation.md").read_text().startswith("| model | set | kind |")
    assert [row["kind"] for row in rows] == [
        "same source",
        "source swap",
        "source swap",
        "other laboratory",
        "synthetic shift",
        "synthetic shift",
        "synthetic shift",
        "synthetic shift",
    ]
    same, pbc, munich, bccd = rows[:4]
    assert same["n"] == read_metadata(tiny_model).metrics["test"]["n"] and same["ood_auroc"] is None
    assert pbc["n"] == 849 and munich["n"] > 800  # the tiny model saw 12 Munich neutrophils; PBC's it never saw
    assert 0.0 <= pbc["source_probe_accuracy"] <= 1.0 and "source_probe_accuracy" not in same
    # the 5-class model knows BCCD's neutrophils (as seg_neutrophil), monocytes and basophils only
    assert bccd["n"] == 46 and bccd["n_images"] == 71
    for row in rows[1:]:
        assert 0.0 <= row["ood_auroc"] <= 1.0 and 0.0 <= row["unfamiliar_share"] <= 1.0
        assert row["coverage"] is None or 0.0 <= row["coverage"] <= 1.0
    assert rows[-1]["set"].startswith("uniform RGB noise") and rows[-1]["n"] == 0 and rows[-1]["n_images"] == 100


def write_lab(cells: list[tuple[str, bytes, str]], folder: Path) -> Path:
    for name, data, label in cells:
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{name.replace('#', '_')}.png").write_bytes(data)
    return folder


def test_adapt_fine_tunes_on_lab_cells_and_keeps_the_held_out_split(tiny_model: Path, tmp_path: Path):
    """BCCD cells as a laboratory's reviewed cells, for the 5-class tiny model (neutrophil is its seg_neutrophil)."""
    base = read_metadata(tiny_model)
    cells = [
        (name, data, "seg_neutrophil" if label == "neutrophil" else label)
        for name, data, label in typed_cell_crops(DATA / "bccd", "trainval")[:30]
    ]
    assert {label for _, _, label in cells} - set(base.classes)  # BCCD has eosinophils: not a class of this model
    refused = run_cli(
        "adapt", str(tiny_model), "--data", str(write_lab(cells, tmp_path / "all")), "--out", str(tmp_path / "x"), check=False
    )
    assert refused.returncode == 1 and "classes the model does not know: ['eosinophil'" in refused.stderr
    lab = write_lab([cell for cell in cells if cell[2] in base.classes], tmp_path / "lab")
    out = tmp_path / "adapted"
    run_cli("adapt", str(tiny_model), "--data", str(lab), "--out", str(out), "--epochs", "1", "--replay-per-class", "3")
    metadata = read_metadata(out)
    n_lab = sum(1 for _ in lab.rglob("*.png"))
    assert metadata.adaptation["lab_cells"] == n_lab and metadata.adaptation["replay_per_class"] == 3
    assert metadata.classes == base.classes and metadata.preprocessing == base.preprocessing
    split, base_split = (json.loads((d / "split.json").read_text()) for d in (out, tiny_model))
    for part in ("val", "test"):  # calibration and test figures stay on the model's own held-out images
        assert sorted(i["sha256"] for i in split[part]) == sorted(i["sha256"] for i in base_split[part])
    assert len(split["train"]) == 3 * len(base.classes) + n_lab
    assert metadata.calibration["ood"]["threshold"] > 0
    predicted = json.loads(run_cli("predict", str(out), str(next(lab.rglob("*.png"))), "--json").stdout)
    assert predicted[0]["label"] in base.classes
