"""ModelMetadata: metadata.json as a dataclass, read and written without changing a byte or a model version."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from helpers import DEFAULT_MODEL, PROJECT

from bloodcell_core.ml.artifacts import ArtifactError, ModelMetadata, read_metadata, update_metadata, version_id
from bloodcell_core.ml.preprocessing import PreprocessingConfig

SHIPPED = sorted(path.parent for path in (PROJECT / "models").glob("*/metadata.json"))


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_metadata_round_trips_key_for_key_and_byte_for_byte(model_dir: Path, tmp_path: Path):
    text = (model_dir / "metadata.json").read_text()
    data = json.loads(text)
    assert list(ModelMetadata.from_json(data).to_json().items()) == list(data.items())
    copy = tmp_path / model_dir.name
    copy.mkdir()
    shutil.copy(model_dir / "metadata.json", copy)
    update_metadata(copy)
    assert (copy / "metadata.json").read_text() == text and version_id(copy) == version_id(model_dir)


def test_optional_sections_keep_their_place_or_stay_absent():
    data = json.loads((DEFAULT_MODEL / "metadata.json").read_text())
    keys = list(data)
    head, tail = keys[: keys.index("format_version")], keys[keys.index("format_version") :]
    adapted = {key: data[key] for key in head} | {"adaptation": {"lab_cells": 3}} | {key: data[key] for key in tail}
    assert list(ModelMetadata.from_json(adapted).to_json()) == list(adapted)  # adaptation: after metrics, as training writes it
    uncalibrated = {key: value for key, value in data.items() if key != "calibration"}
    metadata = ModelMetadata.from_json(uncalibrated)
    assert metadata.to_json() == uncalibrated and metadata.calibration is None and metadata.adaptation is None
    assert (metadata.views, metadata.view_gate, metadata.temperature) == (("identity",), None, 1.0)


def test_derived_fields_read_the_sections():
    metadata = read_metadata(DEFAULT_MODEL)
    data = json.loads((DEFAULT_MODEL / "metadata.json").read_text())
    assert metadata.model_sha256 == data["files"]["model.keras"]["sha256"]
    assert metadata.dataset_fingerprint == data["dataset"]["fingerprint"] and metadata.dataset_root == Path(data["dataset"]["root"])
    assert metadata.temperature == data["calibration"]["temperature"] and metadata.views == tuple(data["calibration"]["views"])
    assert metadata.view_gate == data["calibration"]["view_gate"]
    assert metadata.preprocessing_config == PreprocessingConfig.from_json(data["preprocessing"])


def test_update_changes_only_the_given_fields_and_a_new_calibration_makes_a_new_version(tmp_path: Path):
    shutil.copy(DEFAULT_MODEL / "metadata.json", tmp_path)
    before = read_metadata(tmp_path)
    after = update_metadata(tmp_path, calibration=before.calibration | {"temperature": 2.0})
    assert after == read_metadata(tmp_path) == dataclasses.replace(before, calibration=after.calibration)
    assert version_id(tmp_path) != version_id(DEFAULT_MODEL)
    with pytest.raises(TypeError):
        update_metadata(tmp_path, colour="blue")  # not a metadata field


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, r"unknown keys \['colour'\]"),
        ({"plugin": None}, r"lacks keys \['plugin'\]"),
        ({"format_version": 99}, "model format 99"),
    ],
)
def test_metadata_with_unknown_or_missing_keys_or_another_format_is_refused(tmp_path: Path, change: dict, message: str):
    data = json.loads((DEFAULT_MODEL / "metadata.json").read_text()) | change
    (tmp_path / "metadata.json").write_text(json.dumps({key: value for key, value in data.items() if value is not None}))
    with pytest.raises(ArtifactError, match=message):
        read_metadata(tmp_path)
