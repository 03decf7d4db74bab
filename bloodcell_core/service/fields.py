"""Whole smear fields of a sample: located once by the worker, their white cells added as the sample's cells.

A field's cells are ordinary cells (a crop stored by its sha256, classified, reviewed, counted) that
also record the field's sha256 and their box in it. Locating a field and inserting its cells happen
in one transaction with the field's status change, so a redelivered task finds the field located
and adds nothing; the locator is deterministic, so the same field gives the same cells.
"""

from __future__ import annotations

import logging

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import FieldTooCrowded, ImageDecodeError, cut_field, draw_overlay
from bloodcell_core.plugin_manager import UnknownPlugin, get_cell_locator
from bloodcell_core.plugin_types import CellBox as LocatedBox
from bloodcell_core.service.errors import NotFound
from bloodcell_core.service.image_store import image_store, sha256_of
from bloodcell_core.service.results import CellResult, FieldCell, SampleFieldInfo
from bloodcell_core.service.review import cell_results
from bloodcell_core.service.samples import field_summaries, find_sample
from bloodcell_core.service.states import FieldStatus
from bloodcell_core.service.tables import Sample, SampleField, SampleImage

log = logging.getLogger(__name__)


def _fail(field: SampleField, error: str) -> None:
    field.status, field.error = FieldStatus.FAILED, error


def locate_queued_fields(session: Session, settings: Settings, sample: Sample) -> int:
    """Cut each queued field of SAMPLE into cell crops and add them as its cells; returns the cells added.

    Runs in the caller's transaction, with the sample's row locked. A field that is no image, holds
    more than BLOODCELL_MAX_CELLS_PER_FIELD cells, or would take the sample over
    BLOODCELL_MAX_IMAGES_PER_SAMPLE fails alone, with nothing of it kept; the other fields go on.
    """
    queued = [field for field in sample.fields if field.status == FieldStatus.QUEUED]
    if not queued:
        return 0
    store = image_store(settings)
    try:
        locator = get_cell_locator(settings.field_locator)
    except UnknownPlugin as exc:  # a configuration error: each field says so, and the sample's images go on
        for field in queued:
            _fail(field, f"{exc} (BLOODCELL_FIELD_LOCATOR)")
        return 0
    stored = store.get_many(session, [field.image_sha256 for field in queued])
    known = {cell.image_sha256 for cell in sample.cells}
    added = 0
    for field in queued:
        field.locator = locator.name
        if field.image_sha256 not in stored:
            _fail(field, store.missing_message(field.image_sha256))
            continue
        try:
            cut = cut_field(stored[field.image_sha256], locator.locate, settings.max_cells_per_field)
        except (ImageDecodeError, FieldTooCrowded) as exc:
            _fail(field, str(exc))
            continue
        except Exception as exc:  # a locator plugin's bug fails this field, not the sample or the worker
            log.exception("locator %s failed on field %s", locator.name, field.image_sha256)
            _fail(field, f"the cell locator {locator.name!r} failed: {type(exc).__name__}: {exc}")
            continue
        field.width, field.height = cut.width, cut.height
        crops = {sha256_of(cell.png): cell for cell in cut.cells}
        new = {sha: cell for sha, cell in crops.items() if sha not in known}
        if len(known) + len(new) > settings.max_images_per_sample:
            _fail(
                field,
                f"its {len(new)} white cells would take the sample to {len(known) + len(new)} cells, "
                f"over {settings.max_images_per_sample} (BLOODCELL_MAX_IMAGES_PER_SAMPLE)",
            )
            continue
        store.put_many(session, {sha: cell.png for sha, cell in new.items()})
        rows = [
            {
                "sample_id": sample.id,
                "image_sha256": sha,
                "name": f"{field.name[:480]}#{k}",
                "field_sha256": field.image_sha256,
                "box_x": cell.box.x,
                "box_y": cell.box.y,
                "box_width": cell.box.width,
                "box_height": cell.box.height,
                "touches_edge": cell.box.touches_edge,
            }
            for k, (sha, cell) in enumerate(crops.items())
            if sha in new
        ]
        if rows:
            session.execute(insert(SampleImage), rows)
        known |= new.keys()
        added += len(rows)
        field.status, field.error, field.n_cells = FieldStatus.LOCATED, None, len(cut.cells)
    session.flush()
    session.expire(sample, ["cells"])
    return added


def _cells_by_field(session: Session, sample: Sample) -> dict[str, list[CellResult]]:
    """The sample's cells found in fields, as ``review.cell_results`` gives them, by field sha256."""
    by_field: dict[str, list[CellResult]] = {}
    for row in cell_results(session, sample):
        if row.field_sha256 is not None:
            by_field.setdefault(row.field_sha256, []).append(row)
    return by_field


def get_fields(session: Session, *, accession_id: str) -> list[SampleFieldInfo]:
    """Each field of a sample with its cells' boxes and labels (a technologist's label over the model's)."""
    sample = find_sample(session, accession_id)
    by_field = _cells_by_field(session, sample)
    return [
        SampleFieldInfo(
            **dict(summary),
            width=field.width,
            height=field.height,
            locator=field.locator,
            cells=[FieldCell.model_validate(row, from_attributes=True) for row in by_field.get(field.image_sha256, [])],
        )
        for field, summary in zip(sample.fields, field_summaries(sample))
    ]


def field_overlay(session: Session, *, settings: Settings, accession_id: str, field_sha256: str) -> bytes:
    """The field as PNG with each of its cells' boxes drawn and labelled."""
    sample = find_sample(session, accession_id)
    field = session.scalar(select(SampleField).where(SampleField.sample_id == sample.id, SampleField.image_sha256 == field_sha256))
    if field is None:
        raise NotFound(f"sample {accession_id!r} has no field {field_sha256[:80]!r}")
    data = image_store(settings).get(session, field_sha256)
    boxes = [
        (LocatedBox(**dict(row.box), stained_area=0), row.label or row.status, row.needs_review)
        for row in _cells_by_field(session, sample).get(field_sha256, [])
        if row.box is not None  # always, for a field's cell: narrows the type
    ]
    try:
        return draw_overlay(data, boxes)
    except ImageDecodeError as exc:  # a field that failed to decode has no overlay either
        raise NotFound(f"field {field_sha256[:80]!r} has no overlay: {exc}") from None
