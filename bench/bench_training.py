"""Training cost per model plugin; prints JSON.

    python bench/bench_training.py [--steps 30] [--models compact_cnn,resnet_small]

For each model plugin: training images/s through the real training loop's pieces (AugmentedBatches on
real preprocessed kaggle5 images, Adam, the plugin's batch size and augmentation), after a warm-up,
and the resulting minutes per epoch of kaggle5 (2,971 training images) and pbc8 (4,748).
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

from bloodcell_core.ml.dataset import list_class_files, read_image_file  # noqa: E402
from bloodcell_core.ml.preprocessing import PreprocessingConfig, Preprocessor  # noqa: E402
from bloodcell_core.ml.training import AugmentedBatches  # noqa: E402
from bloodcell_core.plugin_manager import get_model_spec, model_specs  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kaggle5"
TRAIN_IMAGES = {"kaggle5": 2971, "pbc8": 4748}


def measure(name: str, images: np.ndarray, steps: int) -> dict:
    spec = get_model_spec(name)
    defaults = spec.defaults
    targets = keras.utils.to_categorical(np.arange(len(images)) % 5, 5)
    batches = AugmentedBatches(images, targets, defaults.batch_size, defaults.augmentation, seed=0)
    model = spec.build((*spec.input_size, 3), 5)
    model.compile(optimizer=keras.optimizers.Adam(defaults.learning_rate), loss="categorical_crossentropy")
    model.train_on_batch(*batches[0])  # compile the train step
    start = time.perf_counter()
    for step in range(steps):
        model.train_on_batch(*batches[(step + 1) % len(batches)])
    per_s = steps * defaults.batch_size / (time.perf_counter() - start)
    return {
        "model": name,
        "parameters": int(model.count_params()),
        "batch_size": defaults.batch_size,
        "train_images_per_s": round(per_s, 1),
        "minutes_per_epoch": {data: round(n / per_s / 60, 2) for data, n in TRAIN_IMAGES.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", help="comma-separated (default: every model plugin)")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else sorted(model_specs())
    files = list_class_files(DATA)
    chosen = [files[i][1] for i in np.random.default_rng(0).choice(len(files), 256, replace=False)]
    preprocessor = Preprocessor(PreprocessingConfig(input_size=(128, 128), steps=("center_crop",)))
    images = np.stack([preprocessor.to_uint8(read_image_file(path)) for path in chosen])
    results = [measure(name, images, args.steps) for name in names]
    json.dump({"steps": args.steps, "images": len(images), "cpu_count": os.cpu_count(), "results": results}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
