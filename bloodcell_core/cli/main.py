"""The `bloodcell` command: one group, its commands added by audience (ml, lab, admin)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

import click  # noqa: E402

from bloodcell_core.cli import admin, lab, ml  # noqa: E402
from bloodcell_core.cli.group import BloodcellGroup  # noqa: E402


@click.group(cls=BloodcellGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


for audience in (ml, lab, admin):
    for command in audience.COMMANDS:
        cli.add_command(command)
