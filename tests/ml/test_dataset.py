from pathlib import Path

import numpy as np
import pytest
from helpers import KAGGLE5, PBC8, encode, run_cli

from bloodcell_core.ml.dataset import audit_dataset, index_dataset, read_image_file

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def pbc8_audit(pbc8_index):
    return audit_dataset(pbc8_index)


def test_pbc8_audit_finds_the_real_defects(pbc8_audit):
    assert [item["path"] for item in pbc8_audit["unreadable"]] == ["neutrophil/.DS_169665.jpg"]
    assert len(pbc8_audit["duplicate_groups"]) == 16
    assert [sorted(g["files"]) for g in pbc8_audit["cross_class_duplicates"]] == [
        ["eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"]
    ]
    assert pbc8_audit["cross_class_duplicates"][0]["labels"] == ["eosinophil", "neutrophil"]
    assert pbc8_audit["files"] == 6800 and pbc8_audit["images"] == 6799


def test_kaggle5_audit_exposes_the_source_shortcut():
    report = audit_dataset(index_dataset(KAGGLE5, progress=False))
    assert len(report["duplicate_groups"]) == 6 and not report["cross_class_duplicates"]
    assert report["shortcuts"]["size_groups"] == [["basophil", "erythroblast", "monocyte"], ["myeloblast", "seg_neutrophil"]]
    assert report["classes"]["myeloblast"]["sizes"] == {"400x400": 850}
    assert any("image size alone" in w for w in report["shortcuts"]["warnings"])


def test_git_link_stubs_are_followed(tmp_path: Path):
    target = tmp_path / "a" / "cell.png"
    target.parent.mkdir()
    target.write_bytes(encode(np.zeros((4, 4, 3), np.uint8)))
    stub = tmp_path / "b" / "cell.png"
    stub.parent.mkdir()
    stub.write_text("../a/cell.png")
    assert read_image_file(stub) == target.read_bytes()
    dangling = tmp_path / "b" / "gone.png"
    dangling.write_text("../a/missing.png")
    assert read_image_file(dangling) == b"../a/missing.png"  # left as is: the audit reports it unreadable


def test_pbc8_link_stubs_resolve_to_the_kaggle5_bytes():
    name = sorted(p.name for p in (PBC8 / "monocyte").iterdir())[0]
    assert read_image_file(PBC8 / "monocyte" / name) == (KAGGLE5 / "monocyte" / name).read_bytes()


def test_audit_cli_text_and_json(tmp_path: Path):
    for label, colour in (("a", 0), ("b", 255)):
        (tmp_path / label).mkdir()
        for k in range(3):
            (tmp_path / label / f"{k}.png").write_bytes(encode(np.full((8 + k, 8, 3), colour, np.uint8)))
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "0.png").read_bytes())
    text = run_cli("dataset", "audit", str(tmp_path)).stdout
    assert "b/broken.jpg: not an image file" in text
    assert "a/0.png = b/copy.png" in text
    import json

    report = json.loads(run_cli("dataset", "audit", str(tmp_path), "--json").stdout)
    assert report["classes"]["b"]["unreadable"] == 1
    assert report["cross_class_duplicates"][0]["labels"] == ["a", "b"]


def test_audit_cli_rejects_a_folder_without_classes(tmp_path: Path):
    result = run_cli("dataset", "audit", str(tmp_path), check=False)
    assert result.returncode != 0 and "no class folders" in result.stderr


def test_kaggle5_and_pbc8_read_as_one_nine_class_dataset():
    """The differential's training data: the PBC files the two folders share count once, and Munich's
    seg_neutrophil is PBC's neutrophil; paths are relative to the folders' common parent."""
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.splits import make_split

    index = index_dataset([KAGGLE5, PBC8], renames=parse_renames(["seg_neutrophil=neutrophil"]), progress=False)
    assert index.root == KAGGLE5.parent
    assert index.classes == [
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "myeloblast",
        "neutrophil",
        "platelet",
    ]
    assert {e.path.split("/")[0] for e in index.entries} == {"kaggle5", "pbc8"}
    assert all((index.root / e.path).exists() for e in index.entries[::500])
    shared = {e.sha256 for e in index.valid if e.path.startswith("kaggle5/")} & {
        e.sha256 for e in index.valid if e.path.startswith("pbc8/")
    }
    assert len(shared) > 2000  # basophil, erythroblast and monocyte of both folders are the same PBC files
    split = make_split(index)
    sides = [split.hashes(name) for name in ("train", "val", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    neutrophil_sources = {item.paths[0].split("/")[0] for item in split.parts["test"] if item.label == "neutrophil"}
    assert neutrophil_sources == {"kaggle5", "pbc8"}


def test_a_rename_must_be_old_equals_new():
    from bloodcell_core.ml.dataset import parse_renames

    with pytest.raises(ValueError, match="OLD=NEW"):
        parse_renames(["seg_neutrophil"])
