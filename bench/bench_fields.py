"""Whole smear fields end to end on BCCD's test split, through the queue and in process; prints JSON.

    python bench/bench_fields.py [--model models/default] [--adapted runs/adaptation/model_285] [--out docs/fields.json]

For the model as shipped and for the same model after lab adaptation (`bloodcell adapt` on BCCD's
trainval cells, as bench/bench_adaptation.py makes it; made here when --adapted does not exist), a
local stack (redis-server, SQLite, file store, one Celery worker) is started with that model in
production, and BCCD's 72 test fields are submitted as one sample of fields (`Client.submit(fields=)`).
Reported per model:

- the white cells the worker found against BCCD's boxes (IoU >= 0.5: precision, recall, F1);
- for the fields that hold one cell type in labels.csv, how many of the matched cells the service gave
  that type (accuracy, and the same among the cells it accepted without review);
- fields per second through the queue (submit -> report persisted) beside the in-process locate + crop +
  classify of the same fields (``cut_field`` and ``Classifier.classify``), in the same run, and their ratio.

A warm-up sample of 12 trainval fields loads the model first. Predictions are stored per crop and
model version, so each model's test fields go through the queue once; compare the ratio, not the
absolute figures: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_adaptation import write_cells  # noqa: E402
from bench_queue import LocalStack, wait_final  # noqa: E402

from bloodcell_core.ml.fields import corners, cut_field, locator_scores, match_boxes  # noqa: E402
from bloodcell_core.ml.inference import Classifier  # noqa: E402
from bloodcell_core.ml.smear_fields import Field, read_fields, typed_cell_crops  # noqa: E402
from bloodcell_core.ml.training import adapt  # noqa: E402
from bloodcell_core.plugin_manager import get_cell_locator  # noqa: E402
from bloodcell_core.plugin_types import CellBox  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
BCCD = PROJECT.parent / "shared" / "data" / "bccd"


def truth(field: Field) -> list[tuple[float, float, float, float]]:
    return [(b.xmin, b.ymin, b.xmax, b.ymax) for b in field.white_cells if not b.degenerate]


def typing(fields: list[Field], found: dict[str, list[tuple[CellBox, str, bool]]]) -> dict:
    """Of the found cells that match a true box in a single-type field: how many got that type."""
    n = right = accepted = accepted_right = 0
    for field in fields:
        if field.cell_type is None:
            continue
        for box, label, needs_review in found[field.field_id]:
            if match_boxes(truth(field), [corners(box)]) == 0:
                continue
            n += 1
            right += label == field.cell_type
            accepted += not needs_review
            accepted_right += not needs_review and label == field.cell_type
    return {
        "typed_cells": n,
        "type_accuracy": round(right / n, 4) if n else None,
        "accepted_share": round(accepted / n, 4) if n else None,
        "accepted_type_accuracy": round(accepted_right / accepted, 4) if accepted else None,
    }


def in_process(model: Path, fields: list[Field], datas: list[bytes], locator) -> tuple[float, dict[str, list]]:
    """Locate, crop and classify every field in this process; (seconds, found cells per field)."""
    classifier = Classifier.from_dir(model)
    classifier.classify([(name, data) for name, data, _ in typed_cell_crops(BCCD, "val")[:16]])  # warm-up
    start = time.perf_counter()
    cuts = [cut_field(data, locator.locate, 50) for data in datas]
    crops = [(f"{field.field_id}#{k}", cell.png) for field, cut in zip(fields, cuts) for k, cell in enumerate(cut.cells)]
    predictions = {p.name: p for p in classifier.classify(crops)}
    seconds = time.perf_counter() - start
    found = {
        field.field_id: [
            (cell.box, predictions[f"{field.field_id}#{k}"].label, predictions[f"{field.field_id}#{k}"].needs_review)
            for k, cell in enumerate(cut.cells)
        ]
        for field, cut in zip(fields, cuts)
    }
    return seconds, found


def through_queue(model: Path, fields: list[Field], datas: list[bytes], warm: list[tuple[str, bytes]]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-fields-") as home, LocalStack(Path(home), model, workers=1) as local:
        local.client.submit("WARM", [], fields=warm)
        wait_final(local.settings, ["WARM"])
        start = time.perf_counter()
        local.client.submit("BCCD-TEST", [], fields=[(f.image_path.name, data) for f, data in zip(fields, datas)])
        wait_final(local.settings, ["BCCD-TEST"], timeout=1800)
        seconds = time.perf_counter() - start
        listed = {row.image_sha256: row for row in local.client.fields("BCCD-TEST")}
    found = {}
    for field, data in zip(fields, datas):
        row = listed[hashlib.sha256(data).hexdigest()]
        assert row.status == "located", row
        found[field.field_id] = [(CellBox(**dict(cell.box), stained_area=0), cell.label, cell.needs_review) for cell in row.cells]
    return seconds, found


def adapted_model(model: Path, out: Path) -> Path:
    if not (out / "metadata.json").exists():
        lab = out.parent / f"lab_{out.name}"
        write_cells(typed_cell_crops(BCCD, "trainval"), lab)
        adapt(model, lab, out, epochs=8, replay_per_class=100, progress=False, log=lambda m: print(m, file=sys.stderr))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--adapted", type=Path, default=PROJECT / "runs" / "adaptation" / "model_285")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--fields", type=int, help="only the first N test fields (a quick check)")
    parser.add_argument("--shipped-only", action="store_true", help="skip the adapted model (no fine-tuning)")
    args = parser.parse_args()

    fields = read_fields(BCCD, "test")[: args.fields]
    datas = [f.image_path.read_bytes() for f in fields]
    warm = [(f.image_path.name, f.image_path.read_bytes()) for f in read_fields(BCCD, "trainval")[:12]]
    locator = get_cell_locator("stain_nucleus")
    result: dict = {"benchmark": "fields", "fields": len(fields), "locator": locator.name, "cpu_count": os.cpu_count(), "models": []}
    stages = [("as shipped", args.model)]
    if not args.shipped_only:
        stages.append(("after lab adaptation", adapted_model(args.model, args.adapted)))
    for stage, model in stages:
        local_s, local_found = in_process(model, fields, datas, locator)
        queue_s, queue_found = through_queue(model, fields, datas, warm)
        rows = [(f.field_id, truth(f), [corners(box) for box, _, _ in queue_found[f.field_id]]) for f in fields]
        scores = locator_scores(rows)
        same_boxes = all(
            [corners(b) for b, _, _ in queue_found[f.field_id]] == [corners(b) for b, _, _ in local_found[f.field_id]] for f in fields
        )
        entry = {
            "stage": stage,
            "model": str(model),
            "precision": scores["precision"],
            "recall": scores["recall"],
            "f1": scores["f1"],
            "n_true": scores["n_true"],
            "n_found": scores["n_found"],
            "erring_fields": [f["field"] for f in scores["erring_fields"]],
            **{f"queue_{key}": value for key, value in typing(fields, queue_found).items()},
            **{f"in_process_{key}": value for key, value in typing(fields, local_found).items()},
            "queue_and_in_process_boxes_equal": same_boxes,
            "queue_fields_per_s": round(len(fields) / queue_s, 2),
            "in_process_fields_per_s": round(len(fields) / local_s, 2),
            "queue_share_of_in_process": round(local_s / queue_s, 3),
        }
        result["models"].append(entry)
        print(json.dumps(entry), file=sys.stderr)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
