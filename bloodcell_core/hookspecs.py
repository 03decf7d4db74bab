"""The hooks a bloodcell plugin may implement.

A plugin is a module (or object) with functions decorated by ``bloodcell_core.hookimpl``.
Each hook receives a ``register`` callable; call it once per thing the plugin provides.
Installed packages are discovered through the ``bloodcell`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from bloodcell_core.plugin_types import CellLocator, Exporter, ModelSpec, PreprocessingStep

hookspec = pluggy.HookspecMarker("bloodcell")
hookimpl = pluggy.HookimplMarker("bloodcell")


@hookspec
def register_models(register: Callable[["ModelSpec"], None]) -> None:
    """Register model architectures: ``register(ModelSpec(...))``."""


@hookspec
def register_preprocessing_steps(register: Callable[["PreprocessingStep"], None]) -> None:
    """Register image preprocessing steps: ``register(PreprocessingStep(...))``.

    A step maps an RGB uint8 image (H, W, 3) to an RGB uint8 image, before the resize to
    the model's input size. A model names the steps it was trained with in its metadata,
    and serving applies the same steps.
    """


@hookspec
def register_cell_locators(register: Callable[["CellLocator"], None]) -> None:
    """Register white-cell locators: ``register(CellLocator(...))``.

    ``CellLocator.locate`` maps an RGB uint8 image (a single-cell crop or a whole smear field) to the
    white cells it finds, as ``CellBox`` es in pixels of that image. The ``locate_cell`` preprocessing
    step crops single-cell images with one, and whole fields are cut into cells with one.
    """


@hookspec
def register_exporters(register: Callable[["Exporter"], None]) -> None:
    """Register report formats for laboratory systems: ``register(Exporter(...))``.

    ``Exporter.render`` receives a ``ReportDocument`` (the sample's differential, status and model
    version) and returns the document as text; the API serves it at /v1/samples/{id}/export/{name}.
    """
