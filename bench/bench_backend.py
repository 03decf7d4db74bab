"""A model directory on the current Keras backend and device (the GPU worker's model path); prints JSON.

    python bench/bench_backend.py models/default IMAGE_DIR --write-expected expected.json     # TensorFlow, CPU
    KERAS_BACKEND=jax python bench/bench_backend.py models/default IMAGE_DIR --expected expected.json

Classifies the images in IMAGE_DIR through the serving path (Classifier: decode, preprocessing, batched
predict), then times batch predict on the preprocessed images repeated to --repeat x. With --expected,
compares classes and probabilities with a run on another backend: a model saved by TensorFlow must give
the same answers on JAX or PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bloodcell_core.ml.inference import BATCH_SIZE, Classifier  # noqa: E402


def devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--expected", type=Path, help="JSON from --write-expected on another backend")
    parser.add_argument("--write-expected", type=Path)
    parser.add_argument("--repeat", type=int, default=32, help="predict-throughput batch set: the images repeated this often")
    args = parser.parse_args()

    images = [(path.name, path.read_bytes()) for path in sorted(args.image_dir.iterdir()) if path.is_file()]
    classifier = Classifier.from_dir(args.model_dir)
    classifier.classify(images)  # warm up: compiles each padded batch shape once, as a long-running worker has
    start = time.perf_counter()
    predictions = classifier.classify(images)
    pipeline_s = time.perf_counter() - start

    arrays = np.stack([classifier.preprocessor(data) for _, data in images])
    batch = np.concatenate([arrays] * args.repeat)
    # JAX compiles once per padded batch size, and with a view gate the unsure cells of a chunk make
    # any of them: compile them all before the clock starts, as a long-running worker has
    for size in (2**k for k in range(BATCH_SIZE.bit_length())):
        classifier.artifact.model.predict_on_batch(np.zeros((size, *arrays.shape[1:]), np.float32))
    classifier.predict_arrays(batch[: BATCH_SIZE * 2])  # the model step a worker runs: views, gate, temperature
    start = time.perf_counter()
    classifier.predict_arrays(batch)
    predict_s = time.perf_counter() - start

    result = {
        "backend": keras.backend.backend(),
        "devices": devices(),
        "images": len(images),
        "pipeline_images_per_s": round(len(images) / pipeline_s, 1),
        "predict_images_per_s": round(len(batch) / predict_s, 1),
        "batch_size": BATCH_SIZE,
        "test_time_views": len(classifier.views),
        "view_gate": classifier.view_gate,
    }
    answers = {p.name: p.probabilities for p in predictions if p.error is None}
    if args.write_expected:
        args.write_expected.write_text(json.dumps(answers))
    if args.expected:
        expected = json.loads(args.expected.read_text())
        same = [max(answers[n], key=answers[n].get) == max(expected[n], key=expected[n].get) for n in expected]
        result["same_class"] = f"{sum(same)}/{len(same)}"
        result["max_probability_difference"] = max(abs(answers[n][c] - expected[n][c]) for n in expected for c in expected[n])
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
