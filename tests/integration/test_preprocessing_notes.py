"""A preprocessing step's fallback ("scale not measured") reaches the cell's prediction, its sample's report, the
CLI and the database: the service's own submission and classification on a real (SQLite) database."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import DEFAULT_MODEL, PBC8, encode, run_cli
from servers import settings_for
from sqlalchemy import select

from bloodcell_core.ml.artifacts import read_metadata, update_metadata
from bloodcell_core.ml.dataset import read_image_file
from bloodcell_core.ml.preprocessing import ImageDecodeError, decode_image
from bloodcell_core.service import db, tables
from bloodcell_core.service.classification import classify_sample
from bloodcell_core.service.review import get_cells
from bloodcell_core.service.samples import get_report
from bloodcell_core.service.submission import submit_sample
from bloodcell_core.service.versions import ensure_production_model, load_classifier
from plugins.red_cells import SCALE_NOT_MEASURED, measure_red_cells

pytestmark = pytest.mark.real_data


def has_measured_red_cells(path: Path) -> bool:
    try:
        return measure_red_cells(decode_image(read_image_file(path))).diameter is not None
    except ImageDecodeError:  # the real folders hold a non-image or two
        return False


def test_a_cell_without_red_cells_in_view_is_noted_and_counted_in_its_report(tmp_path: Path):
    # the shipped model's weights behind the red-cell ruler: the labels do not matter here, the notes do
    model = tmp_path / "ruler-model"
    shutil.copytree(DEFAULT_MODEL, model, ignore=shutil.ignore_patterns("report"))
    update_metadata(model, preprocessing=read_metadata(model).preprocessing | {"steps": ["red_cell_scale", "reinhard"]})
    env = {
        "BLOODCELL_HOME": str(tmp_path),
        "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'bloodcell.db'}",
        "BLOODCELL_DEFAULT_MODEL": str(model),
        "BLOODCELL_MODELS_DIR": str(tmp_path / "models"),
    }
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    settings = settings_for(env)
    ensure_production_model(settings)

    no_red_cells = np.full((360, 360, 3), (230, 200, 180), np.uint8)  # peach background, BGR
    cv2.circle(no_red_cells, (180, 180), 60, (160, 40, 110), -1)  # one violet nucleus, nothing else
    measured = next(p for p in sorted((PBC8 / "neutrophil").glob("*.jpg")) if has_measured_red_cells(p))
    images = [("alone.png", encode(no_red_cells, ".png")), (measured.name, read_image_file(measured))]
    submission = submit_sample(settings, "S-NOTES-1", images, "test")
    classify_sample(settings, submission.sample_pk, lambda version: load_classifier(settings, version), "test-worker")

    with db.session_scope(settings.database_url) as session:
        report = get_report(session, settings=settings, accession_id="S-NOTES-1")
        notes = dict(
            session.execute(
                select(tables.SampleImage.name, tables.Prediction.preprocessing_notes).join(
                    tables.Prediction, tables.Prediction.image_sha256 == tables.SampleImage.image_sha256
                )
            ).all()
        )
    assert report.n_classified == 2 and report.preprocessing_notes == {SCALE_NOT_MEASURED: 1}
    assert notes == {"alone.png": [SCALE_NOT_MEASURED], measured.name: []}
    with db.session_scope(settings.database_url) as session:
        cells = {cell.name: cell.preprocessing_notes for cell in get_cells(session, accession_id="S-NOTES-1")}
    assert cells == notes  # what the API's cells and the console's gallery read
    printed = run_cli("report", "S-NOTES-1", env=env)
    assert "note: scale not measured for 1 of 2 cells" in printed.stdout, printed.stdout + printed.stderr
