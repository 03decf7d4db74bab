"""Helpers shared by the tests: where the real data and the shipped models are, the CLI as a user runs it,
generated odd inputs. Fixtures are in ``conftest.py``."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
# BLOODCELL_TEST_DATA: another place for the real datasets (or a missing one, to run the tests that need none)
DATA = Path(os.environ.get("BLOODCELL_TEST_DATA", PROJECT.parent / "shared" / "data"))
KAGGLE5 = DATA / "kaggle5"
PBC8 = DATA / "pbc8"
BCCD = DATA / "bccd"  # whole smear fields with white-cell boxes (Pascal VOC)
DEFAULT_MODEL = PROJECT / "models" / "default"  # the 9-class differential, trained on kaggle5 + pbc8
KAGGLE5_MODEL = PROJECT / "models" / "kaggle5"  # the notebook's 5 classes


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `bloodcell` command in a fresh process, as a user would."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bloodcell"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=PROJECT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"bloodcell {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims WIDTH x HEIGHT pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def encode(image: np.ndarray, extension: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(extension, image)
    assert ok
    return buffer.tobytes()


def touching_cells_field(columns: int, rows: int, spacing: int = 100) -> np.ndarray:
    """A generated smear field (RGB): COLUMNS x ROWS white cells whose pale cytoplasm touches its
    neighbours', each with a violet nucleus, on a peach background."""
    image = np.full((rows * spacing, columns * spacing, 3), (238, 214, 196), np.uint8)
    for i in range(columns):
        for j in range(rows):
            centre = (spacing // 2 + i * spacing, spacing // 2 + j * spacing)
            cv2.circle(image, centre, spacing // 2, (200, 170, 210), -1)
            cv2.circle(image, centre, spacing * 28 // 100, (95, 50, 150), -1)
    return image


def unseen_images(label: str | None, count: int, source: str | None = None) -> list[Path]:
    """Images (of one class, or any; from one source folder such as "kaggle5", or any) from the shipped default
    model's test split: never trained or early-stopped on. Its split's paths are relative to ../shared/data."""
    split = json.loads((DEFAULT_MODEL / "split.json").read_text())
    return [
        DATA / item["paths"][0]
        for item in split["test"]
        if label in (None, item["label"]) and (source is None or item["paths"][0].startswith(f"{source}/"))
    ][:count]


def have_real_data() -> bool:
    return KAGGLE5.is_dir() and PBC8.is_dir()


def install_fake_distribution(site: Path, module: str, source: str) -> dict[str, str]:
    """A real installed distribution (dist-info with entry_points.txt) on a path of its own."""
    (site / f"{module}.py").write_text(source)
    dist_info = site / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[bloodcell]\n{module} = {module}\n")
    return {"PYTHONPATH": str(site)}
