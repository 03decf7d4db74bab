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
from bloodcell_core.ml.source_adversary import AdversaryRamp, SourceTargets, source_targets, with_source_head
from bloodcell_core.ml.splits import Split, SplitItem, load_split_images, make_split
from bloodcell_core.ml.training_plan import TrainingPlan
from bloodcell_core.plugin_manager import get_model_spec
from bloodcell_core.plugin_types import ACQUISITION_AUGMENTATION, Augmentation, ModelSpec


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches, freshly drawn every epoch from a seeded generator.

    With SOURCES (a source adversary), each batch carries the class and source targets and their sample weights
    (the class weights: Keras takes ``class_weight`` for one output only)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        augmentation,
        seed: int,
        sources: SourceTargets | None = None,
        class_weights: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.images, self.targets, self.batch_size, self.augmentation = images, targets, batch_size, augmentation
        self.sources, self.class_weights = sources, class_weights
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, batch: int) -> tuple:
        chosen = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        augmented = scale(np.stack([augment(self.images[i], self.augmentation, self.rng) for i in chosen]))
        if self.sources is None or self.class_weights is None:
            return augmented, self.targets[chosen]
        targets = {"class": self.targets[chosen], "source": self.sources.onehot[chosen]}
        return augmented, targets, {"class": self.class_weights[chosen], "source": self.sources.weights[chosen]}

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

    def __init__(
        self, classifier: keras.Model, calibration_images: np.ndarray, val_images: np.ndarray, val_targets: np.ndarray
    ) -> None:
        super().__init__()
        self.classifier = classifier  # not ``self.model``, which may be the classifier with a source head
        self.calibration_images, self.val_images, self.val_targets = calibration_images, val_images, val_targets

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        recalibrate_batch_norm(self.classifier, self.calibration_images)
        probabilities = predict_in_batches(self.classifier, self.val_images)
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


def train(plan: TrainingPlan, *, progress: bool = True, log: Callable[[str], None] = print) -> ModelMetadata:
    """Carry out PLAN: train its plugin, evaluate on the held-out test split, write its model directory.
    Returns the metadata written to OUT_DIR/metadata.json."""
    spec = get_model_spec(plan.model_name)
    defaults = spec.defaults
    views = check_views(plan.views or defaults.test_time_views)
    view_gate = check_view_gate(defaults.view_gate if plan.view_gate == "default" else plan.view_gate, views)
    started = time.time()
    keras.utils.set_random_seed(plan.seed)
    index, data_audit, split, classes = split_dataset(plan, progress, log)
    steps = defaults.preprocessing_steps if plan.preprocessing_steps is None else plan.preprocessing_steps
    config = PreprocessingConfig(input_size=spec.input_size, steps=steps)
    start_from = None if plan.init_from is None else compatible_start(plan.init_from, plan.model_name, classes, config, split)
    arrays, labels = load_parts(index.root, split, classes, config, progress)
    augmentation = defaults.augmentation
    if plan.acquisition_augmentation:
        augmentation = dataclasses.replace(augmentation, **ACQUISITION_AUGMENTATION)
    fit_plan = FitPlan(
        spec=spec,
        augmentation=augmentation,
        epochs=plan.epochs or defaults.epochs,
        batch_size=plan.batch_size or defaults.batch_size,
        learning_rate=plan.learning_rate or defaults.learning_rate,
        seed=plan.seed,
        views=views,
        view_gate=view_gate,
        start_from=start_from,
        source_adversary=plan.source_adversary,
    )
    data = Prepared(split, arrays, labels, classes, config, dataset_record(plan, index, data_audit))
    return fit_and_write(fit_plan, data, Path(plan.out_dir), started=started, progress=progress, log=log)


def split_dataset(
    plan: TrainingPlan, progress: bool, log: Callable[[str], None]
) -> tuple[DatasetIndex, dict[str, Any], Split, list[str]]:
    """The plan's dataset indexed and audited, its split, and the classes that have images in it."""
    index = index_dataset(plan.data_dir, progress=progress, renames=plan.renames)
    if plan.max_per_class:
        index = limit_per_class(index, plan.max_per_class)
    data_audit = audit_dataset(index)
    for item in data_audit["unreadable"]:
        log(f"skipping unreadable file {item['path']}: {item['error']}")
    split = make_split(index, seed=plan.seed, fractions=plan.fractions)
    for item in split.excluded:
        log(f"excluding {' = '.join(item['paths'])}: {item['reason']} {item['labels']}")
    classes = sorted({item.label for items in split.parts.values() for item in items})
    if len(classes) < 2:
        raise ValueError(f"need at least two classes with images in {plan.data_dir}, found {classes}")
    if not split.parts["val"] or not split.parts["test"]:
        raise ValueError("the validation or test split is empty: add images or change the fractions")
    return index, data_audit, split, classes


def dataset_record(plan: TrainingPlan, index: DatasetIndex, data_audit: dict[str, Any]) -> dict[str, Any]:
    """What the metadata records of the plan's dataset (``ModelMetadata.dataset``)."""
    return {
        "root": str(index.root),
        "sources": [str(folder) for folder in dataset_root(plan.data_dir)[1]],
        "renames": plan.renames or {},
        "fingerprint": data_audit["fingerprint"],
        "files": data_audit["files"],
        "unique_images": data_audit["unique_images"],
        "unreadable": data_audit["unreadable"],
        "duplicate_groups": len(data_audit["duplicate_groups"]),
        "max_per_class": plan.max_per_class,
        "shortcut_warnings": data_audit["shortcuts"]["warnings"],
    }


def load_parts(
    root: Path, split: Split, classes: list[str], config: PreprocessingConfig, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each part of SPLIT read from ROOT and preprocessed (uint8 images), and its class indices."""
    preprocessor = Preprocessor(config)
    arrays = {
        name: load_split_images(root, items, preprocessor, f"preprocessing {name}", progress) for name, items in split.parts.items()
    }
    labels = {name: np.array([classes.index(item.label) for item in items]) for name, items in split.parts.items()}
    return arrays, labels


@dataclass
class Prepared:
    """A run's data, preprocessed: the split, its uint8 images and class indices per part, and what to record."""

    split: Split
    arrays: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: list[str]
    config: PreprocessingConfig
    dataset_record: dict[str, Any]  # ModelMetadata.dataset


@dataclass(frozen=True)
class FitPlan:
    """How ``fit_and_write`` fits, every choice made (the plugin's defaults applied): from ``train`` or ``adapt``."""

    spec: ModelSpec
    augmentation: Augmentation
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    views: tuple[str, ...]
    view_gate: float | None
    start_from: ModelArtifact | None = None  # its weights, instead of random ones
    early_stopping: bool = True  # without: every epoch runs and the last one is kept
    source_adversary: float = 0.0  # peak weight of the source head's reversed gradient (0: no head)
    adaptation: dict[str, Any] | None = None  # from ``adapt``: joins the metadata


@dataclass
class Fitted:
    """A fitted model, its per-epoch history, and the metadata's training record but for the run's duration."""

    model: keras.Model
    history: dict[str, list[float]]
    training: dict[str, Any]


@dataclass
class Calibrated:
    """A fitted model's calibration: the metadata's record (the out-of-distribution scorer's joins it), the test
    split's metrics before and after and its coverage curve (for the report), and the calibrated validation metrics."""

    record: dict[str, Any]
    test: dict[str, Any]
    val_metrics: dict[str, Any]

    @property
    def test_metrics(self) -> dict[str, Any]:
        return self.test["after"]  # the served model is calibrated: same classes, calibrated confidences


def fit_and_write(
    plan: FitPlan, data: Prepared, out_dir: Path, *, started: float, progress: bool = True, log: Callable[[str], None] = print
) -> ModelMetadata:
    """Fit PLAN on the prepared data, calibrate it, fit its out-of-distribution scorer, and write the model
    directory with its report. ``started`` (a ``time.time()``) dates the run. Returns the metadata."""
    fitted = fit(plan, data, progress, log)
    calibrated = calibrate_fitted(plan, data, fitted.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibrated.record["ood"] = fit_ood(fitted.model, data.arrays, data.labels, len(data.classes), out_dir)
    baseline = colour_only_baseline(data.arrays["train"], data.labels["train"], data.arrays["test"], data.labels["test"], data.classes)
    metadata = model_metadata(plan, data, fitted, calibrated, baseline, out_dir.name, seconds=round(time.time() - started, 1))
    metadata = save_model(plan.spec, fitted.model, metadata, data.split, out_dir)
    write_report(out_dir, metadata, calibrated, fitted.history, data, plan)
    write_calibration_report(out_dir, metadata, calibrated.test)
    record, test = calibrated.record, calibrated.test_metrics
    log(
        f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
        f"ECE {record['test']['ece_before']:.4f} -> {record['test']['ece_after']:.4f} after temperature "
        f"{record['temperature']}; review threshold {record['review_threshold']:.4f} accepts "
        f"{record['test']['coverage']:.1%} of test cells at accuracy {record['test']['accepted_accuracy']} "
        f"(n={test['n']}); colour-only baseline accuracy {baseline['accuracy']:.4f}; model written to {out_dir}"
    )
    return metadata


def fit(plan: FitPlan, data: Prepared, progress: bool, log: Callable[[str], None]) -> Fitted:
    """Fit the plan's plugin on the augmented training split, validating each epoch with precise batch-norm statistics;
    with the plan's source adversary (``source_adversary``) when it has one."""
    n_classes = len(data.classes)
    onehot = {name: keras.utils.to_categorical(y, n_classes) for name, y in data.labels.items()}
    class_weight = balanced_class_weights(data.labels["train"], n_classes)
    sources = source_targets(data.split.parts["train"]) if plan.source_adversary else None
    train_batches = AugmentedBatches(
        data.arrays["train"],
        onehot["train"],
        plan.batch_size,
        plan.augmentation,
        plan.seed,
        sources=sources,
        class_weights=np.array([class_weight[k] for k in data.labels["train"]], dtype=np.float32),
    )
    warmup_epochs = min(plan.spec.defaults.warmup_epochs, plan.epochs - 1)
    model, initialised_from = built_model(plan, n_classes, log)
    trainer, callbacks = model, []
    if sources is not None:
        trainer, reversal = with_source_head(model, len(sources.folders))
        callbacks.append(AdversaryRamp(reversal, plan.source_adversary, plan.epochs))
        judged = ", ".join(sources.judged_classes) or "no class"
        log(f"source adversary (peak weight {plan.source_adversary}) on {judged}: {' / '.join(sources.folders)}")
    compile_for_training(trainer, plan, warmup_epochs * len(train_batches), len(train_batches))
    patience = plan.spec.defaults.early_stopping_patience
    shuffled = np.random.default_rng(plan.seed).permutation(len(data.arrays["train"]))
    batch_norm_images = scale(data.arrays["train"][shuffled[:CALIBRATION_IMAGES]])
    callbacks.append(PreciseValidation(model, batch_norm_images, scale(data.arrays["val"]), onehot["val"]))
    if plan.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True))
    n_train, n_val = len(data.arrays["train"]), len(data.arrays["val"])
    log(f"training {plan.spec.name} on {n_train} images, validating on {n_val}, up to {plan.epochs} epochs")
    history = trainer.fit(
        train_batches,
        epochs=plan.epochs,
        class_weight=None if sources else class_weight,  # with a source head the batches carry them
        callbacks=callbacks,
        verbose=(1 if sys.stdout.isatty() else 2) if progress else 0,
    )
    losses = {key: [float(v) for v in values] for key, values in history.history.items()}
    if sources is not None:  # the curves show the classifier's loss and accuracy, beside the head's
        losses = {key.removeprefix("class_"): values for key, values in losses.items() if key != "loss"}
    normalisation = sorted({type(layer).__name__ for layer in model._flatten_layers() if "Normalization" in type(layer).__name__})
    training = {
        "epochs_requested": plan.epochs,
        "epochs_run": len(losses["loss"]),
        # the epoch whose weights were kept: the best validation loss, or the last without early stopping
        "best_epoch": int(np.argmin(losses["val_loss"])) + 1 if plan.early_stopping else len(losses["loss"]),
        "batch_size": plan.batch_size,
        "optimizer": "adam",
        "learning_rate": plan.learning_rate,
        "learning_rate_schedule": (f"linear warm-up over {warmup_epochs} epoch(s), " if warmup_epochs else "")
        + "cosine decay to 0 over the requested epochs",
        "loss": "categorical_crossentropy",
        "seed": plan.seed,
        "initialised_from": initialised_from,
        "class_weight": {data.classes[k]: w for k, w in class_weight.items()},
        "early_stopping": {"monitor": "val_loss", "patience": patience, "restore_best_weights": True} if plan.early_stopping else None,
        "batch_norm": f"moving statistics re-estimated each epoch on {len(batch_norm_images)} clean training images"
        if "BatchNormalization" in normalisation
        else None,
        "normalisation": normalisation,
        "augmentation": plan.augmentation.to_json(),
        "source_adversary": None if sources is None else sources.record(plan.source_adversary),
    }
    return Fitted(model, losses, training)


def built_model(plan: FitPlan, n_classes: int, log: Callable[[str], None]) -> tuple[keras.Model, dict[str, str] | None]:
    """The plan's plugin built (from the start model's weights, if any); with where its weights came from."""
    model = plan.spec.build((*plan.spec.input_size, 3), n_classes)
    initialised_from = None
    if plan.start_from is not None:
        model.set_weights(plan.start_from.model.get_weights())
        initialised_from = {"directory": str(plan.start_from.directory.resolve()), "version": version_id(plan.start_from.directory)}
        log(f"starting from the weights of {plan.start_from.directory} ({initialised_from['version']})")
    return model, initialised_from


def compile_for_training(model: keras.Model, plan: FitPlan, warmup_steps: int, steps_per_epoch: int) -> None:
    """Compile MODEL (the classifier, or the classifier with a source head: outputs ``class`` and ``source``) with
    Adam on the plan's learning-rate schedule."""
    # Cosine decay to zero: the last epochs take small steps, so weights and batch-norm
    # statistics settle instead of ending on a noisy, high-learning-rate epoch.
    # A warm-up (plugins whose normalisation has no running statistics to lean on early, e.g. group norm)
    # climbs linearly to the peak learning rate first.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else plan.learning_rate,
        decay_steps=plan.epochs * steps_per_epoch - warmup_steps,
        warmup_target=plan.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if isinstance(model.output, dict):
        losses = {"class": "categorical_crossentropy", "source": "categorical_crossentropy"}
        model.compile(optimizer=optimizer, loss=losses, metrics={"class": ["accuracy"], "source": ["accuracy"]})
    else:
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])


def calibrate_fitted(plan: FitPlan, data: Prepared, model: keras.Model) -> Calibrated:
    """Temperature and review threshold fitted on the validation split with the plan's test-time views; the test
    split scored before and after."""
    probabilities = {name: predict_views(model, scale(data.arrays[name]), plan.views, gate=plan.view_gate) for name in ("val", "test")}
    record, test = calibrate(
        probabilities["val"], data.labels["val"], probabilities["test"], data.labels["test"], data.classes,
        views=plan.views, view_gate=plan.view_gate,
    )  # fmt: skip
    val = classification_metrics(data.labels["val"], apply_temperature(probabilities["val"], record["temperature"]), data.classes)
    return Calibrated(record, test, val)


def model_metadata(
    plan: FitPlan, data: Prepared, fitted: Fitted, calibrated: Calibrated, baseline: dict[str, Any], name: str, seconds: float
) -> ModelMetadata:
    """The model directory's metadata.json, before saving adds the files' digests and the library versions."""
    split_record = {
        key: value for key, value in data.split.to_json().items() if key in ("seed", "fractions", "unit", "counts", "excluded")
    }
    return ModelMetadata(
        name=name,
        plugin=plan.spec.name,
        classes=data.classes,
        input_shape=[*plan.spec.input_size, 3],
        preprocessing=data.config.to_json(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training=fitted.training | {"seconds": seconds, "parameters": int(fitted.model.count_params())},
        dataset=data.dataset_record,
        split=split_record,
        calibration=calibrated.record,
        metrics={
            "test": _summary(calibrated.test_metrics),
            "val": _summary(calibrated.val_metrics),
            "colour_only_baseline_test": baseline,
        },
        adaptation=plan.adaptation,
    )


def save_model(spec: ModelSpec, model: keras.Model, metadata: ModelMetadata, split: Split, out_dir: Path) -> ModelMetadata:
    """Write the model directory; returns the metadata as written (with the files' digests and the library versions)."""
    serving = spec.build((*spec.input_size, 3), len(metadata.classes))  # uncompiled: carries no optimiser state
    serving.set_weights(model.get_weights())
    save_artifact(serving, metadata, split, out_dir)
    return read_metadata(out_dir)


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
    lab_cells = usable_lab_cells(base, lab, seed)
    if not lab_cells:
        raise ValueError(f"no usable lab cells in {lab_dirs}")
    root, split, n_replay = adaptation_split(base, lab, lab_cells, seed, replay_per_class)
    arrays, labels = load_parts(root, split, classes, base.preprocessing, progress)
    repeats = max(1, math.ceil(n_replay / len(lab_cells)))
    lab_part = slice(n_replay, None)
    arrays["train"] = np.concatenate([arrays["train"][:n_replay]] + [arrays["train"][lab_part]] * repeats)
    labels["train"] = np.concatenate([labels["train"][:n_replay]] + [labels["train"][lab_part]] * repeats)
    lab_audit = audit_dataset(lab)
    lab_record = metadata.dataset | {
        "root": str(root),
        "sources": list(metadata.dataset.get("sources", [str(metadata.dataset_root)])) + [str(d) for d in dataset_root(lab_dirs)[1]],
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
    log(f"adapting {metadata.plugin} to {len(lab_cells)} lab cells (x{repeats}) with {n_replay} replayed images")
    plan = FitPlan(
        spec=spec,
        augmentation=Augmentation(**metadata.training["augmentation"]),
        epochs=epochs,
        batch_size=spec.defaults.batch_size,
        learning_rate=learning_rate,
        seed=seed,
        views=views,
        view_gate=gate,
        start_from=base,
        early_stopping=False,
        adaptation=adaptation,
    )
    data = Prepared(split, arrays, labels, classes, base.preprocessing, lab_record)
    return fit_and_write(plan, data, Path(out_dir), started=started, progress=progress, log=log)


def usable_lab_cells(base: ModelArtifact, lab: DatasetIndex, seed: int) -> list[SplitItem]:
    """LAB's cells (one per distinct image) but those that are images of BASE's validation or test split;
    ValueError for a lab class BASE does not know."""
    unknown = sorted(set(lab.classes) - set(base.classes))
    if unknown:
        raise ValueError(f"the lab data has classes the model does not know: {unknown} (model: {base.classes}); use --rename")
    held_out = base.split().hashes("val", "test")
    return [item for item in make_split(lab, seed=seed, fractions=(1.0, 0.0, 0.0)).parts["train"] if item.sha256 not in held_out]


def adaptation_split(
    base: ModelArtifact, lab: DatasetIndex, lab_cells: list[SplitItem], seed: int, replay_per_class: int
) -> tuple[Path, Split, int]:
    """The split ``adapt`` fits on, under the common root of BASE's dataset and LAB: replayed training images of BASE
    (``replay_per_class`` per class, drawn by SEED) and the lab cells for training, BASE's own validation and test.
    Returns the root, the split and the number of replayed images (the first of its training part)."""
    base_root, base_split = base.metadata.dataset_root, base.split()
    root = dataset_root([base_root, lab.root])[0]

    def moved(item: SplitItem, old_root: Path) -> SplitItem:
        return SplitItem(item.sha256, item.label, tuple(os.path.relpath(old_root / p, root) for p in item.paths))

    replay = [
        item
        for label in base.classes
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
    return root, split, len(replay)


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
    out_dir: Path, metadata: ModelMetadata, calibrated: Calibrated, history: dict[str, list[float]], data: Prepared, plan: FitPlan
) -> None:
    """The report of a fitted model: metrics, the test report, training curves and an augmentation preview."""
    report = out_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    (report / "metrics.json").write_text(
        json.dumps(
            {
                "test": calibrated.test_metrics,
                "val": calibrated.val_metrics,
                "history": history,
                "colour_only_baseline_test": metadata.metrics["colour_only_baseline_test"],
            },
            indent=1,
        )
        + "\n"
    )
    write_test_report(out_dir, metadata, calibrated.test_metrics)
    plots.training_curves_png(history, report / "training_curves.png")
    rng = np.random.default_rng(plan.seed)
    rows, row_labels = [], []
    for k, label in enumerate(data.classes):
        members = np.flatnonzero(data.labels["train"] == k)
        if len(members):
            original = data.arrays["train"][members[0]]
            rows.append([original] + [augment(original, plan.augmentation, rng) for _ in range(5)])
            row_labels.append(f"{label}: original, then augmented")
    plots.image_grid_png(
        rows,
        row_labels,
        report / "augmentation_preview.png",
        "training augmentation:\n" + ", ".join(f"{k}={v}" for k, v in asdict(plan.augmentation).items()),
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
    arrays, labels = load_parts(root, split, classes, artifact.preprocessing, progress)
    probabilities = {name: predict_views(artifact.model, scale(arrays[name]), views, gate=view_gate) for name in ("val", "test")}
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
