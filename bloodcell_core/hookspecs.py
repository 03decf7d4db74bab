"""The hooks a bloodcell plugin may implement.

A plugin is a module (or object) with functions decorated by ``bloodcell_core.hookimpl``.
Each hook receives a ``register`` callable; call it once per thing the plugin provides.
Installed packages are discovered through the ``bloodcell`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from bloodcell_core.plugin_types import CellLocator, Exporter, ModelSpec, PreprocessingStep, Runtime

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

    ``CellLocator.locate`` maps a whole smear field (RGB uint8) to the white cells it finds, as
    ``CellBox`` es (the whole cell, in pixels of the field; ``touches_edge`` where the field's edge cuts
    it), largest first; ``[]`` when there is none. It must be deterministic: the same field gives the
    same cells. Workers cut submitted fields with the locator BLOODCELL_FIELD_LOCATOR names
    (default ``stain_nucleus``); `bloodcell locate evaluate` scores one on annotated fields. A learned
    detector is one more plugin implementing this hook.
    """


@hookspec
def register_exporters(register: Callable[["Exporter"], None]) -> None:
    """Register report formats for laboratory systems: ``register(Exporter(...))``.

    ``Exporter.render`` receives a ``ReportDocument`` (the sample's differential, status and model
    version) and returns the document as text; the API serves it at /v1/samples/{id}/export/{name}.
    """


@hookspec
def register_runtimes(register: Callable[["Runtime"], None]) -> None:
    """Register inference runtimes: ``register(Runtime(...))``.

    Workers pick one with BLOODCELL_RUNTIME (``keras``, a runtime's name, or ``auto``: the first
    available one that passes the parity check, else ``keras``). A compiled model is used only when its
    probabilities on a fixed batch are within ``ml.runtimes.PARITY_TOLERANCE`` of Keras's, with the same
    labels; otherwise the worker logs why and serves with Keras.
    """
