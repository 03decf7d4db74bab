"""Model directories: the .keras file (no optimiser state), metadata.json, split.json, report/.

Loading a model always goes through ``load_artifact``, so training, evaluation, the CLI and
the workers build the same preprocessing from the same metadata.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bloodcell_core
from bloodcell_core.ml.preprocessing import PreprocessingConfig
from bloodcell_core.ml.splits import Split

if TYPE_CHECKING:
    import keras

# Keras, TensorFlow and OpenCV are imported inside the functions that need them: producers read
# model metadata (to register versions) without loading a deep-learning framework.

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
SPLIT_FILE = "split.json"
REPORT_DIR = "report"
# 2: the calibration record may name test-time views. Code that reads only format 1 would serve such
# a model with one view under a temperature and threshold fitted for several, so it must refuse it.
# 3: it may also hold a view gate (the other views only for cells the first view is unsure of); code
# that reads only format 2 would ask every view, not what the temperature and threshold were fitted on.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)


class ArtifactError(RuntimeError):
    """A model directory is missing, incomplete, or from an incompatible bloodcell."""


def library_versions() -> dict[str, str]:
    import cv2
    import keras
    import numpy as np

    versions = {
        "bloodcell": bloodcell_core.__version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifact(model: "keras.Model", metadata: dict[str, Any], split: Split, out_dir: Path) -> None:
    """Write a model directory. ``model`` must be uncompiled: no optimiser state goes to disk."""
    if getattr(model, "optimizer", None) is not None:
        raise ValueError("save an uncompiled copy of the model: optimiser state does not belong in a model artifact")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    split_path = out_dir / SPLIT_FILE
    split_path.write_text(json.dumps(split.to_json(), indent=1) + "\n")
    metadata = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "files": {
            MODEL_FILE: {"sha256": file_sha256(out_dir / MODEL_FILE), "bytes": (out_dir / MODEL_FILE).stat().st_size},
            SPLIT_FILE: {"sha256": file_sha256(split_path)},
        },
        "versions": library_versions(),
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


@dataclass
class ModelArtifact:
    directory: Path
    metadata: dict[str, Any]
    model: "keras.Model"

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def preprocessing(self) -> PreprocessingConfig:
        return PreprocessingConfig.from_json(self.metadata["preprocessing"])

    def split(self) -> Split:
        return Split.from_json(json.loads((self.directory / SPLIT_FILE).read_text()))

    @property
    def views(self) -> tuple[str, ...]:
        return metadata_views(self.metadata)

    @property
    def view_gate(self) -> Any:
        return metadata_view_gate(self.metadata)

    @property
    def temperature(self) -> float:
        """Temperature-scaling factor from calibration (1.0: uncalibrated)."""
        return float((self.metadata.get("calibration") or {}).get("temperature", 1.0))


def metadata_views(metadata: dict[str, Any]) -> tuple[str, ...]:
    """Test-time views averaged per image (see ``inference.VIEWS``): part of the calibration fitted with them."""
    return tuple((metadata.get("calibration") or {}).get("views", ["identity"]))


def metadata_view_gate(metadata: dict[str, Any]) -> Any:
    """First-view confidence at or above which the other test-time views are skipped (None: always asked),
    as stored: ``inference.check_view_gate`` checks it."""
    return (metadata.get("calibration") or {}).get("view_gate")


def version_id(directory: Path | str) -> str:
    """A model version's identity: plugin plus a digest of the weights file and the calibration.

    Recalibrating changes what the model reports, so it makes a new version.
    """
    metadata = read_metadata(directory)
    digest = hashlib.sha256(
        (metadata["files"][MODEL_FILE]["sha256"] + json.dumps(metadata.get("calibration"), sort_keys=True)).encode()
    ).hexdigest()
    return f"{metadata['plugin']}-{digest[:12]}"


def update_metadata(directory: Path | str, **changes: Any) -> dict[str, Any]:
    """Set top-level metadata keys (e.g. ``calibration``) of an existing model directory."""
    metadata = read_metadata(directory) | changes
    (Path(directory) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def read_metadata(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a bloodcell model directory (no {METADATA_FILE})")
    metadata = json.loads(path.read_text())
    if metadata.get("format_version") not in READABLE_FORMATS:
        raise ArtifactError(f"{directory}: model format {metadata.get('format_version')}, expected one of {READABLE_FORMATS}")
    return metadata


def load_artifact(directory: Path | str) -> ModelArtifact:
    """Load a model directory, checking the model file against the hash in its metadata."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{directory}: {MODEL_FILE} is missing")
    expected = metadata["files"][MODEL_FILE]["sha256"]
    if file_sha256(model_path) != expected:
        raise ArtifactError(f"{model_path} does not match the sha256 recorded in {METADATA_FILE}")
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    return ModelArtifact(directory=directory, metadata=metadata, model=model)
