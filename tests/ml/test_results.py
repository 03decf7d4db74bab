"""`bloodcell results` trains what is missing, reuses what exists, and writes the table; `--no-train` only tabulates."""

import json
from pathlib import Path

import pytest
from helpers import KAGGLE5, run_cli

pytestmark = pytest.mark.real_data


@pytest.mark.slow
def test_results_table_trains_then_reuses(tmp_path: Path):
    data = tmp_path / "tiny5"
    for label in ("basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"):
        (data / label).mkdir(parents=True)
        for path in sorted((KAGGLE5 / label).iterdir())[:12]:
            (data / label / path.name).symlink_to(path)
    args = ["results", "--data", str(data), "--models", "mobilenet_small", "--epochs", "1", "--out", str(tmp_path / "out")]
    first = run_cli(*args)
    assert "| tiny5 | mobilenet_small |" in first.stdout and "training mobilenet_small" in first.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows[0]["parameters"] == 362_701 and rows[0]["epochs"] == 1 and rows[0]["images_per_s"] > 0
    assert {"accuracy", "macro_f1", "ece_calibrated", "coverage", "accepted_accuracy", "file_mb"} <= set(rows[0])
    again = run_cli(*args)
    assert "training" not in again.stderr and (tmp_path / "out" / "results.md").read_text().startswith("| dataset |")
    partial = run_cli(*args[:4], "mobilenet_small,compact_cnn", *args[5:], "--no-train")
    assert "| tiny5 | mobilenet_small |" in partial.stdout and "| tiny5 | compact_cnn |" not in partial.stdout
    assert "not trained yet, left out: compact_cnn on tiny5" in partial.stderr
    assert not (tmp_path / "out" / "tiny5" / "compact_cnn").exists()
    unknown = run_cli(*args[:4], "mobilenet_small,no_such_model", *args[5:], "--no-train", check=False)
    assert unknown.returncode != 0 and "unknown model plugin(s): no_such_model" in unknown.stderr
