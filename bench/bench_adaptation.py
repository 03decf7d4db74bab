"""Lab adaptation on BCCD: the learning curve a laboratory needs to plan its start; prints JSON.

    python bench/bench_adaptation.py [--model models/default] [--sizes 25,50,100,all] [--epochs 8] [--out runs/adaptation]

BCCD (another laboratory, camera and stain) stands in for a new laboratory: the white cells of its trainval
fields, cropped by their boxes and typed by labels.csv, are the cells its technologists reviewed; its test
split is what the laboratory then sends. For each size N, `bloodcell adapt` fine-tunes the model on the
first N trainval cells (in content-hash order) with its replay of the original training images, and the
result is scored on BCCD's test cells through the serving path (accuracy, share accepted without review,
accuracy of those) and on the model's own test split (to show what adaptation costs there). N = 0 is the
model as it is. The crops are written under OUT (never into the project); OUT/learning_curve.png plots the curve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bloodcell_core.ml.generalisation import score_set  # noqa: E402
from bloodcell_core.ml.inference import Classifier  # noqa: E402
from bloodcell_core.ml.plots import learning_curve_png  # noqa: E402
from bloodcell_core.ml.smear_fields import typed_cell_crops  # noqa: E402
from bloodcell_core.ml.training import adapt  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
BCCD = PROJECT.parent / "shared" / "data" / "bccd"


def write_cells(cells: list[tuple[str, bytes, str]], folder: Path) -> None:
    for name, data, label in cells:
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{name.replace('#', '_')}.png").write_bytes(data)


def own_test(classifier: Classifier) -> list[tuple[str, bytes, str]]:
    from bloodcell_core.ml.dataset import read_image_file

    root = classifier.artifact.metadata.dataset_root
    return [(item.paths[0], read_image_file(root / item.paths[0]), item.label) for item in classifier.artifact.split().parts["test"]]


def point(model_dir: Path, lab_cells: int, bccd_test: list[tuple[str, bytes, str]]) -> dict:
    classifier = Classifier.from_dir(model_dir)
    row = {key: value for key, value in score_set(classifier, bccd_test).items() if key != "_scores"}
    own = score_set(classifier, own_test(classifier))
    return {
        "lab_cells": lab_cells,
        "model_dir": str(model_dir),
        **row,
        "own_test_accuracy": own["accuracy"],
        "own_test_coverage": own["coverage"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--sizes", default="25,50,100,all", help="lab cells per run, comma-separated; 'all' for every one")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--replay-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=PROJECT / "runs" / "adaptation")
    args = parser.parse_args()

    trainval = sorted(typed_cell_crops(BCCD, "trainval"), key=lambda cell: hashlib.sha256(cell[1]).hexdigest())
    bccd_test = typed_cell_crops(BCCD, "test")
    points = [point(args.model, 0, bccd_test)]
    for size in args.sizes.split(","):
        n = len(trainval) if size == "all" else min(int(size), len(trainval))
        lab_dir, model_dir = args.out / f"lab_{n}", args.out / f"model_{n}"
        if not (model_dir / "metadata.json").exists():
            write_cells(trainval[:n], lab_dir)
            adapt(
                args.model,
                lab_dir,
                model_dir,
                epochs=args.epochs,
                replay_per_class=args.replay_per_class,
                progress=False,
                log=lambda message: print(message, file=sys.stderr),
            )
        points.append(point(model_dir, n, bccd_test))
        print(json.dumps(points[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    learning_curve_png(
        points,
        args.out / "learning_curve.png",
        f"BCCD test cells (n={points[0]['n']}) after fine-tuning {args.model.name} on BCCD trainval cells",
    )
    result = {
        "benchmark": "adaptation",
        "model": str(args.model),
        "epochs": args.epochs,
        "replay_per_class": args.replay_per_class,
        "bccd_trainval_cells": len(trainval),
        "points": points,
    }
    (args.out / "adaptation.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
