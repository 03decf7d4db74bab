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

from bloodcell_core.ml.artifacts import MODEL_FILE, read_metadata


def predict_throughput(model_dir: Path, data_dir: Path, images: int = 256) -> float:
    """Batch-64 predict images/s on the first IMAGES preprocessed test images, through the model step a
    worker runs (test-time views, view gate, temperature), without decoding. Real cells, not noise:
    with a view gate the cost depends on how sure the model is."""
    from bloodcell_core.ml.artifacts import load_artifact
    from bloodcell_core.ml.inference import Classifier
    from bloodcell_core.ml.preprocessing import scale
    from bloodcell_core.ml.splits import load_split_images

    artifact = load_artifact(model_dir)
    classifier = Classifier(artifact)
    items = artifact.split().parts["test"][:images]
    batch = scale(load_split_images(data_dir, items, classifier.preprocessor, "", progress=False))
    classifier.predict_arrays(batch[:64])  # warm up
    start = time.perf_counter()
    classifier.predict_arrays(batch)
    return len(batch) / (time.perf_counter() - start)


def result_row(data_dir: Path, model_dir: Path) -> dict[str, Any]:
    metadata = read_metadata(model_dir)
    test, calibration = metadata.metrics["test"], metadata.calibration or {}
    return {
        "dataset": data_dir.name,
        "plugin": metadata.plugin,
        "test_time_views": len(metadata.views),
        "view_gate": metadata.view_gate,
        "accuracy": round(test["accuracy"], 4),
        "macro_f1": round(test["macro_f1"], 4),
        "ece_calibrated": calibration.get("test", {}).get("ece_after"),
        "coverage": calibration.get("test", {}).get("coverage"),
        "accepted_accuracy": calibration.get("test", {}).get("accepted_accuracy"),
        "parameters": metadata.training["parameters"],
        "file_mb": round(metadata.files[MODEL_FILE]["bytes"] / 2**20, 2),
        "images_per_s": round(predict_throughput(model_dir, data_dir)),
        "train_minutes": round(metadata.training["seconds"] / 60, 1),
        "epochs": metadata.training["epochs_run"],
        "n_test": test["n"],
        "steps": metadata.preprocessing["steps"],
        "model_dir": str(model_dir),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "dataset",
        "model",
        "test-time views",
        "accuracy",
        "macro-F1",
        "ECE (calibrated)",
        "coverage at review threshold",
        "accuracy of accepted",
        "parameters",
        "file MB",
        "predict img/s",
        "training min (epochs)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        views = f"{r['test_time_views']}" + (f", gate {r['view_gate']}" if r["view_gate"] is not None else "")
        lines.append(
            f"| {r['dataset']} | {r['plugin']} | {views} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['ece_calibrated']} | {r['coverage']} | {r['accepted_accuracy']} | {r['parameters']:,} | "
            f"{r['file_mb']} | {r['images_per_s']:,} | {r['train_minutes']} ({r['epochs']}) |"
        )
    return "\n".join(lines)


def build_results(
    data_dirs: list[Path],
    plugins: list[str],
    out_dir: Path,
    seed: int = 0,
    epochs: int | None = None,
    train_missing: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train what is missing (or, without `train_missing`, leave it out of the table), then write
    OUT/results.json and OUT/results.md; returns the rows."""
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    rows = []
    for data_dir in data_dirs:
        for plugin in plugins:
            model_dir = out_dir / data_dir.name / plugin
            if not (model_dir / "metadata.json").exists():
                if not train_missing:
                    log(f"not trained yet, left out: {plugin} on {data_dir.name}")
                    continue
                log(f"training {plugin} on {data_dir} into {model_dir}")
                train(TrainingPlan(plugin, data_dir, model_dir, seed=seed, epochs=epochs), log=log)
            rows.append(result_row(data_dir, model_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "results.md").write_text(markdown_table(rows) + "\n")
    return rows
