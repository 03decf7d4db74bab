"""The `bloodcell` command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

import click  # noqa: E402

from bloodcell_core.plugin_manager import PluginError  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def _fail(message: str) -> None:
    raise click.ClickException(message)


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
            [f"model {m}" for m in info.models] + [f"preprocessing step {s}" for s in info.preprocessing_steps]
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
    from bloodcell_core.dataset import audit, format_audit, index_dataset

    report = audit(index_dataset(data_dir, progress=not as_json and sys.stderr.isatty()))
    click.echo(json.dumps(report, indent=2) if as_json else format_audit(report))


@cli.command("train")
@click.option("--model", "model_name", required=True, help="Model plugin name (see `bloodcell plugins`).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder-per-class training data.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model directory to write (model.keras, metadata.json, split.json, report/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs (default: the plugin's); early stopping may end sooner.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, initial weights and augmentation.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the plugin's.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate (default: the plugin's).")
@click.option("--max-per-class", type=click.IntRange(min=3), help="Use only this many files per class (quick trials).")
def train_command(model_name, data_dir, out_dir, epochs, seed, batch_size, learning_rate, max_per_class) -> None:
    """Train a model plugin, evaluate it on the held-out test split and write a model directory.

    The split is 70/15/15, stratified, deterministic from --seed, with identical images kept
    on one side and images filed under two classes excluded. Training augments images
    (rotation, shift, shear, zoom, flips), weights classes when they are imbalanced and stops
    early on the validation loss.
    """
    from bloodcell_core.training import train

    if (out_dir / "metadata.json").exists():
        _fail(f"{out_dir} already holds a model; choose another --out or remove it")
    try:
        train(model_name, data_dir, out_dir, epochs=epochs, seed=seed, batch_size=batch_size,
              learning_rate=learning_rate, max_per_class=max_per_class, progress=True,
              log=lambda message: click.echo(message, err=True))
    except (PluginError, ValueError) as exc:
        _fail(str(exc))


def _load_classifier(model_dir: Path):
    from bloodcell_core.artifacts import ArtifactError
    from bloodcell_core.inference import Classifier

    try:
        return Classifier.from_dir(model_dir)
    except (ArtifactError, PluginError, ValueError) as exc:
        _fail(str(exc))


@cli.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--include-seen", is_flag=True, help="Also score images from the model's own train/validation split.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys accuracy, macro_f1, ece, n, per_class, ...).")
def evaluate_command(model_dir: Path, data_dir: Path, include_seen: bool, as_json: bool) -> None:
    """Score MODEL_DIR on a folder-per-class DATA_DIR (only classes the model knows).

    Reports accuracy, macro-F1, per-class precision / recall / F1, the confusion matrix and the
    expected calibration error; images the model trained on are left out unless --include-seen.
    """
    from bloodcell_core.evaluation import evaluate
    from bloodcell_core.metrics import format_classification_report

    classifier = _load_classifier(model_dir)
    try:
        metrics = evaluate(classifier, data_dir, include_seen=include_seen, progress=not as_json and sys.stderr.isatty())
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    excluded = metrics["excluded"]
    click.echo(f"{model_dir} on {data_dir}\n")
    click.echo(format_classification_report(metrics))
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
def predict_command(model_dir: Path, images: tuple[Path, ...], as_json: bool) -> None:
    """Classify IMAGES with MODEL_DIR: class, confidence and top 3 per image.

    A file that is missing or not an image gets an error entry of its own; the others are
    still classified. The exit status is 1 when any image failed.
    """
    from bloodcell_core.dataset import read_image_file
    from bloodcell_core.inference import Prediction

    classifier = _load_classifier(model_dir)
    readable, failed = [], []
    for path in images:
        try:
            readable.append((str(path), read_image_file(path)))
        except OSError as exc:
            failed.append(Prediction(name=str(path), error=f"cannot read file: {exc.strerror or exc}"))
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
                click.echo(f"{r.name}\t{r.label}\t{r.confidence:.3f}\t(top 3: {top3})")
    if any(r.error for r in results):
        sys.exit(1)
