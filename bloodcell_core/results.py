"""The results table: every model plugin trained and evaluated on every dataset, one command (`bloodcell results`).

Each (dataset, plugin) pair is trained into OUT/<dataset>/<plugin> with the plugin's defaults and the
same seed, so all models of a dataset share one split. A pair whose model directory exists is not
trained again: the table can be built up over several runs and rebuilt from the directories alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bloodcell_core.artifacts import MODEL_FILE, metadata_views, read_metadata


def predict_throughput(model_dir: Path, images: int = 256, batch_size: int = 64) -> float:
    """Batch-64 predict images/s on random input, with the model's test-time views (what a worker's
    model step costs, without decoding)."""
    from bloodcell_core.artifacts import load_artifact
    from bloodcell_core.inference import predict_views

    artifact = load_artifact(model_dir)
    batch = np.random.default_rng(0).random((images, *artifact.metadata["input_shape"]), dtype=np.float32)
    predict_views(artifact.model, batch[:batch_size], artifact.views, batch_size)  # warm up
    start = time.perf_counter()
    predict_views(artifact.model, batch, artifact.views, batch_size)
    return images / (time.perf_counter() - start)


def result_row(dataset: str, model_dir: Path) -> dict[str, Any]:
    metadata = read_metadata(model_dir)
    test, calibration = metadata["metrics"]["test"], metadata.get("calibration") or {}
    return {
        "dataset": dataset,
        "plugin": metadata["plugin"],
        "test_time_views": len(metadata_views(metadata)),
        "accuracy": round(test["accuracy"], 4),
        "macro_f1": round(test["macro_f1"], 4),
        "ece_calibrated": calibration.get("test", {}).get("ece_after"),
        "coverage": calibration.get("test", {}).get("coverage"),
        "accepted_accuracy": calibration.get("test", {}).get("accepted_accuracy"),
        "parameters": metadata["training"]["parameters"],
        "file_mb": round(metadata["files"][MODEL_FILE]["bytes"] / 2**20, 2),
        "images_per_s": round(predict_throughput(model_dir)),
        "train_minutes": round(metadata["training"]["seconds"] / 60, 1),
        "epochs": metadata["training"]["epochs_run"],
        "n_test": test["n"],
        "steps": metadata["preprocessing"]["steps"],
        "model_dir": str(model_dir),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["dataset", "model", "test-time views", "accuracy", "macro-F1", "ECE (calibrated)", "coverage at review threshold",
              "accuracy of accepted", "parameters", "file MB", "predict img/s", "training min (epochs)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['plugin']} | {r['test_time_views']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['ece_calibrated']} | {r['coverage']} | {r['accepted_accuracy']} | {r['parameters']:,} | "
                     f"{r['file_mb']} | {r['images_per_s']:,} | {r['train_minutes']} ({r['epochs']}) |")
    return "\n".join(lines)


def build_results(data_dirs: list[Path], plugins: list[str], out_dir: Path, seed: int = 0, epochs: int | None = None,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train what is missing, then write OUT/results.json and OUT/results.md; returns the rows."""
    from bloodcell_core.training import train

    rows = []
    for data_dir in data_dirs:
        for plugin in plugins:
            model_dir = out_dir / data_dir.name / plugin
            if not (model_dir / "metadata.json").exists():
                log(f"training {plugin} on {data_dir} into {model_dir}")
                train(plugin, data_dir, model_dir, seed=seed, epochs=epochs, log=log)
            rows.append(result_row(data_dir.name, model_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "results.md").write_text(markdown_table(rows) + "\n")
    return rows
