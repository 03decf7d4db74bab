"""Parameter types and options that several `bloodcell` commands share, written once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
FOLDER = click.Path(file_okay=False, path_type=Path)  # a folder to write; made when missing


def json_option(help: str | None = "Print JSON.") -> Callable[[F], F]:
    """--json, as ``as_json``: machine-readable output instead of the text for people."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def out_option(help: str, default: Path | None = None) -> Callable[[F], F]:
    """--out, as ``out_dir``: the folder a command writes; required unless it has a default."""
    if default is None:
        return click.option("--out", "out_dir", required=True, type=FOLDER, help=help)
    return click.option("--out", "out_dir", type=FOLDER, default=default, show_default=True, help=help)


def renames_option(help: str) -> Callable[[F], F]:
    """--rename FOLDER=CLASS, repeatable, as ``renames`` (read with ml.dataset.parse_renames)."""
    return click.option("--rename", "renames", multiple=True, metavar="FOLDER=CLASS", help=help)


def overlays_option(command: F) -> F:
    return click.option("--overlays", "overlays_dir", type=FOLDER, help="Write each field with its boxes drawn here.")(command)


# The generalisation table and the trials read the same three datasets.
data_root_option = click.option(
    "--data-root",
    type=EXISTING_DIR,
    default=Path("../shared/data"),
    show_default=True,
    help="The folder holding kaggle5/, pbc8/ and bccd/.",
)


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


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated option (--steps, --views) as a tuple; None when not given."""
    return tuple(value.split(",")) if value else None
