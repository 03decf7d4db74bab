"""Train a model plugin on a folder-per-class dataset and write a complete model directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import keras
import numpy as np

from bloodcell_core.ml import plots
from bloodcell_core.ml.artifacts import (
    FORMAT_VERSION,
    REPORT_DIR,
    ModelArtifact,
    ModelMetadata,
    load_artifact,
    read_metadata,
    save_artifact,
    update_metadata,
    version_id,
)
from bloodcell_core.ml.calibration import TARGET_ACCURACY, apply_temperature, calibrate
from bloodcell_core.ml.dataset import DatasetIndex, audit_dataset, dataset_root, index_dataset, read_image_file
from bloodcell_core.ml.inference import (
    check_view_gate,
    check_views,
    features_and_probabilities,
    predict_in_batches,
    predict_views,
    served_views,
)
from bloodcell_core.ml.metrics import classification_metrics, format_classification_report
from bloodcell_core.ml.ood import feature_model, fit_scorer, write_scorer
from bloodcell_core.ml.preprocessing import PreprocessingConfig, Preprocessor, augment, scale
from bloodcell_core.ml.shortcuts import colour_only_baseline
from bloodcell_core.ml.splits import Split, SplitItem, load_split_images, make_split
from bloodcell_core.plugin_manager import get_model_spec
from bloodcell_core.plugin_types import ACQUISITION_AUGMENTATION, Augmentation, ModelSpec


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches, freshly drawn every epoch from a seeded generator."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, batch_size: int, augmentation, seed: int) -> None:
        super().__init__()
        self.images, self.targets, self.batch_size, self.augmentation = images, targets, batch_size, augmentation
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        augmented = np.stack([augment(self.images[i], self.augmentation, self.rng) for i in chosen])
        return scale(augmented), self.targets[chosen]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> None:
    """Re-estimate every BatchNormalization layer's moving statistics from ``images`` (scaled floats).

    Keras keeps an exponential moving average of batch statistics during training. With Adam and
    batch norm the weights move fast, and that average lags them: inference-mode accuracy can sit
    far below training accuracy ("precise BN", Wu and Johnson 2021). Forward passes in training mode
    with a cumulative-average momentum replace the moving statistics by their exact mean over
    ``images`` under the current weights; no weight changes.
    """
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    saved = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)  # batch k contributes 1/(k+1): a plain running mean
            model(images[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


class PreciseValidation(keras.callbacks.Callback):
    """At the end of each epoch: recalibrate batch norm on clean training images, then validate.

    It writes ``val_loss`` and ``val_accuracy`` into the epoch's logs, for EarlyStopping (which must
    come after it in the callback list) and the training curves.
    """

    def __init__(self, calibration_images: np.ndarray, val_images: np.ndarray, val_targets: np.ndarray) -> None:
        super().__init__()
        self.calibration_images, self.val_images, self.val_targets = calibration_images, val_images, val_targets

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        recalibrate_batch_norm(self.model, self.calibration_images)
        probabilities = predict_in_batches(self.model, self.val_images)
        picked = np.clip((probabilities * self.val_targets).sum(axis=1), 1e-7, 1.0)
        if logs is not None:
            logs["val_loss"] = float(-np.log(picked).mean())
            logs["val_accuracy"] = float((probabilities.argmax(axis=1) == self.val_targets.argmax(axis=1)).mean())


CALIBRATION_IMAGES = 2048


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (classes * count): 1.0 everywhere when classes are balanced."""
    counts = np.bincount(labels, minlength=n_classes)
    return {k: float(len(labels) / (n_classes * counts[k])) for k in range(n_classes) if counts[k]}


def limit_per_class(index: DatasetIndex, limit: int) -> DatasetIndex:
    """A smaller index: the first ``limit`` files per class in content-hash order (for quick runs)."""
    kept, seen = [], {label: 0 for label in index.classes}
    for entry in sorted(index.entries, key=lambda e: e.sha256):
        if seen[entry.label] < limit:
            kept.append(entry)
            seen[entry.label] += 1
    return DatasetIndex(root=index.root, entries=kept, classes=index.classes)


def train(
    model_name: str,
    data_dir: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_per_class: int | None = None,
    preprocessing_steps: tuple[str, ...] | None = None,
    renames: dict[str, str] | None = None,
    acquisition_augmentation: bool = False,
    init_from: Path | str | None = None,
    views: tuple[str, ...] | None = None,
    view_gate: float | None | Literal["default"] = "default",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ModelMetadata:
    """Train ``model_name`` on DATA_DIR, evaluate on the held-out test split, write OUT_DIR.

    DATA_DIR may be several dataset folders read as one (``dataset.index_dataset``), with ``renames``
    mapping folder names to class names. ``preprocessing_steps`` replaces the plugin's default steps
    (e.g. to add colour normalisation); ``acquisition_augmentation`` adds stain and acquisition
    augmentation (``plugin_types.ACQUISITION_AUGMENTATION``) to the plugin's geometric one.
    ``init_from`` starts from that model directory's weights instead of random ones (a warm restart
    with a fresh learning-rate schedule); it must have the same plugin, classes, preprocessing and split.
    ``views`` replaces the plugin's test-time views, which the model is calibrated and served with, and
    ``view_gate`` its view gate (None: every view for every cell; see ``inference.predict_views``).
    Returns the metadata written to OUT_DIR/metadata.json.
    """
    spec = get_model_spec(model_name)
    defaults = spec.defaults
    epochs = epochs or defaults.epochs
    batch_size = batch_size or defaults.batch_size
    learning_rate = learning_rate or defaults.learning_rate
    views = check_views(views or defaults.test_time_views)
    view_gate = check_view_gate(defaults.view_gate if view_gate == "default" else view_gate, views)
    out_dir = Path(out_dir)
    started = time.time()
    keras.utils.set_random_seed(seed)

    index = index_dataset(data_dir, progress=progress, renames=renames)
    if max_per_class:
        index = limit_per_class(index, max_per_class)
    data_audit = audit_dataset(index)
    for item in data_audit["unreadable"]:
        log(f"skipping unreadable file {item['path']}: {item['error']}")
    split = make_split(index, seed=seed, fractions=fractions)
    for item in split.excluded:
        log(f"excluding {' = '.join(item['paths'])}: {item['reason']} {item['labels']}")
    classes = sorted({item.label for items in split.parts.values() for item in items})
    if len(classes) < 2:
        raise ValueError(f"need at least two classes with images in {data_dir}, found {classes}")
    if not split.parts["val"] or not split.parts["test"]:
        raise ValueError("the validation or test split is empty: add images or change the fractions")

    steps = defaults.preprocessing_steps if preprocessing_steps is None else preprocessing_steps
    config = PreprocessingConfig(input_size=spec.input_size, steps=steps)
    start_from = compatible_start(init_from, model_name, classes, config, split) if init_from is not None else None
    preprocessor = Preprocessor(config)
    arrays = {
        name: load_split_images(index.root, items, preprocessor, f"preprocessing {name}", progress)
        for name, items in split.parts.items()
    }
    labels = {name: np.array([classes.index(i.label) for i in items]) for name, items in split.parts.items()}
    augmentation = defaults.augmentation
    if acquisition_augmentation:
        augmentation = dataclasses.replace(augmentation, **ACQUISITION_AUGMENTATION)
    dataset_record = {
        "root": str(index.root),
        "sources": [str(folder) for folder in dataset_root(data_dir)[1]],
        "renames": renames or {},
        "fingerprint": data_audit["fingerprint"],
        "files": data_audit["files"],
        "unique_images": data_audit["unique_images"],
        "unreadable": data_audit["unreadable"],
        "duplicate_groups": len(data_audit["duplicate_groups"]),
        "max_per_class": max_per_class,
        "shortcut_warnings": data_audit["shortcuts"]["warnings"],
    }
    return fit_and_write(
        spec,
        Prepared(split, arrays, labels, classes, config, dataset_record),
        out_dir,
        augmentation=augmentation,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        views=views,
        view_gate=view_gate,
        start_from=start_from,
        started=started,
        progress=progress,
        log=log,
    )


@dataclass
class Prepared:
    """A run's data, preprocessed: the split, its uint8 images and class indices per part, and what to record."""

    split: Split
    arrays: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: list[str]
    config: PreprocessingConfig
    dataset_record: dict[str, Any]  # ModelMetadata.dataset


def fit_and_write(
    spec: ModelSpec,
    data: Prepared,
    out_dir: Path,
    *,
    augmentation: Augmentation,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    views: tuple[str, ...],
    view_gate: float | None,
    start_from: ModelArtifact | None,
    started: float,
    progress: bool,
    log: Callable[[str], None],
    early_stopping: bool = True,
    adaptation: dict[str, Any] | None = None,
) -> ModelMetadata:
    """Fit SPEC on the prepared data (from START_FROM's weights if given), calibrate it, fit its out-of-distribution
    scorer, and write the model directory with its report; ``adaptation`` (from ``adapt``) joins the metadata.
    Without ``early_stopping`` every epoch runs and the last one is kept. Returns the metadata."""
    model_name, defaults = spec.name, spec.defaults
    split, arrays, labels, classes, config = data.split, data.arrays, data.labels, data.classes, data.config
    onehot = {name: keras.utils.to_categorical(y, len(classes)) for name, y in labels.items()}
    class_weight = balanced_class_weights(labels["train"], len(classes))
    model = spec.build((*spec.input_size, 3), len(classes))
    initialised_from = None
    if start_from is not None:
        model.set_weights(start_from.model.get_weights())
        initialised_from = {"directory": str(start_from.directory.resolve()), "version": version_id(start_from.directory)}
        log(f"starting from the weights of {start_from.directory} ({initialised_from['version']})")
    train_batches = AugmentedBatches(arrays["train"], onehot["train"], batch_size, augmentation, seed)
    # Cosine decay to zero: the last epochs take small steps, so weights and batch-norm
    # statistics settle instead of ending on a noisy, high-learning-rate epoch.
    # A warm-up (plugins whose normalisation has no running statistics to lean on early, e.g. group norm)
    # climbs linearly to the peak learning rate first.
    warmup_steps = min(defaults.warmup_epochs, epochs - 1) * len(train_batches)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else learning_rate,
        decay_steps=epochs * len(train_batches) - warmup_steps,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    patience = defaults.early_stopping_patience
    batch_norm_images = scale(arrays["train"][np.random.default_rng(seed).permutation(len(arrays["train"]))[:CALIBRATION_IMAGES]])
    callbacks = [PreciseValidation(batch_norm_images, scale(arrays["val"]), onehot["val"])]
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True))
    log(f"training {model_name} on {len(arrays['train'])} images, validating on {len(arrays['val'])}, up to {epochs} epochs")
    history = model.fit(
        train_batches,
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=(1 if sys.stdout.isatty() else 2) if progress else 0,
    )
    history_lists = {key: [float(v) for v in values] for key, values in history.history.items()}
    normalisation = sorted({type(layer).__name__ for layer in model._flatten_layers() if "Normalization" in type(layer).__name__})

    probabilities = {name: predict_views(model, scale(arrays[name]), views, gate=view_gate) for name in ("val", "test")}
    calibration, calibrated = calibrate(
        probabilities["val"], labels["val"], probabilities["test"], labels["test"], classes, views=views, view_gate=view_gate
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration["ood"] = fit_ood(model, arrays, labels, len(classes), out_dir)
    test_metrics = calibrated["after"]  # the served model is calibrated: same classes, calibrated confidences
    val_metrics = classification_metrics(labels["val"], apply_temperature(probabilities["val"], calibration["temperature"]), classes)
    baseline = colour_only_baseline(arrays["train"], labels["train"], arrays["test"], labels["test"], classes)
    metadata = ModelMetadata(
        name=out_dir.name,
        plugin=model_name,
        classes=classes,
        input_shape=[*spec.input_size, 3],
        preprocessing=config.to_json(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training={
            "epochs_requested": epochs,
            "epochs_run": len(history_lists["loss"]),
            # the epoch whose weights were kept: the best validation loss, or the last without early stopping
            "best_epoch": int(np.argmin(history_lists["val_loss"])) + 1 if early_stopping else len(history_lists["loss"]),
            "batch_size": batch_size,
            "optimizer": "adam",
            "learning_rate": learning_rate,
            "learning_rate_schedule": (f"linear warm-up over {warmup_steps // len(train_batches)} epoch(s), " if warmup_steps else "")
            + "cosine decay to 0 over the requested epochs",
            "loss": "categorical_crossentropy",
            "seed": seed,
            "initialised_from": initialised_from,
            "class_weight": {classes[k]: w for k, w in class_weight.items()},
            "early_stopping": {"monitor": "val_loss", "patience": patience, "restore_best_weights": True} if early_stopping else None,
            "batch_norm": f"moving statistics re-estimated each epoch on {len(batch_norm_images)} clean training images"
            if "BatchNormalization" in normalisation
            else None,
            "normalisation": normalisation,
            "augmentation": augmentation.to_json(),
            "seconds": round(time.time() - started, 1),
            "parameters": int(model.count_params()),
        },
        dataset=data.dataset_record,
        split={key: value for key, value in split.to_json().items() if key in ("seed", "fractions", "unit", "counts", "excluded")},
        calibration=calibration,
        metrics={
            "test": _summary(test_metrics),
            "val": _summary(val_metrics),
            "colour_only_baseline_test": baseline,
        },
        adaptation=adaptation,
    )
    serving = spec.build((*spec.input_size, 3), len(classes))  # uncompiled: carries no optimiser state
    serving.set_weights(model.get_weights())
    save_artifact(serving, metadata, split, out_dir)
    metadata = read_metadata(out_dir)  # as written: with the files' digests and the library versions
    write_report(
        out_dir, metadata, test_metrics, val_metrics, history_lists, arrays["train"], labels["train"], classes, augmentation, seed
    )
    write_calibration_report(out_dir, metadata, calibrated)
    log(
        f"test accuracy {test_metrics['accuracy']:.4f}, macro-F1 {test_metrics['macro_f1']:.4f}, "
        f"ECE {calibration['test']['ece_before']:.4f} -> {calibration['test']['ece_after']:.4f} after temperature "
        f"{calibration['temperature']}; review threshold {calibration['review_threshold']:.4f} accepts "
        f"{calibration['test']['coverage']:.1%} of test cells at accuracy {calibration['test']['accepted_accuracy']} "
        f"(n={test_metrics['n']}); colour-only baseline accuracy {baseline['accuracy']:.4f}; model written to {out_dir}"
    )
    return metadata


def adapt(
    model_dir: Path | str,
    lab_dirs: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    *,
    renames: dict[str, str] | None = None,
    epochs: int = 8,
    replay_per_class: int = 100,
    learning_rate: float = 3e-4,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ModelMetadata:
    """Fine-tune MODEL_DIR on a laboratory's reviewed cells (folder-per-class LAB_DIRS), write OUT_DIR.

    Every lab cell trains, beside a replay of ``replay_per_class`` of the model's own training images per
    class, so the model learns the lab's images without forgetting the others; the lab's cells are repeated
    until they are about half of each epoch. Same plugin, classes, preprocessing, augmentation and views;
    validation and test stay the original split's (calibration, threshold and test figures remain in-source
    and comparable), and every epoch runs (no early stopping on another source's loss). Lab cells that are
    images of that validation or test split are left out. Score the result on the lab's own held-out cells
    (`bloodcell evaluate`, or an evaluation set for the promotion gate). Returns the metadata.
    """
    started = time.time()
    keras.utils.set_random_seed(seed)
    base = load_artifact(model_dir)
    spec, classes, metadata = get_model_spec(base.metadata.plugin), base.classes, base.metadata
    lab = index_dataset(lab_dirs, progress=progress, renames=renames)
    unknown = sorted(set(lab.classes) - set(classes))
    if unknown:
        raise ValueError(f"the lab data has classes the model does not know: {unknown} (model: {classes}); use --rename")
    base_root, base_split = metadata.dataset_root, base.split()
    held_out = base_split.hashes("val", "test")
    lab_cells = [item for item in make_split(lab, seed=seed, fractions=(1.0, 0.0, 0.0)).parts["train"] if item.sha256 not in held_out]
    if not lab_cells:
        raise ValueError(f"no usable lab cells in {lab_dirs}")
    root = dataset_root([base_root, lab.root])[0]

    def moved(item: SplitItem, old_root: Path) -> SplitItem:
        return SplitItem(item.sha256, item.label, tuple(os.path.relpath(old_root / p, root) for p in item.paths))

    replay = [
        item
        for label in classes
        for item in sorted(
            (i for i in base_split.parts["train"] if i.label == label),
            key=lambda i: hashlib.sha256(f"{seed}:{i.sha256}".encode()).hexdigest(),
        )[:replay_per_class]
    ]
    split = Split(
        seed=base_split.seed,
        fractions=base_split.fractions,
        excluded=base_split.excluded,
        parts={
            "train": [moved(i, base_root) for i in replay] + [moved(i, lab.root) for i in lab_cells],
            "val": [moved(i, base_root) for i in base_split.parts["val"]],
            "test": [moved(i, base_root) for i in base_split.parts["test"]],
        },
    )
    preprocessor = Preprocessor(base.preprocessing)
    arrays = {
        name: load_split_images(root, items, preprocessor, f"preprocessing {name}", progress) for name, items in split.parts.items()
    }
    labels = {name: np.array([classes.index(i.label) for i in items]) for name, items in split.parts.items()}
    repeats = max(1, math.ceil(len(replay) / len(lab_cells)))
    lab_part = slice(len(replay), None)
    arrays["train"] = np.concatenate([arrays["train"][: len(replay)]] + [arrays["train"][lab_part]] * repeats)
    labels["train"] = np.concatenate([labels["train"][: len(replay)]] + [labels["train"][lab_part]] * repeats)
    lab_audit = audit_dataset(lab)
    dataset_record = metadata.dataset | {
        "root": str(root),
        "sources": list(metadata.dataset.get("sources", [str(base_root)])) + [str(d) for d in dataset_root(lab_dirs)[1]],
    }
    adaptation = {
        "adapted_from": {"directory": str(Path(model_dir).resolve()), "version": version_id(model_dir)},
        "lab_sources": [str(d) for d in dataset_root(lab_dirs)[1]],
        "lab_fingerprint": lab_audit["fingerprint"],
        "lab_cells": len(lab_cells),
        "lab_repeats": repeats,
        "replay_per_class": replay_per_class,
    }
    views, gate = served_views(metadata, model_dir)
    log(f"adapting {metadata.plugin} to {len(lab_cells)} lab cells (x{repeats}) with {len(replay)} replayed images")
    return fit_and_write(
        spec,
        Prepared(split, arrays, labels, classes, base.preprocessing, dataset_record),
        Path(out_dir),
        augmentation=Augmentation(**metadata.training["augmentation"]),
        epochs=epochs,
        batch_size=spec.defaults.batch_size,
        learning_rate=learning_rate,
        seed=seed,
        views=views,
        view_gate=gate,
        start_from=base,
        started=started,
        progress=progress,
        log=log,
        early_stopping=False,
        adaptation=adaptation,
    )


def fit_ood(
    model: keras.Model, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_classes: int, out_dir: Path
) -> dict[str, Any]:
    """Fit the out-of-distribution scorer (``ood.py``) on the clean training images, its threshold on the
    validation split; write it to OUT_DIR. Returns its calibration record, with the share of validation
    and test cells it lets through."""
    two_outputs = feature_model(model)
    features = {name: features_and_probabilities(two_outputs, scale(arrays[name]))[0] for name in ("train", "val", "test")}
    scorer = fit_scorer(features["train"], labels["train"], features["val"], n_classes)
    kept = {name: round(float((scorer.score(features[name]) <= scorer.threshold).mean()), 5) for name in ("val", "test")}
    return write_scorer(out_dir, scorer) | {"val_kept": kept["val"], "test_kept": kept["test"]}


def compatible_start(
    init_from: Path | str, model_name: str, classes: list[str], config: PreprocessingConfig, split: Split
) -> ModelArtifact:
    """The model directory INIT_FROM, loaded, if a run with these settings may start from its weights.

    The split must be the same image for image: weights that saw today's test images in training
    would make the new test figures worthless. Checked before any image is decoded.
    """
    artifact = load_artifact(init_from)
    mismatches = [
        what
        for what, same in (
            ("plugin", artifact.metadata.plugin == model_name),
            ("classes", artifact.classes == classes),
            ("preprocessing", artifact.metadata.preprocessing == config.to_json()),
            ("split", all(artifact.split().hashes(part) == split.hashes(part) for part in ("train", "val", "test"))),
        )
        if not same
    ]
    if mismatches:
        raise ValueError(
            f"cannot start from {init_from}: it differs from this run in {', '.join(mismatches)} "
            "(same plugin, data, --seed, fractions, --max-per-class and --steps needed)"
        )
    return artifact


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key in ("n", "accuracy", "macro_f1", "ece")} | {
        "per_class_f1": {label: round(row["f1"], 4) for label, row in metrics["per_class"].items()}
    }


def write_report(
    out_dir: Path,
    metadata: ModelMetadata,
    test_metrics: dict[str, Any],
    val_metrics: dict[str, Any],
    history: dict[str, list[float]],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    classes: list[str],
    augmentation,
    seed: int,
) -> None:
    report = out_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    (report / "metrics.json").write_text(
        json.dumps(
            {
                "test": test_metrics,
                "val": val_metrics,
                "history": history,
                "colour_only_baseline_test": metadata.metrics["colour_only_baseline_test"],
            },
            indent=1,
        )
        + "\n"
    )
    write_test_report(out_dir, metadata, test_metrics)
    plots.training_curves_png(history, report / "training_curves.png")
    rng = np.random.default_rng(seed)
    rows, row_labels = [], []
    for k, label in enumerate(classes):
        members = np.flatnonzero(train_labels == k)
        if len(members):
            original = train_images[members[0]]
            rows.append([original] + [augment(original, augmentation, rng) for _ in range(5)])
            row_labels.append(f"{label}: original, then augmented")
    plots.image_grid_png(
        rows,
        row_labels,
        report / "augmentation_preview.png",
        "training augmentation:\n" + ", ".join(f"{k}={v}" for k, v in asdict(augmentation).items()),
    )


def write_test_report(out_dir: Path, metadata: ModelMetadata, test_metrics: dict[str, Any]) -> None:
    """The served model's test-split classification report and confusion matrix."""
    report = out_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    views, gate = metadata.views, metadata.view_gate
    averaged = f", averaged over {len(views)} test-time views" if len(views) > 1 else ""
    averaged += f" where the first view's confidence is under {gate}" if averaged and gate is not None else ""
    (report / "classification_report.txt").write_text(
        f"{metadata.plugin} on {metadata.dataset['root']} (held-out test split, seed {metadata.split['seed']}"
        f"{averaged})\n\n" + format_classification_report(test_metrics) + "\n"
    )
    plots.confusion_matrix_png(test_metrics, report / "confusion_matrix.png", f"{metadata.plugin}: held-out test split{averaged}")


def write_calibration_report(out_dir: Path, metadata: ModelMetadata, calibrated: dict[str, Any]) -> None:
    """Reliability before and after temperature scaling, and coverage against accuracy, on the test split."""
    report = out_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    record = metadata.calibration or {}
    title = f"{metadata.plugin}: held-out test split"
    plots.reliability_png(calibrated["before"], report / "reliability_uncalibrated.png", f"{title}, uncalibrated")
    plots.reliability_png(calibrated["after"], report / "reliability.png", f"{title}, temperature {record['temperature']}")
    plots.coverage_png(calibrated["coverage_curve"], record, report / "coverage.png", title)
    (report / "calibration.json").write_text(
        json.dumps({**record, "test_coverage_curve": calibrated["coverage_curve"]}, indent=1) + "\n"
    )


def recalibrate(
    model_dir: Path | str,
    target_accuracy: float = TARGET_ACCURACY,
    data_dir: Path | str | None = None,
    views: tuple[str, ...] | None = None,
    view_gate: float | None | Literal["default"] = "default",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit temperature, review threshold and the out-of-distribution scorer for an existing model directory on
    its own split (the scorer on its training images, everything else on validation).

    ``views`` sets the test-time views to serve with and ``view_gate`` their gate (default: the ones it has).

    Reads the split's images from DATA_DIR (default: the dataset root recorded in the metadata), checking
    each against the content hash in split.json; the weights do not change. The calibrated validation and
    test metrics replace ``metrics.val`` and ``metrics.test`` and the report's figures, as after training.
    Returns the calibration record written to the metadata.
    """
    artifact = load_artifact(model_dir)
    views = check_views(views or artifact.views)
    view_gate = check_view_gate(artifact.view_gate if view_gate == "default" else view_gate, views)
    split, classes = artifact.split(), artifact.classes
    root = Path(data_dir or artifact.metadata.dataset_root)
    for item in split.parts["train"] + split.parts["val"] + split.parts["test"]:
        path = root / item.paths[0]
        if not path.is_file() or hashlib.sha256(read_image_file(path)).hexdigest() != item.sha256:
            raise ValueError(f"{path} is missing or is not the image the model was split with: pass the dataset folder")
    preprocessor = Preprocessor(artifact.preprocessing)
    probabilities, labels, arrays = {}, {}, {}
    for name in ("train", "val", "test"):
        items = split.parts[name]
        arrays[name] = load_split_images(root, items, preprocessor, f"preprocessing {name}", progress)
        labels[name] = np.array([classes.index(item.label) for item in items])
    for name in ("val", "test"):
        probabilities[name] = predict_views(artifact.model, scale(arrays[name]), views, gate=view_gate)  # uncalibrated
    record, calibrated = calibrate(
        probabilities["val"], labels["val"], probabilities["test"], labels["test"], classes, target_accuracy, views, view_gate
    )
    record["ood"] = fit_ood(artifact.model, arrays, labels, len(classes), Path(model_dir))
    val_metrics = classification_metrics(labels["val"], apply_temperature(probabilities["val"], record["temperature"]), classes)
    metrics = artifact.metadata.metrics | {"test": _summary(calibrated["after"]), "val": _summary(val_metrics)}
    metadata = update_metadata(model_dir, calibration=record, metrics=metrics, format_version=FORMAT_VERSION)
    metrics_file = Path(model_dir) / REPORT_DIR / "metrics.json"
    if metrics_file.is_file():
        metrics_file.write_text(
            json.dumps(json.loads(metrics_file.read_text()) | {"test": calibrated["after"], "val": val_metrics}, indent=1) + "\n"
        )
    write_test_report(Path(model_dir), metadata, calibrated["after"])
    write_calibration_report(Path(model_dir), metadata, calibrated)
    return record
