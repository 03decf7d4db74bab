"""The `bloodcell` command."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

import click  # noqa: E402

from bloodcell_core.plugin_manager import PluginError  # noqa: E402
from bloodcell_core.service.results import ModelVersionInfo, Report  # noqa: E402
from bloodcell_core.service.states import FieldStatus, Scope, TrainingRunStatus  # noqa: E402

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


# The generalisation table and the trials read the same three datasets.
DATA_ROOT_OPTION = click.option(
    "--data-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("../shared/data"),
    show_default=True,
    help="The folder holding kaggle5/, pbc8/ and bccd/.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bloodcell")
def cli() -> None:
    """bloodcell: classify white-blood-cell images.

    \b
    Typical flow:
      bloodcell dataset audit DATA_DIR        check a folder-per-class dataset
      bloodcell train --model compact_cnn --data DATA_DIR --out models/mine
      bloodcell evaluate models/mine OTHER_DATA_DIR
      bloodcell predict models/mine cell1.jpg cell2.png
    """


def view_options(what: str, views_default: str, gate_default: str) -> Callable[[F], F]:
    """--views and --view-gate, shared by `train` and `calibrate` (only the defaults they name differ)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--view-gate",
            "view_gate",
            callback=lambda ctx, param, value: _view_gate(value),
            metavar="CONFIDENCE|off",
            help="Ask the other views only for cells whose first-view confidence is under this, e.g. 0.999; "
            f"'off': every view for every cell (default: {gate_default}).",
        )(command)
        return click.option(
            "--views",
            help=f"{what}, comma-separated (default: {views_default}), "
            "e.g. identity,flip_horizontal,flip_vertical,rotate_180; each is one more model pass per image.",
        )(command)

    return decorate


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins, what each provides and where it came from."""
    from bloodcell_core.plugin_manager import describe_plugins

    try:
        infos = describe_plugins()
    except PluginError as exc:
        _fail(str(exc))
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


@cli.group()
def dataset() -> None:
    """Inspect folder-per-class datasets (DATA_DIR/<class>/<image>)."""


@dataset.command("audit")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def dataset_audit(data_dir: Path, as_json: bool) -> None:
    """Decode every file for real and report counts, unreadable files, duplicates
    (also across classes) and image-size / background-colour shortcuts."""
    from bloodcell_core.ml.dataset import audit_dataset, format_audit, index_dataset

    report = audit_dataset(index_dataset(data_dir, progress=not as_json and sys.stderr.isatty()))
    click.echo(json.dumps(report, indent=2) if as_json else format_audit(report))


@dataset.command("shortcuts")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A model directory trained on DATA_DIR: its test accuracy is shown beside the shortcuts.",
)
@click.option("--seed", type=int, help="The split's seed (default: the model's, else 0).")
@click.option(
    "--steps",
    help="Preprocessing steps of the served image, comma-separated, e.g. center_crop,reinhard "
    "(default: the model's, else center_crop).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def dataset_shortcuts(data_dir: Path, model_dir: Path | None, seed: int | None, steps: str | None, as_json: bool) -> None:
    """How far classifiers that never see a cell's shape get: image size, background (corner) colour,
    whole-image colour, and the image size after the serving preprocessing, on the models' split."""
    from bloodcell_core.ml.artifacts import read_metadata
    from bloodcell_core.ml.shortcuts import format_shortcuts, shortcut_audit

    metadata = read_metadata(model_dir) if model_dir else None
    if seed is None:
        seed = metadata.split["seed"] if metadata else 0
    report = shortcut_audit(
        data_dir, seed, metadata, tuple(steps.split(",")) if steps else None, progress=not as_json and sys.stderr.isatty()
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_shortcuts(report))


@dataset.command("export-reviewed")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def dataset_export_reviewed(out_dir: Path) -> None:
    """Write the cells technologists relabelled as OUT_DIR/<label>/<sha256>.<ext> (training data)."""
    from bloodcell_core.service.review import export_reviewed_labels

    counts = export_reviewed_labels(_settings(), out_dir)
    click.echo(json.dumps(counts) if counts else "no reviewed cells")


@cli.command("train")
@click.option("--model", "model_name", required=True, help="Model plugin name (see `bloodcell plugins`).")
@click.option(
    "--data",
    "data_dirs",
    required=True,
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder-per-class training data; repeat to train on several folders as one dataset "
    "(identical images in two of them count once).",
)
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="FOLDER=CLASS",
    help="Read a class folder as another class, e.g. seg_neutrophil=neutrophil; repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model directory to write (model.keras, metadata.json, split.json, report/).",
)
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
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Start from this model directory's weights (same plugin, data, --seed, --max-per-class and --steps) "
    "with a fresh learning-rate schedule: more epochs for a model that was still improving.",
)
@view_options("Test-time views to calibrate and serve with", "the plugin's", "the plugin's")
def train_command(
    model_name,
    data_dirs,
    renames,
    out_dir,
    epochs,
    seed,
    batch_size,
    learning_rate,
    max_per_class,
    steps,
    acquisition_augmentation,
    init_from,
    views,
    view_gate,
) -> None:
    """Train a model plugin, evaluate it on the held-out test split and write a model directory.

    The split is 70/15/15, stratified, deterministic from --seed, with identical images kept
    on one side and images filed under two classes excluded. Training augments images
    (rotation, shift, shear, zoom, flips), weights classes when they are imbalanced and stops
    early on the validation loss. Temperature scaling and the review threshold are then fitted
    on the validation split (see `bloodcell calibrate`).
    """
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.training import train

    if (out_dir / "metadata.json").exists():
        _fail(f"{out_dir} already holds a model; choose another --out or remove it")
    try:
        train(
            model_name,
            list(data_dirs),
            out_dir,
            epochs=epochs,
            seed=seed,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_per_class=max_per_class,
            preprocessing_steps=tuple(steps.split(",")) if steps else None,
            renames=parse_renames(renames),
            acquisition_augmentation=acquisition_augmentation,
            init_from=init_from,
            views=tuple(views.split(",")) if views else None,
            view_gate=view_gate,
            progress=True,
            log=lambda message: click.echo(message, err=True),
        )
    except (ArtifactError, PluginError, ValueError) as exc:
        _fail(str(exc))


@cli.command("adapt")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    "lab_dirs",
    required=True,
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The laboratory's reviewed cells, folder per class (e.g. from `bloodcell dataset export-reviewed`); repeatable.",
)
@click.option("--rename", "renames", multiple=True, metavar="FOLDER=CLASS", help="Read a class folder as another class.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model directory to write.")
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
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.training import adapt

    if (out_dir / "metadata.json").exists():
        _fail(f"{out_dir} already holds a model; choose another --out or remove it")
    try:
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
            log=lambda message: click.echo(message, err=True),
        )
    except (ArtifactError, PluginError, ValueError) as exc:
        _fail(str(exc))


@cli.command("results")
@click.option(
    "--data",
    "data_dirs",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A dataset; repeat for several.",
)
@click.option("--models", "model_names", help="Comma-separated model plugins (default: every installed one).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Model directories go to OUT/<dataset>/<plugin>; the table to OUT/results.md.",
)
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
        _fail(f"unknown model plugin(s): {', '.join(unknown)}; installed: {', '.join(sorted(model_specs()))}")
    try:
        rows = build_results(
            list(data_dirs), plugins, out_dir, seed, epochs, train_missing=not no_train, log=lambda m: click.echo(m, err=True)
        )
    except (PluginError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:  # the throughput figure reads test images from --data
        _fail(f"{exc}: pass the dataset folders the models in {out_dir} were trained on")
    click.echo(markdown_table(rows))


@cli.command("generalisation")
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@DATA_ROOT_OPTION
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Writes OUT/generalisation.json and OUT/generalisation.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of the markdown table.")
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
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.generalisation import build_table, markdown_table

    progress = sys.stderr.isatty() and not as_json
    try:
        rows = build_table(list(model_dirs), data_root, out_dir, log=lambda m: click.echo(m, err=True) if progress else None)
    except (ArtifactError, PluginError, ValueError, OSError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(rows, indent=2) if as_json else markdown_table(rows))


@cli.command("trials")
@click.argument("names", nargs=-1)
@DATA_ROOT_OPTION
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/trials"),
    show_default=True,
    help="One model directory per trial, and OUT/trials.json and OUT/trials.md.",
)
def trials_command(names: tuple[str, ...], data_root: Path, out_dir: Path) -> None:
    """Train and score the cross-laboratory trials: NAMES, or all of them (see docs/trials.md).

    Each trial varies one factor of today's recipe (normalisation, scale, colour, width) at one budget:
    compact_cnn family, 10 epochs, at most 500 images per class of kaggle5 + pbc8, seed 0, stain and
    acquisition augmentation. Each is scored by the generalisation table, per cell and per sample. Resumable:
    a trial whose model directory exists is scored without training, and a scored one is only read (delete
    OUT/NAME/report/trial.json to score it again). About 10-20 minutes a trial on two cores.
    """
    from bloodcell_core.ml.trials import run_trials, table

    try:
        summaries = run_trials(list(names) or None, data_root, out_dir, log=lambda m: click.echo(m, err=True))
    except (PluginError, ValueError, OSError) as exc:
        _fail(str(exc))
    click.echo(table(summaries))


@cli.command("calibrate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
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
    type=click.Path(exists=True, file_okay=False, path_type=Path),
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
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.training import recalibrate

    try:
        record = recalibrate(
            model_dir, target_accuracy, data_dir, tuple(views.split(",")) if views else None, view_gate, progress=sys.stderr.isatty()
        )
    except (ArtifactError, PluginError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(record, indent=2))


def _view_gate(value: str | None) -> float | None | Literal["default"]:
    """--view-gate: "default" when not given (the plugin's or the model's), None for "off", else a confidence."""
    if value is None:
        return "default"
    if value.strip().lower() == "off":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a confidence such as 0.999 nor 'off'") from None


def _load_classifier(model_dir: Path, runtime: str = "keras"):
    from bloodcell_core.ml.artifacts import ArtifactError
    from bloodcell_core.ml.inference import Classifier

    try:
        return Classifier.from_dir(model_dir, runtime=runtime)
    except (ArtifactError, PluginError, ValueError) as exc:
        _fail(str(exc))


@cli.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--include-seen", is_flag=True, help="Also score images from the model's own train/validation split.")
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="FOLDER=CLASS",
    help="Score a class folder as one of the model's classes, e.g. seg_neutrophil=neutrophil; repeatable.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (keys accuracy, macro_f1, ece, n, per_class, coverage, accepted_accuracy, unfamiliar_share, ...).",
)
def evaluate_command(model_dir: Path, data_dir: Path, include_seen: bool, renames: tuple[str, ...], as_json: bool) -> None:
    """Score MODEL_DIR on a folder-per-class DATA_DIR (only classes the model knows).

    Reports accuracy, macro-F1, per-class precision / recall / F1, the confusion matrix, the
    expected calibration error, and the share of cells accepted without review (coverage) with
    their accuracy, decided exactly as the service decides review; images the model trained on
    are left out unless --include-seen.
    """
    from bloodcell_core.ml.dataset import parse_renames
    from bloodcell_core.ml.evaluation import evaluate
    from bloodcell_core.ml.metrics import format_classification_report

    classifier = _load_classifier(model_dir)
    try:
        metrics = evaluate(
            classifier,
            data_dir,
            include_seen=include_seen,
            progress=not as_json and sys.stderr.isatty(),
            renames=parse_renames(renames),
        )
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    excluded = metrics["excluded"]
    click.echo(f"{model_dir} on {data_dir}\n")
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


@cli.command("predict")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list with an entry per image.")
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
    from bloodcell_core.ml.inference import CellPrediction

    classifier = _load_classifier(model_dir, runtime)
    readable, failed = [], []
    for path in images:
        try:
            readable.append((str(path), read_image_file(path)))
        except OSError as exc:
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


class _FieldsByDefault(click.Group):
    """`bloodcell locate FIELD...` runs the `fields` subcommand: a first argument that names no
    subcommand is a field."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["fields", *args]
        return super().parse_args(ctx, args)


@cli.group("locate", cls=_FieldsByDefault)
def locate_group() -> None:
    """Find the white cells in whole smear fields (a cell-locator plugin; `bloodcell plugins` lists them).

    \b
      bloodcell locate FIELD... [--json] [--crops DIR] [--overlays DIR]
      bloodcell locate evaluate DIR [--split test] [--json]
    """


def _locator_option(command: F) -> F:
    return click.option("--locator", "locator_name", default="stain_nucleus", show_default=True, help="Cell-locator plugin.")(command)


def _get_locator(name: str):
    from bloodcell_core.plugin_manager import get_cell_locator

    try:
        return get_cell_locator(name)
    except PluginError as exc:
        _fail(str(exc))


@locate_group.command("fields")
@click.argument("fields", nargs=-1, required=True, type=click.Path(path_type=Path))
@_locator_option
@click.option("--max-cells", type=click.IntRange(min=1), default=50, show_default=True, help="A field with more white cells fails.")
@click.option("--crops", "crops_dir", type=click.Path(file_okay=False, path_type=Path), help="Write each cell's crop here as PNG.")
@click.option(
    "--overlays", "overlays_dir", type=click.Path(file_okay=False, path_type=Path), help="Write each field with its boxes drawn here."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list with an entry per field.")
def locate_fields_command(
    fields: tuple[Path, ...], locator_name: str, max_cells: int, crops_dir: Path | None, overlays_dir: Path | None, as_json: bool
) -> None:
    """Print the white cells' boxes (x, y, width, height in pixels) of each FIELD (files or folders of images).

    The crops are what the service classifies for a field submitted with `bloodcell submit --fields`.
    A field that cannot be read, or holds more than --max-cells cells, gets an error entry of its
    own; the exit status is 1 when any field failed.
    """
    from bloodcell_core.clients.files import collect_images
    from bloodcell_core.ml.dataset import read_image_file
    from bloodcell_core.ml.fields import FieldTooCrowded, cut_field, draw_overlay
    from bloodcell_core.ml.preprocessing import ImageDecodeError

    locator = _get_locator(locator_name)
    results: list[dict[str, Any]] = []
    for path in collect_images(list(fields)):
        entry: dict[str, Any] = {"field": str(path)}
        try:
            data = read_image_file(path)
            cut = cut_field(data, locator.locate, max_cells)
        except OSError as exc:
            results.append(entry | {"error": f"cannot read file: {exc.strerror or exc}"})
            continue
        except (ImageDecodeError, FieldTooCrowded) as exc:
            results.append(entry | {"error": str(exc)})
            continue
        entry |= {"width": cut.width, "height": cut.height, "cells": [cell.box.to_json() for cell in cut.cells]}
        results.append(entry)
        for k, cell in enumerate(cut.cells):
            if crops_dir is not None:
                crops_dir.mkdir(parents=True, exist_ok=True)
                (crops_dir / f"{path.stem}_cell{k}.png").write_bytes(cell.png)
        if overlays_dir is not None:
            overlays_dir.mkdir(parents=True, exist_ok=True)
            boxes = [(cell.box, f"{k}", False) for k, cell in enumerate(cut.cells)]
            (overlays_dir / f"{path.stem}_overlay.png").write_bytes(draw_overlay(data, boxes))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for entry in results:
            if "error" in entry:
                click.echo(f"{entry['field']}\tERROR\t{entry['error']}")
                continue
            click.echo(f"{entry['field']}\t{len(entry['cells'])} white cell(s)")
            for k, box in enumerate(entry["cells"]):
                edge = "\tcut by the edge" if box["touches_edge"] else ""
                click.echo(f"  {k}\tx={box['x']} y={box['y']} width={box['width']} height={box['height']}{edge}")
    if not results:
        _fail("no image files found in the given paths")
    if any("error" in entry for entry in results):
        sys.exit(1)


@locate_group.command("evaluate")
@click.argument("voc_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="The split file DIR/splits/SPLIT.txt to score.")
@_locator_option
@click.option("--json", "as_json", is_flag=True, help="Print the scores and erring fields as JSON.")
def locate_evaluate_command(voc_dir: Path, split: str, locator_name: str, as_json: bool) -> None:
    """Score a locator on a Pascal VOC folder (images/, annotations/ with WBC boxes, splits/), such
    as ../shared/data/bccd: a found box is right when it overlaps a true one by IoU >= 0.5.

    JSON keys: precision, recall, f1, n_true, n_found, n_matched, n_fields, erring_fields (each with
    its true and found boxes as [xmin, ymin, xmax, ymax]).
    """
    from bloodcell_core.ml.smear_fields import read_fields, score_locator

    locator = _get_locator(locator_name)
    try:
        n_fields = len(read_fields(voc_dir, split))
    except FileNotFoundError as exc:
        _fail(str(exc))
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


# --- the queued service ------------------------------------------------------------------------


def _settings():
    from bloodcell_core.config import Settings

    settings = Settings.from_env()
    try:
        settings.validate()
    except ValueError as exc:
        _fail(str(exc))
    return settings


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


def _client(http: bool = False):
    """The in-process client, or with ``http`` and BLOODCELL_API_URL set, the HTTP API client."""
    if http and os.environ.get("BLOODCELL_API_URL"):
        from bloodcell_core.clients.http import HttpClient

        token = os.environ.get("BLOODCELL_API_TOKEN")
        if not token:
            _fail("BLOODCELL_API_URL is set: BLOODCELL_API_TOKEN must hold a token (`bloodcell tokens create`)")
        return HttpClient(os.environ["BLOODCELL_API_URL"], token)
    from bloodcell_core.clients.local import Client
    from bloodcell_core.service.db import DatabaseNotMigrated

    try:
        return Client(_settings())
    except DatabaseNotMigrated as exc:
        _fail(str(exc))


def _remote_or_local(call: Callable[[Any], T]) -> T:
    """``call(client)`` with the HTTP API client when BLOODCELL_API_URL is set, else in process;
    an error that is the user's to fix ends the command with its message."""
    try:
        return call(_client(http=True))
    except _user_errors() as exc:
        _fail(str(exc))


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the caller's to fix: printed as one line, no traceback."""
    from bloodcell_core.clients.http import HttpApiError
    from bloodcell_core.service.errors import ServiceError

    return ServiceError, HttpApiError, PluginError


@cli.group()
def db() -> None:
    """Database schema (Alembic migrations in migrations/)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate BLOODCELL_DATABASE_URL to the latest schema (safe to run again)."""
    from bloodcell_core.config import masked_url
    from bloodcell_core.service.db import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo(f"database migrated: {masked_url(settings.database_url)}")


@cli.command()
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes to start.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--no-api", is_flag=True, help="Do not start the HTTP API.")
def up(workers: int, no_flower: bool, no_api: bool) -> None:
    """Start the local stack in the background on embedded defaults: redis-server, SQLite
    (migrated), the shipped model as production, Celery worker(s), Flower and the HTTP API."""
    from bloodcell_core.cli.stack import StackError
    from bloodcell_core.cli.stack import up as start
    from bloodcell_core.ml.artifacts import ArtifactError

    try:
        info = start(_settings(), workers=workers, flower=not no_flower, api=not no_api)
    except (StackError, ArtifactError) as exc:
        _fail(str(exc))
    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key:>{width}}: {value}")


@cli.command()
def down() -> None:
    """Stop the local stack started by `bloodcell up`."""
    from bloodcell_core.cli.stack import down as stop

    stopped = stop(_settings())
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@cli.command()
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes (each loads the model once)."
)
@click.option("--name", default="worker", show_default=True, help="Worker name (unique per machine).")
def worker(concurrency: int, name: str) -> None:
    """Run a Celery worker in the foreground (for more machines: same BLOODCELL_* settings).

    BLOODCELL_WORKER_DEVICE=gpu makes it take the classify.gpu queue too.
    """
    from bloodcell_core.cli.stack import worker_command

    command = worker_command(_settings(), concurrency=concurrency, name=name)
    os.execv(command[0], command)


@cli.command()
def beat() -> None:
    """Run Celery beat in the foreground: it sends the periodic sweep (see `bloodcell sweep --help`) to
    the webhooks queue every BLOODCELL_SWEEP_INTERVAL_S seconds. Run one per deployment (`up` starts one);
    its schedule file is BLOODCELL_HOME/run/beat-schedule."""
    from bloodcell_core.cli.stack import beat_command

    command = beat_command(_settings())
    os.execv(command[0], command)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def sweep(as_json: bool) -> None:
    """Run the periodic sweep once, here and now (Celery beat runs it on a worker every
    BLOODCELL_SWEEP_INTERVAL_S seconds):

    \b
    - webhook deliveries still pending BLOODCELL_SWEEP_WEBHOOK_AGE_S seconds after their attempt was due
      (their message was lost, e.g. Redis was down) are handed to the webhooks queue again; one waiting on
      its retry or being sent is left alone;
    - files of the file image store (BLOODCELL_HOME/images on this machine) that no database row references
      and that are older than BLOODCELL_SWEEP_ORPHAN_AGE_S seconds (left by failed submissions) are removed.

    Prints what it did: webhooks_requeued, webhooks_not_sent (the broker refused them), orphans_removed,
    orphan_bytes.
    """
    counts = _client().sweep()
    if as_json:
        click.echo(json.dumps(counts))
    else:
        for key, value in counts.items():
            click.echo(f"{key}: {value}")


@cli.command()
@click.option("--days", type=float, help="Purge samples submitted more than this many days ago [BLOODCELL_RETENTION_DAYS].")
@click.option("--dry-run", is_flag=True, help="Only count the samples and cells that would be purged.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def retention(days: float | None, dry_run: bool, as_json: bool) -> None:
    """Purge the classified samples older than the laboratory keeps them: their cells, reports, reviews and
    webhook deliveries, and the images (rows and files) and predictions no kept sample uses. The audit log
    stays whole, and each purged sample gets a sample.purged event with its final report. Run it from cron
    (or by hand) on one machine that reaches the database and the image store.

    Prints: cutoff, dry_run, samples, cells, images, image_bytes, predictions.
    """
    from bloodcell_core.service.retention import purge_older_than

    age = days if days is not None else _settings().retention_days
    if not age:
        _fail("no retention age: set BLOODCELL_RETENTION_DAYS or give --days")
    result = _users_call(lambda settings: purge_older_than(settings, age, _actor(), dry_run=dry_run)).as_dict()
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")


@cli.command()
@click.option("--sample-id", required=True, help="The LIMS accession id of the sample.")
@click.option("--wait", is_flag=True, help="Wait for the report.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait with --wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--fields",
    "as_fields",
    is_flag=True,
    help="PATHS are whole smear fields: the worker finds their white cells and classifies each one.",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def submit(sample_id: str, wait: bool, timeout: float, as_json: bool, as_fields: bool, paths: tuple[Path, ...]) -> None:
    """Submit cell images (files or folders of images) as one sample to the classification queue;
    with --fields, whole smear fields instead (`bloodcell submit --sample-id S1 --fields FIELD_OR_DIR...`).

    Submitting the same sample id and images again is harmless: nothing is duplicated; new images
    or fields under a known sample id are added to it. With BLOODCELL_API_URL and
    BLOODCELL_API_TOKEN set, this goes through the HTTP API.
    """
    from tqdm import tqdm

    from bloodcell_core.clients.files import collect_images

    files = collect_images(list(paths))
    if not files:
        _fail("no image files found in the given paths")
    client = _client(http=True)
    images = [(str(f), f.read_bytes()) for f in tqdm(files, desc="reading", unit="img", disable=as_json or not sys.stderr.isatty())]
    try:
        if as_fields:
            submission = client.submit(sample_id, [], actor=_actor(), fields=images)
        else:
            submission = client.submit(sample_id, images, actor=_actor())
    except _user_errors() as exc:
        _fail(str(exc))
    if not wait:
        message = {
            "sample_id": sample_id,
            "status": submission.status,
            "new_cells": submission.new_cells,
            "new_fields": submission.new_fields,
        }
        what = f"{submission.new_fields} new field(s)" if as_fields else f"{submission.new_cells} new cell image(s)"
        click.echo(json.dumps(message) if as_json else f"sample {sample_id}: {what}, status {submission.status}")
        return
    try:
        report = client.wait(sample_id, timeout=timeout)
    except (TimeoutError,) + _user_errors() as exc:
        _fail(str(exc))
    _print_report(report, as_json)


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    click.echo(f"sample {report.sample_id}: {report.status}, report {report.report_status} (model {report.model_version})")
    if report.error:
        click.echo(f"  error: {report.error}")
    apart = report.non_leukocyte_classes or []  # nucleated red cells and platelets: not among the 100 leukocytes
    for label, count in report.counts.items():
        if label not in apart:
            click.echo(f"  {label:<16}{count:>6}{report.percent[label]:>8.1f} %")
    for label in apart:
        click.echo(f"  {label:<16}{report.counts[label]:>6}{report.percent[label]:>8.1f} per 100 leukocytes (not in the differential)")
    if report.signed_off_by:
        comment = f": {report.sign_off_comment}" if report.sign_off_comment else ""
        click.echo(f"  signed off by {report.signed_off_by} ({report.signed_off_role}) at {report.signed_off_at}{comment}")
    elif report.awaiting_sign_off_again:
        click.echo("  changed after its sign-off: waits for a new sign-off (the earlier one is in the history)")
    if report.counts:
        flag = "BLAST FLAG" if report.blast_flag else "no blast flag"
        click.echo(f"  {flag}: {report.blast_count} blasts, {report.blast_percent or 0.0:.1f} %")
        click.echo(
            f"  {len(report.needs_review)} cell(s) for review (below confidence {report.review_threshold}"
            f" or unlike the training images: {report.n_unfamiliar or 0})"
        )
        for warning in report.warnings:
            click.echo(f"  WARNING: {warning}")
    for item in report.failed:
        click.echo(f"  FAILED {item.name}: {item.error}")
    for field in report.fields:
        found = f"{field.n_cells} white cell(s)" if field.status == FieldStatus.LOCATED else field.status
        click.echo(f"  field {field.name}: {found}" + (f" ({field.error})" if field.error else ""))


@cli.command()
@click.argument("sample_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report(sample_id: str, as_json: bool) -> None:
    """Show a sample's status and report (through the HTTP API when BLOODCELL_API_URL is set)."""
    _print_report(_remote_or_local(lambda client: client.report(sample_id)), as_json)


@cli.command("fields")
@click.argument("sample_id")
@click.option(
    "--overlays", "overlays_dir", type=click.Path(file_okay=False, path_type=Path), help="Write each field with its boxes drawn here."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fields_command(sample_id: str, overlays_dir: Path | None, as_json: bool) -> None:
    """The whole fields of a sample: each field's cells with their boxes and labels (through the HTTP
    API when BLOODCELL_API_URL is set)."""

    def read(client: Any) -> list[dict[str, Any]]:
        found = client.fields(sample_id)
        if overlays_dir is not None:
            overlays_dir.mkdir(parents=True, exist_ok=True)
            for field in found:
                if field["status"] == FieldStatus.LOCATED:
                    png = client.field_overlay(sample_id, field["image_sha256"])
                    (overlays_dir / f"{field['image_sha256'][:16]}_overlay.png").write_bytes(png)
        return found

    found = _remote_or_local(read)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for field in found:
        click.echo(f"{field['name']}\t{field['status']}\t{field['image_sha256']}" + (f"\t{field['error']}" if field["error"] else ""))
        for cell in field["cells"]:
            box = cell["box"]
            label = (
                f"{cell['label']} {cell['confidence']:.3f}" if cell["confidence"] is not None else (cell["label"] or cell["status"])
            )
            click.echo(f"  x={box['x']} y={box['y']} width={box['width']} height={box['height']}\t{label}")


@cli.command()
@click.argument("sample_id")
@click.option("--needs-review", is_flag=True, help="Only cells waiting for a technologist.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cells(sample_id: str, needs_review: bool, as_json: bool) -> None:
    """Per-cell results of a sample: model label and confidence, reviewed label, the label that counts."""
    rows = _remote_or_local(lambda client: client.cells(sample_id, needs_review))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        confidence = "" if row["confidence"] is None else f"{row['confidence']:.3f}"
        mark = (
            f" REVIEW: {', '.join(row['review_reasons'])}"
            if row["needs_review"]
            else (f" (reviewed: {row['reviewed_label']})" if row["reviewed_label"] else "")
        )
        click.echo(
            f"{row['image_sha256'][:12]}  {row['label'] or row['error'] or row['status']:<16}{confidence:>7}  {row['name']}{mark}"
        )


@cli.command("export")
@click.argument("sample_id")
@click.option(
    "--format",
    "format_name",
    default="fhir-r4",
    show_default=True,
    help="An exporter (`bloodcell plugins` lists them): fhir-r4, hl7v2, ...",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file, not stdout.")
def export_command(sample_id: str, format_name: str, output: Path | None) -> None:
    """Export a sample's report for the LIMS (FHIR R4 Bundle, HL7 v2 ORU^R01, or a plugin's format)."""
    document = _remote_or_local(lambda client: client.export(sample_id, format_name))
    if output is None:
        click.echo(document)
    else:
        output.write_text(document)


@cli.group()
def review() -> None:
    """Technologist review: list cells to check, relabel a cell, sign off a sample (audited)."""


@review.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def review_list(as_json: bool) -> None:
    """Samples waiting for review, with their low-confidence cells."""
    queue = _remote_or_local(lambda client: client.review_queue())
    if as_json:
        click.echo(json.dumps(queue, indent=2))
        return
    for item in queue:
        click.echo(f"sample {item['sample_id']}: {len(item['cells'])} cell(s) to review, {len(item['failed'])} failed")
        for cell in item["cells"]:
            click.echo(f"  {cell['image_sha256']}  {cell['model_label']:<16}{cell['confidence']:.3f}  {cell['name']}")


@review.command("label")
@click.argument("sample_id")
@click.argument("image_sha256")
@click.argument("label")
@click.option("--reviewer", required=True, help="Who makes the change (goes into the audit log).")
@click.option("--reason", required=True, help="Why (goes into the audit log).")
def review_label(sample_id: str, image_sha256: str, label: str, reviewer: str, reason: str) -> None:
    """Set LABEL for the cell IMAGE_SHA256 of SAMPLE_ID; the report is recomputed."""
    report = _remote_or_local(lambda client: client.relabel(sample_id, image_sha256, label, reviewer, reason, actor=_actor()))
    _print_report(report, as_json=False)


@review.command("sign-off")
@click.argument("sample_id")
@click.option("--reviewer", required=True, help="The console user who releases the report (their role is checked).")
@click.option("--comment", default="", help="Shown on the sample page and in the FHIR and HL7 exports.")
@click.option("--confirm-incomplete", is_flag=True, help="Sign off although images failed or few leukocytes were classified.")
def review_sign_off(sample_id: str, reviewer: str, comment: str, confirm_incomplete: bool) -> None:
    """Release the report: final, or amended for a report corrected after an earlier sign-off (docs/sign-off.md)."""
    report = _remote_or_local(lambda client: client.sign_off(sample_id, reviewer, comment, _actor(), confirm_incomplete))
    _print_report(report, as_json=False)


@cli.group()
def tokens() -> None:
    """HTTP API clients and their tokens (stored hashed; shown once)."""


@tokens.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([scope.value for scope in Scope]),
    help="Repeat for several scopes; `metrics` is for a Prometheus server (GET /metrics only).",
)
@click.option("--webhook-url", help="POSTed a signed event when the client's samples are classified or signed off.")
def tokens_create(name: str, scopes: tuple[str, ...], webhook_url: str | None) -> None:
    """Create API client NAME and print its token (and webhook secret) once."""
    from bloodcell_core.service.api_clients import create_client
    from bloodcell_core.service.db import require_migrated, session_scope

    settings = _settings()
    try:
        require_migrated(settings.database_url)
        with session_scope(settings.database_url) as session:
            created = create_client(session, name, list(scopes), webhook_url, _actor())
    except _user_errors() as exc:
        _fail(str(exc))
    click.echo(
        json.dumps(
            {
                "name": created.name,
                "token": created.token,
                "scopes": created.scopes,
                "webhook_url": created.webhook_url,
                "webhook_secret": created.webhook_secret,
            },
            indent=2,
        )
    )


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
def tokens_list(as_json: bool) -> None:
    """List API clients (token prefixes only)."""
    from bloodcell_core.service.api_clients import list_clients
    from bloodcell_core.service.db import session_scope

    with session_scope(_settings().database_url) as session:
        rows = list_clients(session)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(f"{row['name']:<24}{row['token_prefix']}...  {','.join(row['scopes']):<28}{state}")


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke API client NAME: its token stops working at once."""
    from bloodcell_core.service.api_clients import revoke_client
    from bloodcell_core.service.db import session_scope

    try:
        with session_scope(_settings().database_url) as session:
            revoke_client(session, name, _actor())
    except _user_errors() as exc:
        _fail(str(exc))
    click.echo(f"revoked {name}")


@cli.group()
def users() -> None:
    """Users of the web review console (passwords stored as argon2 hashes).

    \b
    Roles, each allowed everything of those before it:
      technologist   review cells, sign off samples without a blast flag
      supervisor     also sign off samples with a blast flag (BLOODCELL_SIGNOFF_BLAST_ROLE)
      admin          everything
    """


def _users_call(call: Callable[[Any], T]) -> T:
    """``call(settings)`` on a migrated database; an error that is the user's to fix ends the command with its message."""
    from bloodcell_core.service.db import DatabaseNotMigrated, require_migrated

    settings = _settings()
    try:
        require_migrated(settings.database_url)
        return call(settings)
    except _user_errors() + (DatabaseNotMigrated,) as exc:
        _fail(str(exc))


def _new_password(from_stdin: bool) -> str:
    """The first line of standard input with --password-stdin, else typed twice without echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password (at least 10 characters)", hide_input=True, confirmation_prompt=True)
    return password


_password_stdin_option = click.option(
    "--password-stdin",
    "password_stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)


@users.command("create")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["technologist", "supervisor", "admin"]),
    help="What the user may do in the review console.",
)
@_password_stdin_option
def users_create(name: str, role: str, password_stdin: bool) -> None:
    """Create user NAME (letters, digits and . _ -) with ROLE; the password is asked for twice unless --password-stdin."""
    from bloodcell_core.service.users import create_user

    password = _new_password(password_stdin)
    row = _users_call(lambda settings: create_user(settings, name, role, password, _actor()))
    click.echo(f"created user {row['name']} ({row['role']})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_list(as_json: bool) -> None:
    """List users with their role, state and last login."""
    from bloodcell_core.service.users import list_users

    rows = _users_call(list_users)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "disabled" if row["disabled"] else "active"
        click.echo(f"{row['name']:<24}{row['role']:<14}{state:<10}last login {row['last_login_at'] or 'never'}")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable user NAME: its browser sessions end at once and it can no longer log in."""
    from bloodcell_core.service.users import disable_user

    _users_call(lambda settings: disable_user(settings, name, _actor()))
    click.echo(f"disabled {name}")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Let disabled user NAME log in again, with the password it had."""
    from bloodcell_core.service.users import enable_user

    _users_call(lambda settings: enable_user(settings, name, _actor()))
    click.echo(f"enabled {name}")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(["technologist", "supervisor", "admin"]))
def users_set_role(name: str, role: str) -> None:
    """Give user NAME another ROLE; its browser sessions end."""
    from bloodcell_core.service.users import set_role

    _users_call(lambda settings: set_role(settings, name, role, _actor()))
    click.echo(f"{name} is now {role}")


@users.command("set-password")
@click.argument("name")
@_password_stdin_option
def users_set_password(name: str, password_stdin: bool) -> None:
    """Set a new password for user NAME (asked for twice unless --password-stdin); its browser sessions end."""
    from bloodcell_core.service.users import set_password

    password = _new_password(password_stdin)
    _users_call(lambda settings: set_password(settings, name, password, _actor()))
    click.echo(f"password set for {name}")


@cli.command("api")
@click.option("--host", help="Default: BLOODCELL_API_HOST (127.0.0.1).")
@click.option("--port", type=int, help="Default: BLOODCELL_API_PORT (8000).")
def api_command(host: str | None, port: int | None) -> None:
    """Serve the HTTP API in the foreground (OpenAPI docs at /docs)."""
    from bloodcell_core.cli.stack import api_command as server_command

    command = server_command(_settings(), host, port)
    os.execv(command[0], command)


@cli.command()
@click.option("--model", "model_name", required=True, help="Model plugin to train.")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder-per-class training data, readable by the workers.",
)
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-per-class", type=click.IntRange(min=3))
@click.option("--include-reviewed", is_flag=True, help="Add the cells technologists relabelled to the training data.")
@click.option("--wait", is_flag=True, help="Wait for the candidate version.")
def retrain(model_name: str, data_dir: Path, epochs, seed: int, max_per_class, include_reviewed: bool, wait: bool) -> None:
    """Queue a retraining run; the result is registered as a candidate model version."""
    parameters = (
        {"seed": seed}
        | ({"epochs": epochs} if epochs else {})
        | ({"max_per_class": max_per_class} if max_per_class else {})
        | ({"include_reviewed": True} if include_reviewed else {})
    )
    client = _client()
    run_id = client.retrain(model_name, str(data_dir.resolve()), parameters)
    click.echo(f"training run {run_id} queued")
    if wait:
        result = client.wait_training(run_id)
        click.echo(json.dumps(result.model_dump(mode="json")))
        if result.status != TrainingRunStatus.DONE:
            sys.exit(1)


@cli.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """Model versions: list (default), register, promote, evaluate, evaluation-set, shadow."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list)


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json: bool = False) -> None:
    """List registered model versions with their status and test metrics."""
    rows: list[ModelVersionInfo] = _remote_or_local(lambda client: client.models())
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    for row in rows:
        accuracy = "-" if row.test_accuracy is None else f"{row.test_accuracy:.4f}"
        click.echo(f"{row.version:<32}{row.status:<12}test accuracy {accuracy}  {row.created_at}")


@models.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even if the gate refuses (needs --reason; audited).")
@click.option("--reason", default="", help="Why the gate is overridden.")
def models_promote(version: str, force: bool, reason: str) -> None:
    """Make VERSION the production model if it beats production on the evaluation set
    (BLOODCELL_EVALUATION_SET) by BLOODCELL_PROMOTION_MARGIN in accuracy and macro-F1.
    Workers pick it up on their next sample."""
    try:
        click.echo(f"production model: {_client().promote(version, actor=_actor(), force=force, reason=reason)}")
    except _user_errors() as exc:
        _fail(str(exc))


@models.command("evaluate")
@click.argument("version")
@click.option("--set", "set_name", help="Evaluation set (default: BLOODCELL_EVALUATION_SET).")
def models_evaluate(version: str, set_name: str | None) -> None:
    """Score VERSION on a registered evaluation set through the training queue; kept for the gate."""
    client = _client()
    try:
        click.echo(json.dumps(client.evaluate(version, set_name or client.settings.evaluation_set)))
    except _user_errors() as exc:
        _fail(str(exc))


@models.command("register")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def models_register(model_dir: Path) -> None:
    """Register MODEL_DIR (e.g. trained with `bloodcell train`, or recalibrated) as a candidate version.

    The directory must stay where it is and be readable by every worker (BLOODCELL_MODELS_DIR is a good place).
    """
    from bloodcell_core.ml.artifacts import ArtifactError

    try:
        click.echo(f"candidate: {_client().register(str(model_dir.resolve()), actor=_actor())}")
    except (ArtifactError,) + _user_errors() as exc:
        _fail(str(exc))


@models.command("evaluation-set")
@click.argument("name")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def models_evaluation_set(name: str, data_dir: Path) -> None:
    """Register DATA_DIR (folder-per-class) as the fixed evaluation set NAME; its images are fingerprinted."""
    try:
        click.echo(json.dumps(_client().register_evaluation_set(name, str(data_dir), actor=_actor())))
    except _user_errors() as exc:
        _fail(str(exc))


@models.command("shadow")
@click.argument("version")
def models_shadow(version: str) -> None:
    """How candidate VERSION's shadow predictions (BLOODCELL_SHADOW=1) compare with production's on live cells."""
    try:
        click.echo(json.dumps(_client().shadow_report(version), indent=2))
    except _user_errors() as exc:
        _fail(str(exc))


@cli.command("verify")
@click.option("--model", help="A candidate version to score beside production on the same samples (default: production only).")
@click.option("--from", "day_from", metavar="DATE", help="Only samples signed off on or after DATE (YYYY-MM-DD).")
@click.option("--to", "day_to", metavar="DATE", help="Only samples signed off on or before DATE (YYYY-MM-DD).")
@click.option(
    "--samples",
    "samples_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Only these samples: a file of accession ids, one a line.",
)
@click.option(
    "--criteria",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The laboratory's acceptance criteria, JSON or YAML (docs/verification.md; default: the built-in ones).",
)
@click.option("--classify", is_flag=True, help="First classify the verified cells --model has not classified yet (loads it).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the dossier.")
def verify_command(
    model: str | None,
    day_from: str | None,
    day_to: str | None,
    samples_file: Path | None,
    criteria: Path | None,
    classify: bool,
    out_dir: Path,
) -> None:
    """The local verification dossier: the production model (and --model beside it) against the technologists'
    final labels on signed-off samples, per cell, per sample and per flag, held against the acceptance criteria.
    Writes dossier.json, dossier.html, dossier.pdf and the plots into --out (docs/verification.md)."""
    from bloodcell_core.service import verification
    from bloodcell_core.service.verification_report import summary_rows
    from bloodcell_core.service.versions import load_classifier

    settings = _settings()
    try:
        accession_ids = None
        if samples_file is not None:
            accession_ids = [line.strip() for line in samples_file.read_text().splitlines() if line.strip()]
        dossier = verification.make_dossier(
            settings,
            out_dir,
            _actor(),
            model=model,
            day_from=verification.parse_day(day_from, "--from") if day_from else None,
            day_to=verification.parse_day(day_to, "--to") if day_to else None,
            accession_ids=accession_ids,
            criteria=verification.read_criteria(criteria),
            classify=classify,
            classifier_for=functools.cache(lambda version: load_classifier(settings, version)),
            command=shlex.join(["bloodcell", "verify", *sys.argv[2:]]),
        )
    except _user_errors() as exc:
        _fail(str(exc))
    for scored in dossier["models"]:
        click.echo(f"{scored['role']} {scored['version']}")
        for name, value in summary_rows(scored):
            click.echo(f"  {name:38} {value}")
    click.echo(f"dossier: {out_dir / 'dossier.html'} (and dossier.pdf, dossier.json)")
