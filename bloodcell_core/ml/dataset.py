"""Folder-per-class datasets: reading, content hashing, real decoding, audit, fingerprint.

A dataset is ``ROOT/<class>/<file>``. Every file counts, hidden ones included (a stray
``.DS_Store`` renamed ``.jpg`` is exactly what a lab sends). Symbolic links are followed; so
are git link stubs, the small text files holding a relative path that git writes in place
of a symbolic link where the checkout has no symlink support.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from bloodcell_core.ml.preprocessing import ImageDecodeError, decode_image

LINK_STUB_MAX_BYTES = 1024
CORNER = 16  # pixels: side of each corner patch sampled for the background colour


def read_image_file(path: Path) -> bytes:
    """Read a file's bytes, following a git link stub to the file it names (relative to the stub's real folder)."""
    data = path.read_bytes()
    if len(data) <= LINK_STUB_MAX_BYTES and data[:1] in (b".", b"/") and b"\0" not in data:
        try:
            target = (path.resolve().parent / data.decode("utf-8").strip()).resolve()
        except UnicodeDecodeError:
            return data
        if target.is_file():
            return target.read_bytes()
    return data


def list_class_files(root: Path) -> list[tuple[str, Path]]:
    """(class, path) for every file under ROOT/<class>/, sorted; top-level files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    entries = [
        (class_dir.name, path)
        for class_dir in sorted(root.iterdir())
        if class_dir.is_dir()
        for path in sorted(class_dir.iterdir())
        if path.is_file()
    ]
    if not entries:
        raise ValueError(f"{root} holds no class folders with files (expected ROOT/<class>/<image>)")
    return entries


def parse_renames(pairs: Iterable[str]) -> dict[str, str]:
    """["seg_neutrophil=neutrophil", ...] -> {"seg_neutrophil": "neutrophil"}, or ValueError."""
    renames = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"a class rename is OLD=NEW, got {pair!r}")
        renames[old.strip()] = new.strip()
    return renames


def dataset_root(roots: Path | str | Sequence[Path | str]) -> tuple[Path, list[Path]]:
    """(the folder file paths are relative to, the dataset folders): one folder is its own root; several
    (e.g. kaggle5 and pbc8) are read as one dataset under their common parent."""
    folders = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    if not folders:
        raise ValueError("no dataset folder given")
    if len(folders) == 1:
        return folders[0], folders
    relative = all(not f.is_absolute() for f in folders)  # kept relative, so a model's record holds in another clone
    return Path(os.path.commonpath([os.path.normpath(f) if relative else os.path.abspath(f) for f in folders])), folders


@dataclass
class ImageEntry:
    """One file of a dataset, after reading and decoding it for real."""

    path: str  # relative to the dataset root
    label: str
    sha256: str
    n_bytes: int
    error: str | None = None
    height: int = 0
    width: int = 0
    background_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _inspect(root: Path, label: str, path: Path) -> ImageEntry:
    data = read_image_file(path)
    entry = ImageEntry(path=os.path.relpath(path, root), label=label, sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data))
    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        entry.error = str(exc)
        return entry
    entry.height, entry.width = image.shape[:2]
    corners = [image[:CORNER, :CORNER], image[:CORNER, -CORNER:], image[-CORNER:, :CORNER], image[-CORNER:, -CORNER:]]
    red, green, blue = (float(v) for v in np.concatenate([c.reshape(-1, 3) for c in corners]).mean(axis=0))
    entry.background_rgb = (red, green, blue)
    return entry


@dataclass
class DatasetIndex:
    """Every file of a dataset with its content hash and decode result."""

    root: Path
    entries: list[ImageEntry]
    classes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> list[ImageEntry]:
        return [e for e in self.entries if e.error is None]

    @property
    def unreadable(self) -> list[ImageEntry]:
        return [e for e in self.entries if e.error is not None]

    def duplicate_groups(self) -> list[list[ImageEntry]]:
        """Groups of two or more files with identical bytes (valid images only)."""
        by_hash: dict[str, list[ImageEntry]] = defaultdict(list)
        for entry in self.valid:
            by_hash[entry.sha256].append(entry)
        return [group for _, group in sorted(by_hash.items()) if len(group) > 1]

    def fingerprint(self) -> str:
        """sha256 over the sorted (class, content hash) pairs of the valid images: names do not matter."""
        pairs = sorted(f"{e.label}\t{e.sha256}" for e in self.valid)
        return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def index_dataset(
    roots: Path | str | Sequence[Path | str],
    classes: Iterable[str] | None = None,
    progress: bool = True,
    renames: dict[str, str] | None = None,
) -> DatasetIndex:
    """Read, hash and decode every file of ROOT/<class>/ (optionally only the given classes).

    Several ROOTS are one dataset: paths are relative to their common parent, and an image present in
    two of them (the PBC files kaggle5 and pbc8 share) is one image, kept on one side of any split.
    ``renames`` maps folder names to class names (kaggle5's seg_neutrophil is pbc8's neutrophil).
    """
    root, folders = dataset_root(roots)
    renames = renames or {}
    files = [(renames.get(label, label), path) for folder in folders for label, path in list_class_files(folder)]
    if classes is not None:
        wanted = set(classes)
        files = [(label, path) for label, path in files if label in wanted]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # OpenCV releases the GIL
        entries = list(
            tqdm(
                pool.map(lambda item: _inspect(root, *item), files),
                total=len(files),
                desc=f"reading {', '.join(folder.name for folder in folders)}",
                unit="img",
                disable=not progress,
            )
        )
    return DatasetIndex(root=root, entries=entries, classes=sorted({label for label, _ in files}))


def _size_groups(sizes_by_class: dict[str, Counter]) -> list[list[str]]:
    """Classes joined when they share any image size; more than one group means size alone separates them."""
    parent = {label: label for label in sizes_by_class}

    def find(label: str) -> str:
        while parent[label] != label:
            label = parent[label]
        return label

    owner: dict[str, str] = {}
    for label, sizes in sizes_by_class.items():
        for size in sizes:
            if size in owner:
                parent[find(label)] = find(owner[size])
            else:
                owner[size] = label
    groups: dict[str, list[str]] = defaultdict(list)
    for label in sizes_by_class:
        groups[find(label)].append(label)
    return sorted(sorted(group) for group in groups.values())


def _background_only_accuracy(valid: list[ImageEntry], classes: list[str]) -> float:
    """Nearest-class-centroid accuracy on the mean corner colour alone (3 numbers per image)."""
    colours = np.array([e.background_rgb for e in valid])
    labels = np.array([classes.index(e.label) for e in valid])
    centroids = np.stack([colours[labels == k].mean(axis=0) for k in range(len(classes))])
    predicted = np.argmin(((colours[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    return float((predicted == labels).mean())


def audit_dataset(index: DatasetIndex) -> dict[str, Any]:
    """The audit report: counts, unreadable files, duplicates, label conflicts, source shortcuts."""
    valid = index.valid
    per_class: dict[str, dict[str, Any]] = {}
    sizes_by_class: dict[str, Counter] = {}
    for label in index.classes:
        members = [e for e in index.entries if e.label == label]
        good = [e for e in members if e.error is None]
        sizes = Counter(f"{e.width}x{e.height}" for e in good)
        sizes_by_class[label] = sizes
        colours = np.array([e.background_rgb for e in good]) if good else np.zeros((1, 3))
        per_class[label] = {
            "files": len(members),
            "images": len(good),
            "unique_images": len({e.sha256 for e in good}),
            "unreadable": len(members) - len(good),
            "sizes": dict(sizes.most_common()),
            "background_rgb_mean": [round(float(v), 1) for v in colours.mean(axis=0)],
            "background_rgb_std": [round(float(v), 1) for v in colours.std(axis=0)],
        }
    groups = index.duplicate_groups()
    duplicate_groups = [{"sha256": g[0].sha256, "files": [e.path for e in g], "labels": sorted({e.label for e in g})} for g in groups]
    cross_class = [g for g in duplicate_groups if len(g["labels"]) > 1]

    size_groups = _size_groups(sizes_by_class)
    warnings = []
    if len(size_groups) > 1:
        warnings.append(
            "image size alone separates these groups of classes (different sources?): "
            + " | ".join(", ".join(group) for group in size_groups)
        )
    background_accuracy = _background_only_accuracy(valid, index.classes) if valid else 0.0
    chance = max(per_class[c]["images"] for c in index.classes) / max(len(valid), 1)
    if background_accuracy > chance + 0.2:
        warnings.append(
            f"the background colour alone (mean of the four corners) predicts the class of "
            f"{background_accuracy:.0%} of images (chance {chance:.0%})"
        )
    return {
        "root": str(index.root),
        "files": len(index.entries),
        "images": len(valid),
        "unique_images": len({e.sha256 for e in valid}),
        "fingerprint": index.fingerprint(),
        "classes": per_class,
        "unreadable": [{"path": e.path, "error": e.error} for e in index.unreadable],
        "duplicate_groups": duplicate_groups,
        "cross_class_duplicates": cross_class,
        "shortcuts": {
            "size_groups": size_groups,
            "background_only_accuracy": round(background_accuracy, 4),
            "chance_accuracy": round(chance, 4),
            "warnings": warnings,
        },
    }


def format_audit(report: dict[str, Any]) -> str:
    """The audit as text for people."""
    lines = [
        f"Dataset {report['root']}: {report['files']} files, {report['images']} decodable images, {report['unique_images']} unique",
        f"fingerprint {report['fingerprint']}",
        "",
        f"{'class':<16}{'files':>7}{'images':>8}{'unique':>8}  sizes (WxH: count)              background RGB",
    ]
    for label, info in report["classes"].items():
        sizes = ", ".join(f"{size}: {count}" for size, count in list(info["sizes"].items())[:3])
        lines.append(
            f"{label:<16}{info['files']:>7}{info['images']:>8}{info['unique_images']:>8}  {sizes:<32} {info['background_rgb_mean']}"
        )
    lines.append("")
    lines.append(f"Unreadable files ({len(report['unreadable'])}):")
    lines += [f"  {item['path']}: {item['error']}" for item in report["unreadable"]]
    lines.append(f"Duplicate groups, identical bytes ({len(report['duplicate_groups'])}):")
    lines += [f"  {' = '.join(group['files'])}" for group in report["duplicate_groups"]]
    lines.append(f"Same image under two or more classes ({len(report['cross_class_duplicates'])}):")
    lines += [f"  {' = '.join(group['files'])}" for group in report["cross_class_duplicates"]]
    lines.append("Source shortcuts:")
    lines += [f"  WARNING: {warning}" for warning in report["shortcuts"]["warnings"]] or ["  none found"]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
