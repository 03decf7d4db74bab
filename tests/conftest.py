"""Shared fixtures: the real datasets beside the project, generated odd inputs, a tiny trained model."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from servers import PostgresServer, RedisServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT.parent / "shared" / "data"
KAGGLE5 = DATA / "kaggle5"
PBC8 = DATA / "pbc8"
DEFAULT_MODEL = PROJECT / "models" / "default"  # the 9-class differential, trained on kaggle5 + pbc8
KAGGLE5_MODEL = PROJECT / "models" / "kaggle5"  # the notebook's 5 classes


def pytest_configure(config: pytest.Config) -> None:
    if not (KAGGLE5.is_dir() and PBC8.is_dir()):
        raise pytest.UsageError(f"the real datasets are expected at {DATA} (../shared/data beside the project)")


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `bloodcell` command in a fresh process, as a user would."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bloodcell"), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=PROJECT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"bloodcell {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims WIDTH x HEIGHT pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def encode(image: np.ndarray, extension: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(extension, image)
    assert ok
    return buffer.tobytes()


@pytest.fixture(scope="session")
def pbc8_index():
    from bloodcell_core.dataset import index_dataset

    return index_dataset(PBC8, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact_cnn trained for one epoch on 12 real images per class: fast, and real end to end."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    from bloodcell_core.training import train

    train("compact_cnn", KAGGLE5, out, epochs=1, max_per_class=12, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    directory = Path(tempfile.mkdtemp(prefix="bloodcell-pg-"))  # /tmp: reachable by the postgres user
    server = PostgresServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def unseen_images(label: str | None, count: int, source: str | None = None) -> list[Path]:
    """Images (of one class, or any; from one source folder such as "kaggle5", or any) from the shipped default
    model's test split: never trained or early-stopped on. Its split's paths are relative to ../shared/data."""
    split = json.loads((DEFAULT_MODEL / "split.json").read_text())
    return [DATA / item["paths"][0] for item in split["test"]
            if label in (None, item["label"]) and (source is None or item["paths"][0].startswith(f"{source}/"))][:count]
