"""Model directories: the .keras file (no optimiser state), metadata.json, split.json, report/.

Loading a model always goes through ``load_artifact``, so training, evaluation, the CLI and
the workers build the same preprocessing from the same metadata.
"""

from __future__ import annotations

import dataclasses
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


# metadata.json keys a model may lack (a model never calibrated; a model not adapted to a laboratory)
_OPTIONAL_KEYS = ("calibration", "adaptation")


@dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """A model directory's metadata.json: one field per top-level key, in the file's order.

    The sections (``preprocessing``, ``training``, ``dataset``, ``split``, ``calibration``, ``metrics``,
    ``adaptation``, ``files``, ``versions``) stay JSON objects. ``calibration`` is absent from models never
    calibrated (format 1) and ``adaptation`` from models not adapted to a laboratory (``training.adapt``);
    ``format_version``, ``files`` and ``versions`` are set by ``save_artifact``. For a metadata.json that
    bloodcell wrote, ``to_json`` gives back the dictionary ``from_json`` was given, key order included.
    """

    name: str
    plugin: str
    classes: list[str]
    input_shape: list[int]
    preprocessing: dict[str, Any]
    created_at: str
    training: dict[str, Any]
    dataset: dict[str, Any]
    split: dict[str, Any]
    calibration: dict[str, Any] | None = None
    metrics: dict[str, Any]
    adaptation: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    files: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMetadata:
        """ValueError for a missing or an unknown key."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data and name not in _OPTIONAL_KEYS]
        unknown = [key for key in data if key not in names]
        if missing or unknown:
            raise ValueError(f"{METADATA_FILE} lacks keys {missing} or has unknown keys {unknown}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if not (field.name in _OPTIONAL_KEYS and getattr(self, field.name) is None)
        }

    @property
    def views(self) -> tuple[str, ...]:
        """Test-time views averaged per image (see ``inference.VIEWS``): part of the calibration fitted with them."""
        return tuple((self.calibration or {}).get("views", ["identity"]))

    @property
    def view_gate(self) -> Any:
        """First-view confidence at or above which the other test-time views are skipped (None: always asked),
        as stored: ``inference.check_view_gate`` checks it."""
        return (self.calibration or {}).get("view_gate")

    @property
    def temperature(self) -> float:
        """Temperature-scaling factor from calibration (1.0: uncalibrated)."""
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def model_sha256(self) -> str:
        return self.files[MODEL_FILE]["sha256"]

    @property
    def dataset_fingerprint(self) -> str:
        return self.dataset["fingerprint"]

    @property
    def dataset_root(self) -> Path:
        """The folder the split's paths are relative to."""
        return Path(self.dataset["root"])

    @property
    def preprocessing_config(self) -> PreprocessingConfig:
        return PreprocessingConfig.from_json(self.preprocessing)


def _write_metadata(directory: Path | str, metadata: ModelMetadata) -> None:
    (Path(directory) / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2) + "\n")


def save_artifact(model: "keras.Model", metadata: ModelMetadata, split: Split, out_dir: Path) -> None:
    """Write a model directory, with METADATA's format version, file digests and library versions set.
    ``model`` must be uncompiled: no optimiser state goes to disk."""
    if getattr(model, "optimizer", None) is not None:
        raise ValueError("save an uncompiled copy of the model: optimiser state does not belong in a model artifact")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    split_path = out_dir / SPLIT_FILE
    split_path.write_text(json.dumps(split.to_json(), indent=1) + "\n")
    metadata = dataclasses.replace(
        metadata,
        format_version=FORMAT_VERSION,
        files={
            MODEL_FILE: {"sha256": file_sha256(out_dir / MODEL_FILE), "bytes": (out_dir / MODEL_FILE).stat().st_size},
            SPLIT_FILE: {"sha256": file_sha256(split_path)},
        },
        versions=library_versions(),
    )
    _write_metadata(out_dir, metadata)


@dataclass
class ModelArtifact:
    directory: Path
    metadata: ModelMetadata
    model: "keras.Model"

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.classes)

    @property
    def preprocessing(self) -> PreprocessingConfig:
        return self.metadata.preprocessing_config

    def split(self) -> Split:
        return Split.from_json(json.loads((self.directory / SPLIT_FILE).read_text()))

    @property
    def views(self) -> tuple[str, ...]:
        return self.metadata.views

    @property
    def view_gate(self) -> Any:
        return self.metadata.view_gate

    @property
    def temperature(self) -> float:
        return self.metadata.temperature


def version_id(directory: Path | str) -> str:
    """A model version's identity: plugin plus a digest of the weights file and the calibration.

    Recalibrating changes what the model reports, so it makes a new version.
    """
    metadata = read_metadata(directory)
    digest = hashlib.sha256((metadata.model_sha256 + json.dumps(metadata.calibration, sort_keys=True)).encode()).hexdigest()
    return f"{metadata.plugin}-{digest[:12]}"


def update_metadata(directory: Path | str, **changes: Any) -> ModelMetadata:
    """Set top-level metadata fields (e.g. ``calibration``) of an existing model directory."""
    metadata = dataclasses.replace(read_metadata(directory), **changes)
    _write_metadata(directory, metadata)
    return metadata


def read_metadata(directory: Path | str) -> ModelMetadata:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a bloodcell model directory (no {METADATA_FILE})")
    data = json.loads(path.read_text())
    if data.get("format_version") not in READABLE_FORMATS:
        raise ArtifactError(f"{directory}: model format {data.get('format_version')}, expected one of {READABLE_FORMATS}")
    try:
        return ModelMetadata.from_json(data)
    except ValueError as exc:
        raise ArtifactError(f"{directory}: {exc}") from None


def load_artifact(directory: Path | str) -> ModelArtifact:
    """Load a model directory, checking the model file against the hash in its metadata."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{directory}: {MODEL_FILE} is missing")
    if file_sha256(model_path) != metadata.model_sha256:
        raise ArtifactError(f"{model_path} does not match the sha256 recorded in {METADATA_FILE}")
    import keras

    from bloodcell_core.plugin_manager import get_plugin_manager

    get_plugin_manager()  # imports every plugin, so that the custom layers a model plugin registers can be read back
    model = keras.saving.load_model(model_path, compile=False)
    return ModelArtifact(directory=directory, metadata=metadata, model=model)
