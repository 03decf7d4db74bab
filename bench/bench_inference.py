"""Inference benchmark per model plugin; prints JSON.

    python bench/bench_inference.py [--images 512] [--models compact_cnn,baseline_cnn] [--model-dir DIR ...]

For each model plugin: preprocessing images/s (decode + steps + resize + scale, in memory,
1 thread and the classifier's 2-thread pool), batch-64 predict images/s, the whole in-process
pipeline (bytes -> probabilities) images/s and its share of predict-only images/s (decoding and
preprocessing of the next batch run in a thread pool while the model predicts this one), single-image
latency p50/p99, model file size.
A plugin with a trained model under models/ (metadata "plugin") is measured with it; the
others with freshly built weights, which cost the same to run; --model-dir measures the given
model directories instead. A model served with several test-time views is measured in the same
run with its views, with one view and, when it has a view gate, with every view for every cell
(untrained weights are never sure, so their gate never skips). Every variant is measured with each
runtime of --runtimes (default: every available runtime plugin, e.g. keras and openvino); each row
names its `runtime`, the one that actually served (a runtime that fails its parity check is replaced
by keras, and says so in the log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bloodcell_core.ml.artifacts import MODEL_FILE, ModelArtifact, ModelMetadata, load_artifact, read_metadata  # noqa: E402
from bloodcell_core.ml.dataset import list_class_files, read_image_file  # noqa: E402
from bloodcell_core.ml.inference import VIEWS, Classifier, predict_in_batches  # noqa: E402
from bloodcell_core.ml.preprocessing import PreprocessingConfig, Preprocessor  # noqa: E402
from bloodcell_core.plugin_manager import model_specs, runtimes  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT.parent / "shared" / "data" / "kaggle5"
TARGETS = {"pipeline_images_per_s": 400.0, "single_image_p50_ms": 5.0}  # issue 19's, for the served default model


def load_images(count: int) -> list[tuple[str, bytes]]:
    files = list_class_files(DATA)
    chosen = [files[i] for i in np.random.default_rng(0).choice(len(files), size=min(count, len(files)), replace=False)]
    return [(str(path), read_image_file(path)) for _, path in chosen]


def trained_models() -> dict[str, Path]:
    found = {}
    for metadata_file in sorted((PROJECT / "models").glob("*/metadata.json")):
        found.setdefault(read_metadata(metadata_file.parent).plugin, metadata_file.parent)
    return found


def weights_label(directory: Path) -> str:
    """The model directory as the report names it: relative to the project where it lies inside it."""
    resolved = directory.resolve()
    return str(resolved.relative_to(PROJECT)) if resolved.is_relative_to(PROJECT) else str(directory)


def artifact_for(name: str, trained: dict[str, Path], workdir: Path) -> tuple[ModelArtifact, str]:
    if name in trained:
        return load_artifact(trained[name]), weights_label(trained[name])
    spec = model_specs()[name]
    model = spec.build((*spec.input_size, 3), 5)
    model.save(workdir / f"{name}.keras")
    config = PreprocessingConfig(input_size=spec.input_size, steps=spec.defaults.preprocessing_steps)
    metadata = ModelMetadata(  # untrained: only what serving reads is filled in
        name=name,
        plugin=name,
        classes=[f"class{k}" for k in range(5)],
        input_shape=[*spec.input_size, 3],
        preprocessing=config.to_json(),
        created_at="",
        training={},
        dataset={},
        split={},
        calibration={"views": list(spec.defaults.test_time_views), "view_gate": spec.defaults.view_gate},
        metrics={},
    )
    return ModelArtifact(directory=workdir, metadata=metadata, model=model), "untrained weights"


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def with_views(artifact: ModelArtifact, views: tuple[str, ...], gate: float | None) -> ModelArtifact:
    calibration = (artifact.metadata.calibration or {}) | {"views": list(views), "view_gate": gate}
    return replace(artifact, metadata=replace(artifact.metadata, calibration=calibration))


def bench_models(
    name: str, images: list[tuple[str, bytes]], artifact: ModelArtifact, weights: str, runtime_names: list[str]
) -> list[dict]:
    served = (artifact.views, artifact.view_gate)
    variants = [served] + [(artifact.views, None)] * (served[1] is not None) + [(("identity",), None)] * (len(served[0]) > 1)
    return [
        bench_model(name, images, with_views(artifact, *variant), weights, runtime)
        for runtime in runtime_names
        for variant in variants
    ]


def bench_model(name: str, images: list[tuple[str, bytes]], artifact: ModelArtifact, weights: str, runtime: str) -> dict:
    model_file = artifact.directory / (MODEL_FILE if weights != "untrained weights" else f"{name}.keras")
    classifier = Classifier(artifact, runtime=runtime)
    preprocessor = Preprocessor(artifact.preprocessing)
    blobs = [data for _, data in images]

    start = time.perf_counter()
    prepared = [preprocessor(data) for data in blobs]
    preprocess_1 = rate(len(blobs), time.perf_counter() - start)
    with ThreadPoolExecutor(max_workers=2) as pool:
        start = time.perf_counter()
        list(pool.map(preprocessor, blobs))
        preprocess_2 = rate(len(blobs), time.perf_counter() - start)

    batch = np.stack(prepared)
    views, gate = classifier.views, classifier.view_gate
    # the share of cells that got every view: those the first view leaves under the gate
    first = predict_in_batches(artifact.model, VIEWS[views[0]](batch))
    every_view = 1.0 if gate is None else float((first.max(axis=1) < gate).mean())
    classifier.predict_arrays(batch[:64])  # trace and warm up
    start = time.perf_counter()
    classifier.predict_arrays(batch)
    predict_64 = rate(len(batch), time.perf_counter() - start)

    classifier.classify(images[:64])
    start = time.perf_counter()
    results = classifier.classify(images)
    pipeline = rate(len(images), time.perf_counter() - start)
    assert all(r.error is None for r in results)

    for data in blobs[:10]:
        classifier.classify_one(data)
    latencies = []
    for data in blobs[:200]:
        start = time.perf_counter()
        classifier.classify_one(data)
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "model": name,
        "weights": weights,
        "runtime": classifier.runtime,
        "test_time_views": len(views),
        "view_gate": gate,
        "share_of_images_given_every_view": round(every_view, 3) if len(views) > 1 else None,
        "parameters": int(artifact.model.count_params()),
        "model_file_bytes": model_file.stat().st_size,
        "images": len(images),
        "preprocess_images_per_s_1_thread": preprocess_1,
        "preprocess_images_per_s_2_threads": preprocess_2,
        "predict_batch64_images_per_s": predict_64,
        "pipeline_images_per_s": pipeline,
        "pipeline_share_of_predict": round(pipeline / predict_64, 3),  # decoding overlaps the model's work
        "single_image_latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "single_image_latency_ms_p99": round(float(np.percentile(latencies, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="real kaggle5 images to push through (default 512)")
    parser.add_argument("--models", help="comma-separated model plugins (default: all installed)")
    parser.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        default=[],
        help="measure this model directory instead of plugins (repeat for several)",
    )
    parser.add_argument("--runtimes", help="comma-separated runtimes (default: every available one)")
    args = parser.parse_args()
    runtime_names = args.runtimes.split(",") if args.runtimes else sorted(n for n, r in runtimes().items() if r.available())
    images = load_images(args.images)
    if args.model_dir:
        artifacts = [(load_artifact(directory), weights_label(directory)) for directory in args.model_dir]
        results = [
            row
            for artifact, weights in artifacts
            for row in bench_models(artifact.metadata.plugin, images, artifact, weights, runtime_names)
        ]
    else:
        names = args.models.split(",") if args.models else sorted(model_specs())
        trained = trained_models()
        with tempfile.TemporaryDirectory() as workdir:
            results = [
                row for name in names for row in bench_models(name, images, *artifact_for(name, trained, Path(workdir)), runtime_names)
            ]
    default = {}  # per runtime: the default model with its own views (the first of its rows)
    for row in results:
        if row["weights"] == "models/default":
            default.setdefault(row["runtime"], row)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "runtimes": runtime_names,
        "targets_for_default_model": TARGETS,
        "default_model_meets_targets": {
            runtime: row["pipeline_images_per_s"] >= TARGETS["pipeline_images_per_s"]
            and row["single_image_latency_ms_p50"] <= TARGETS["single_image_p50_ms"]
            for runtime, row in default.items()
        }
        or None,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
