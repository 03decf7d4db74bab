"""The machine-learning commands: plugins, datasets, training, calibration, evaluation, prediction, the
results and generalisation tables, the trials, and finding white cells in whole smear fields."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import click

from bloodcell_core.cli import context
from bloodcell_core.cli.group import BloodcellGroup, fail
from bloodcell_core.cli.options import (
    EXISTING_DIR,
    FOLDER,
    F,
    comma_list,
    data_root_option,
    json_option,
    out_option,
    overlays_option,
    renames_option,
    view_options,
)


def _log(message: str) -> None:
    """Progress lines go to standard error: standard output holds the result."""
    click.echo(message, err=True)


@click.command()
@json_option("Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins, what each provides and where it came from."""
    from bloodcell_core.plugin_manager import describe_plugins

    infos = describe_plugins()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    for info in infos:
        provides = ", ".join(
            [f"model {m}" for m in info.models]
            + [f"preprocessing step {s}" for s in info.preprocessing_steps]
            + [f"cell locator {c}" for c in info.cell_locators]
            + [f"exporter {e}" for e in info.exporters]
            + [f"runtime {r}" for r in info.runtimes]
        )
        click.echo(f"{info.name}\n  provides: {provides or 'nothing'}\n  hooks: {', '.join(info.hooks)}\n  from: {info.source}")


@click.group(cls=BloodcellGroup)
def dataset() -> None:
    """Inspect folder-per-class datasets (DATA_DIR/<class>/<image>)."""


@dataset.command("audit")
@click.argument("data_dir", type=EXISTING_DIR)
@json_option("Print the full report as JSON.")
def dataset_audit(data_dir: Path, as_json: bool) -> None:
    """Decode every file for real and report counts, unreadable files, duplicates
    (also across classes) and image-size / background-colour shortcuts."""
    from bloodcell_core.ml.dataset import audit_dataset, format_audit, index_dataset

    report = audit_dataset(index_dataset(data_dir, progress=not as_json and sys.stderr.isatty()))
    click.echo(json.dumps(report, indent=2) if as_json else format_audit(report))


@dataset.command("shortcuts")
@click.argument("data_dir", type=EXISTING_DIR)
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    help="A model directory trained on DATA_DIR: its test accuracy is shown beside the shortcuts.",
)
@click.option("--seed", type=int, help="The split's seed (default: the model's, else 0).")
@click.option(
    "--steps",
    help="Preprocessing steps of the served image, comma-separated, e.g. center_crop,reinhard "
    "(default: the model's, else center_crop).",
)
@json_option("Print the report as JSON.")
def dataset_shortcuts(data_dir: Path, model_dir: Path | None, seed: int | None, steps: str | None, as_json: bool) -> None:
    """How far classifiers that never see a cell's shape get: image size, background (corner) colour,
    whole-image colour, and the image size after the serving preprocessing, on the models' split."""
    from bloodcell_core.ml.artifacts import read_metadata
    from bloodcell_core.ml.shortcuts import format_shortcuts, shortcut_audit

    metadata = read_metadata(model_dir) if model_dir else None
    if seed is None:
        seed = metadata.split["seed"] if metadata else 0
    report = shortcut_audit(data_dir, seed, metadata, comma_list(steps), progress=not as_json and sys.stderr.isatty())
    click.echo(json.dumps(report, indent=2) if as_json else format_shortcuts(report))


@dataset.command("export-reviewed")
@click.argument("out_dir", type=FOLDER)
def dataset_export_reviewed(out_dir: Path) -> None:
    """Write the cells technologists relabelled as OUT_DIR/<label>/<sha256>.<ext> (training data)."""
    from bloodcell_core.service.review import export_reviewed_labels

    with context.transaction() as session:
        counts = export_reviewed_labels(session, settings=context.settings(), out_dir=out_dir)
    click.echo(json.dumps(counts) if counts else "no reviewed cells")


def _refuse_existing_model(out_dir: Path) -> None:
    if (out_dir / "metadata.json").exists():
        fail(f"{out_dir} already holds a model; choose another --out or remove it")


@click.command("train")
@click.option("--model", "model_name", required=True, help="Model plugin name (see `bloodcell plugins`).")
@click.option(
    "--data",
    "data_dirs",
    required=True,
    multiple=True,
    type=EXISTING_DIR,
    help="Folder-per-class training data; repeat to train on several folders as one dataset "
    "(identical images in two of them count once).",
)
@renames_option("Read a class folder as another class, e.g. seg_neutrophil=neutrophil; repeatable.")
@out_option("Model directory to write (model.keras, metadata.json, split.json, report/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs (default: the plugin's); early stopping may end sooner.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, initial weights and augmentation.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the plugin's.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate (default: the plugin's).")
@click.option("--max-per-class", type=click.IntRange(min=3), help="Use only this many files per class (quick trials).")
@click.option(
    "--steps",
    help="Preprocessing steps before the resize, comma-separated (default: the plugin's), "
    "e.g. center_crop,reinhard; `bloodcell plugins` lists them.",
)
@click.option(
    "--acquisition-augmentation",
    is_flag=True,
    help="Add stain and acquisition augmentation (LAB colour shift, contrast, gamma, blur, noise, JPEG, "
    "lower resolution, washed-out colour) to the plugin's flips and turns: for other laboratories' images.",
)
@click.option(
    "--init-from",
    type=EXISTING_DIR,
    help="Start from this model directory's weights (same plugin, data, --seed, --max-per-class and --steps) "
    "with a fresh learning-rate schedule: more epochs for a model that was still improving.",
)
@view_options("Test-time views to calibrate and serve with", "the plugin's", "the plugin's")
def train_command(
    model_name: str,
    data_dirs: tuple[Path, ...],
    renames: tuple[str, ...],
    out_dir: Path,
    epochs: int | None,
    seed: int,
    batch_size: int | None,
    learning_rate: float | None,
    max_per_class: int | None,
    steps: str | None,
    acquisition_augmentation: bool,
    init_from: Path | None,
    views: str | None,
    view_gate: float | None | Literal["default"],
) -> None:
    """Train a model plugin, evaluate it on the held-out test split and write a model directory.

    The split is 70/15/15, stratified, deterministic from --seed, with identical images kept
    on one side and images filed under two classes excluded. Training augments images
    (rotation, shift, shear, zoom, flips), weights classes when they are imbalanced and stops
    early on the validation loss. Temperature scaling and the review threshold are then fitted
    on the validation split (see `bloodcell calibrate`).
    """
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    _refuse_existing_model(out_dir)
    plan = TrainingPlan(
        model_name,
        list(data_dirs),
        out_dir,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_per_class=max_per_class,
        preprocessing_steps=comma_list(steps),
        renames=parse_renames(renames),
        acquisition_augmentation=acquisition_augmentation,
        init_from=init_from,
        views=comma_list(views),
        view_gate=view_gate,
    )
    train(plan, progress=True, log=_log)


@click.command("adapt")
@click.argument("model_dir", type=EXISTING_DIR)
@click.option(
    "--data",
    "lab_dirs",
    required=True,
    multiple=True,
    type=EXISTING_DIR,
    help="The laboratory's reviewed cells, folder per class (e.g. from `bloodcell dataset export-reviewed`); repeatable.",
)
@renames_option("Read a class folder as another class.")
@out_option("Model directory to write.")
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True, help="Fine-tuning epochs (all run).")
@click.option(
    "--replay-per-class",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Images per class of the model's own training split trained beside the lab's cells.",
)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def adapt_command(
    model_dir: Path,
    lab_dirs: tuple[Path, ...],
    renames: tuple[str, ...],
    out_dir: Path,
    epochs: int,
    replay_per_class: int,
    learning_rate: float,
    seed: int,
) -> None:
    """Fine-tune MODEL_DIR on a laboratory's own reviewed cells: lab adaptation.

    For a laboratory whose images differ from the training sources (other stain, microscope, camera).
    Every lab cell trains, with a replay of the model's own training images so it forgets nothing; the
    validation and test split stay the model's own, so its calibration and figures stay comparable.
    Keep some of the lab's reviewed cells out of --data and score the new model on them
    (`bloodcell evaluate OUT HELD_OUT_DIR`), or register them as the promotion gate's evaluation set
    (`bloodcell models evaluation-set`) before promoting it.
    """
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.training import adapt

    _refuse_existing_model(out_dir)
    adapt(
        model_dir,
        list(lab_dirs),
        out_dir,
        renames=parse_renames(renames),
        epochs=epochs,
        replay_per_class=replay_per_class,
        learning_rate=learning_rate,
        seed=seed,
        progress=sys.stderr.isatty(),
        log=_log,
    )


@click.command("results")
@click.option("--data", "data_dirs", multiple=True, required=True, type=EXISTING_DIR, help="A dataset; repeat for several.")
@click.option("--models", "model_names", help="Comma-separated model plugins (default: every installed one).")
@out_option("Model directories go to OUT/<dataset>/<plugin>; the table to OUT/results.md.", default=Path("results"))
@click.option("--seed", type=int, default=0, show_default=True, help="One split per dataset, shared by all models.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override every plugin's epochs (quick trials only).")
@click.option(
    "--no-train", is_flag=True, help="Train nothing: tabulate the model directories OUT already holds and list the missing ones."
)
def results_command(
    data_dirs: tuple[Path, ...], model_names: str | None, out_dir: Path, seed: int, epochs: int | None, no_train: bool
) -> None:
    """Train and evaluate every model plugin on every dataset and write the results table.

    Columns: test-time views, test accuracy and macro-F1, ECE after temperature scaling, the share
    of test cells accepted at the calibrated review threshold and their accuracy, parameters, file
    size, batch-64 predict images/s on 256 preprocessed test images (with the views and view gate),
    training time. Existing model directories are reused, so an interrupted run continues where it
    stopped. Hours on a CPU: run it in the background.
    """
    from bloodcell_core.ml.results import build_results, markdown_table
    from bloodcell_core.plugin_manager import model_specs

    plugins = model_names.split(",") if model_names else sorted(model_specs())
    unknown = sorted(set(plugins) - set(model_specs()))
    if unknown:  # before hours of training on the known ones
        fail(f"unknown model plugin(s): {', '.join(unknown)}; installed: {', '.join(sorted(model_specs()))}")
    try:
        rows = build_results(list(data_dirs), plugins, out_dir, seed, epochs, train_missing=not no_train, log=_log)
    except OSError as exc:  # the throughput figure reads test images from --data
        fail(f"{exc}: pass the dataset folders the models in {out_dir} were trained on")
    click.echo(markdown_table(rows))


@click.command("generalisation")
@click.argument("model_dirs", nargs=-1, required=True, type=EXISTING_DIR)
@data_root_option
@out_option("Writes OUT/generalisation.json and OUT/generalisation.md.", default=Path("results"))
@json_option("Print the rows as JSON instead of the markdown table.")
def generalisation_command(model_dirs: tuple[Path, ...], data_root: Path, out_dir: Path, as_json: bool) -> None:
    """Score MODEL_DIRS beyond their own test split: the generalisation table.

    Rows per model: its held-out test split (same source); neutrophils of each visible source it did not
    train on (PBC pbc8/neutrophil, Munich kaggle5/seg_neutrophil: source swap, or leave-one-source-out for
    a model that saw one of them); BCCD's test-split white cells cropped by their boxes (another
    laboratory); blurred, stain-shifted and half-magnified copies of the test images and uniform noise
    (synthetic shifts). Columns: accuracy, macro-F1, share accepted without review and its accuracy,
    share flagged unfamiliar, and the out-of-distribution AUROC against the same-source test cells.
    Everything goes through the serving path, review rule included.

    Per sample (models that count a whole differential): 50 seeded synthetic samples of 100 cells per group,
    composed from the cells above as the model called them: normal differentials of the same sources (test
    split) and of BCCD (drawn with replacement), and leukaemic ones with 2, 5, 10, 20 and 50 % test-split
    blasts. Columns: share of samples flagged (any, blasts, immature, unfamiliar), and predicted against true
    blast and immature percentages (Pearson r, bias in points), under the BLOODCELL_* flag rule's defaults.
    """
    from bloodcell_core.ml.generalisation import build_table, markdown_table

    progress = sys.stderr.isatty() and not as_json
    rows = build_table(list(model_dirs), data_root, out_dir, log=_log if progress else lambda message: None)
    click.echo(json.dumps(rows, indent=2) if as_json else markdown_table(rows))


@click.command("trials")
@click.argument("names", nargs=-1)
@data_root_option
@out_option("One model directory per trial, and OUT/trials.json and OUT/trials.md.", default=Path("runs/trials"))
def trials_command(names: tuple[str, ...], data_root: Path, out_dir: Path) -> None:
    """Train and score the cross-laboratory trials: NAMES, or all of them (see docs/trials.md).

    Each trial varies one factor of today's recipe (normalisation, scale, colour, width) at one budget:
    compact_cnn family, 10 epochs, at most 500 images per class of kaggle5 + pbc8, seed 0, stain and
    acquisition augmentation. Each is scored by the generalisation table, per cell and per sample. Resumable:
    a trial whose model directory exists is scored without training, and a scored one is only read (delete
    OUT/NAME/report/trial.json to score it again). About 10-20 minutes a trial on two cores.
    """
    from bloodcell_core.ml.trials import run_trials, table

    click.echo(table(run_trials(list(names) or None, data_root, out_dir, log=_log)))


@click.command("calibrate")
@click.argument("model_dir", type=EXISTING_DIR)
@click.option(
    "--target-accuracy",
    type=click.FloatRange(0.5, 1.0),
    default=0.995,
    show_default=True,
    help="Accuracy the accepted (not reviewed) validation cells must reach.",
)
@click.option(
    "--data",
    "data_dir",
    type=EXISTING_DIR,
    help="The dataset the model was trained on (default: the folder recorded in its metadata).",
)
@view_options("Test-time views to average", "the model's current ones", "the model's current gate")
def calibrate_command(
    model_dir: Path, target_accuracy: float, data_dir: Path | None, views: str | None, view_gate: float | None | Literal["default"]
) -> None:
    """Fit temperature scaling and the review threshold on MODEL_DIR's own validation split.

    Training does this already; use it for older model directories, another target, or other
    test-time views (--views: the model is asked about each view of an image and the answers are
    averaged; the temperature and threshold are refitted for them; --view-gate: only cells the
    first view leaves unsure get the others). The weights do not change;
    metadata.json gains `calibration` and the validation and test metrics, and report/ the
    reliability diagrams before and after, the coverage-vs-accuracy curve, the classification
    report and the confusion matrix. The directory becomes a new model version:
    workers refuse it under its old registration, so register it again (`bloodcell models register`).
    """
    from bloodcell_core.ml.training import recalibrate

    record = recalibrate(model_dir, target_accuracy, data_dir, comma_list(views), view_gate, progress=sys.stderr.isatty())
    click.echo(json.dumps(record, indent=2))


@click.command("evaluate")
@click.argument("model_dir", type=EXISTING_DIR)
@click.argument("data_dir", type=EXISTING_DIR)
@click.option("--include-seen", is_flag=True, help="Also score images from the model's own train/validation split.")
@renames_option("Score a class folder as one of the model's classes, e.g. seg_neutrophil=neutrophil; repeatable.")
@json_option("Print JSON (keys accuracy, macro_f1, ece, n, per_class, coverage, accepted_accuracy, unfamiliar_share, ...).")
def evaluate_command(model_dir: Path, data_dir: Path, include_seen: bool, renames: tuple[str, ...], as_json: bool) -> None:
    """Score MODEL_DIR on a folder-per-class DATA_DIR (only classes the model knows).

    Reports accuracy, macro-F1, per-class precision / recall / F1, the confusion matrix, the
    expected calibration error, and the share of cells accepted without review (coverage) with
    their accuracy, decided exactly as the service decides review; images the model trained on
    are left out unless --include-seen.
    """
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.evaluation import evaluate
    from bloodcell_core.ml.inference import Classifier

    metrics = evaluate(
        Classifier.from_dir(model_dir),
        data_dir,
        include_seen=include_seen,
        progress=not as_json and sys.stderr.isatty(),
        renames=parse_renames(renames),
    )
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_evaluation(metrics, f"{model_dir} on {data_dir}\n")


def _print_evaluation(metrics: dict[str, Any], title: str) -> None:
    from bloodcell_core.ml.metrics import format_classification_report

    excluded = metrics["excluded"]
    click.echo(title)
    click.echo(format_classification_report(metrics))
    accepted = "none" if metrics["accepted_accuracy"] is None else f"{metrics['accepted_accuracy']:.4f}"
    click.echo(
        f"\naccepted without review: {metrics['coverage']:.1%} of cells, accuracy {accepted}; "
        f"unlike the training images: {metrics['unfamiliar_share']:.1%}"
    )
    click.echo("\nconfusion matrix (rows true, columns predicted; order as above):")
    for row in metrics["confusion_matrix"]:
        click.echo("  " + " ".join(f"{v:5d}" for v in row))
    click.echo(
        f"\nleft out: {excluded['seen_in_training']} seen in training, {len(excluded['unreadable'])} unreadable, "
        f"{excluded['duplicate_files']} duplicate files, {len(excluded['conflicting_labels'])} with conflicting labels, "
        f"class folders unknown to the model: {excluded['unknown_class_folders'] or 'none'}"
    )


@click.command("predict")
@click.argument("model_dir", type=EXISTING_DIR)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option("Print one JSON list with an entry per image.")
@click.option(
    "--runtime",
    default="keras",
    show_default=True,
    help="Inference runtime: keras, a runtime plugin such as openvino (used only if it matches Keras on a parity batch), or auto.",
)
def predict_command(model_dir: Path, images: tuple[Path, ...], as_json: bool, runtime: str) -> None:
    """Classify IMAGES with MODEL_DIR: class, confidence and top 3 per image, and whether a technologist
    should review it, with the reasons (low confidence; unlike the training images), by the service's rule.

    A file that is missing or not an image gets an error entry of its own; the others are
    still classified. The exit status is 1 when any image failed.
    """
    from bloodcell_core.ml.dataset import read_image_file
    from bloodcell_core.ml.inference import CellPrediction, Classifier

    classifier = Classifier.from_dir(model_dir, runtime=runtime)
    readable, failed = [], []
    for path in images:
        try:
            readable.append((str(path), read_image_file(path)))
        except OSError as exc:  # this image's error entry; the others are still classified
            failed.append(CellPrediction(name=str(path), error=f"cannot read file: {exc.strerror or exc}"))
    by_name = {p.name: p for p in classifier.classify(readable) + failed}
    results = [by_name[str(path)] for path in images]
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                click.echo(f"{r.name}\tERROR\t{r.error}")
            else:
                top3 = ", ".join(f"{label} {p:.3f}" for label, p in r.top3)
                review = f"\tREVIEW: {', '.join(r.review_reasons)}" if r.needs_review else ""
                click.echo(f"{r.name}\t{r.label}\t{r.confidence:.3f}\t(top 3: {top3}){review}")
    if any(r.error for r in results):
        sys.exit(1)


@click.group("locate", cls=BloodcellGroup, default_command="fields")
def locate_group() -> None:
    """Find the white cells in whole smear fields (a cell-locator plugin; `bloodcell plugins` lists them).

    \b
      bloodcell locate FIELD... [--json] [--crops DIR] [--overlays DIR]
      bloodcell locate evaluate DIR [--split test] [--json]
    """


def _locator_option(command: F) -> F:
    return click.option("--locator", "locator_name", default="stain_nucleus", show_default=True, help="Cell-locator plugin.")(command)


@locate_group.command("fields")
@click.argument("fields", nargs=-1, required=True, type=click.Path(path_type=Path))
@_locator_option
@click.option("--max-cells", type=click.IntRange(min=1), default=50, show_default=True, help="A field with more white cells fails.")
@click.option("--crops", "crops_dir", type=FOLDER, help="Write each cell's crop here as PNG.")
@overlays_option
@json_option("Print one JSON list with an entry per field.")
def locate_fields_command(
    fields: tuple[Path, ...], locator_name: str, max_cells: int, crops_dir: Path | None, overlays_dir: Path | None, as_json: bool
) -> None:
    """Print the white cells' boxes (x, y, width, height in pixels) of each FIELD (files or folders of images).

    The crops are what the service classifies for a field submitted with `bloodcell submit --fields`.
    A field that cannot be read, or holds more than --max-cells cells, gets an error entry of its
    own; the exit status is 1 when any field failed.
    """
    from bloodcell_core.clients.files import collect_images
    from bloodcell_core.plugin_manager import get_cell_locator

    locator = get_cell_locator(locator_name)
    results = [_locate_field(path, locator, max_cells, crops_dir, overlays_dir) for path in collect_images(list(fields))]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for entry in results:
            _print_located_field(entry)
    if not results:
        fail("no image files found in the given paths")
    if any("error" in entry for entry in results):
        sys.exit(1)


def _locate_field(path: Path, locator: Any, max_cells: int, crops_dir: Path | None, overlays_dir: Path | None) -> dict[str, Any]:
    """One field's entry: its size and cells' boxes, or its error; its crops and overlay written when asked."""
    from bloodcell_core.ml.dataset import read_image_file
    from bloodcell_core.ml.fields import FieldTooCrowded, cut_field, draw_overlay
    from bloodcell_core.ml.preprocessing import ImageDecodeError

    entry: dict[str, Any] = {"field": str(path)}
    try:
        data = read_image_file(path)
        cut = cut_field(data, locator.locate, max_cells)
    except OSError as exc:  # this field's error entry; the others are still located
        return entry | {"error": f"cannot read file: {exc.strerror or exc}"}
    except (ImageDecodeError, FieldTooCrowded) as exc:
        return entry | {"error": str(exc)}
    if crops_dir is not None and cut.cells:
        crops_dir.mkdir(parents=True, exist_ok=True)
        for k, cell in enumerate(cut.cells):
            (crops_dir / f"{path.stem}_cell{k}.png").write_bytes(cell.png)
    if overlays_dir is not None:
        overlays_dir.mkdir(parents=True, exist_ok=True)
        boxes = [(cell.box, f"{k}", False) for k, cell in enumerate(cut.cells)]
        (overlays_dir / f"{path.stem}_overlay.png").write_bytes(draw_overlay(data, boxes))
    return entry | {"width": cut.width, "height": cut.height, "cells": [cell.box.to_json() for cell in cut.cells]}


def _print_located_field(entry: dict[str, Any]) -> None:
    if "error" in entry:
        click.echo(f"{entry['field']}\tERROR\t{entry['error']}")
        return
    click.echo(f"{entry['field']}\t{len(entry['cells'])} white cell(s)")
    for k, box in enumerate(entry["cells"]):
        edge = "\tcut by the edge" if box["touches_edge"] else ""
        click.echo(f"  {k}\tx={box['x']} y={box['y']} width={box['width']} height={box['height']}{edge}")


@locate_group.command("evaluate")
@click.argument("voc_dir", metavar="DIR", type=EXISTING_DIR)
@click.option("--split", default="test", show_default=True, help="The split file DIR/splits/SPLIT.txt to score.")
@_locator_option
@json_option("Print the scores and erring fields as JSON.")
def locate_evaluate_command(voc_dir: Path, split: str, locator_name: str, as_json: bool) -> None:
    """Score a locator on a Pascal VOC folder (images/, annotations/ with WBC boxes, splits/), such
    as ../shared/data/bccd: a found box is right when it overlaps a true one by IoU >= 0.5.

    JSON keys: precision, recall, f1, n_true, n_found, n_matched, n_fields, erring_fields (each with
    its true and found boxes as [xmin, ymin, xmax, ymax]).
    """
    from bloodcell_core.ml.smear_fields import read_fields, score_locator
    from bloodcell_core.plugin_manager import get_cell_locator

    locator = get_cell_locator(locator_name)
    n_fields = len(read_fields(voc_dir, split))
    with click.progressbar(length=n_fields, label=f"locating white cells in {split}", file=sys.stderr) as bar:
        scores = score_locator(voc_dir, split, locator.locate, progress=bar.update)
    scores = {"locator": locator_name} | scores
    if as_json:
        click.echo(json.dumps(scores, indent=2))
        return
    click.echo(
        f"{locator_name} on {voc_dir} ({split}, {scores['n_fields']} fields, IoU >= {scores['iou_threshold']}): "
        f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, F1 {scores['f1']:.3f} "
        f"({scores['n_matched']} of {scores['n_true']} true boxes found; {scores['n_found']} boxes found)"
    )
    for field in scores["erring_fields"]:
        click.echo(
            f"  {field['field']}: {field['missed']} missed, {field['extra']} extra (true {field['true']}, found {field['found']})"
        )


COMMANDS: list[click.Command] = [
    plugins,
    dataset,
    train_command,
    adapt_command,
    results_command,
    generalisation_command,
    trials_command,
    calibrate_command,
    evaluate_command,
    predict_command,
    locate_group,
]
