"""Deterministic, stratified, leak-free train / validation / test splits.

The unit of splitting is a unique image (content hash), so identical files always land on the
same side. Images filed under more than one class are excluded and reported. Within each
class, images are ordered by sha256(seed + content hash) and cut at the fractions: the same
seed and data always give the same split, and adding images to a dataset does not move the
existing ones between sides.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bloodcell_core.ml.dataset import DatasetIndex, read_image_file
from bloodcell_core.ml.preprocessing import Preprocessor

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitItem:
    sha256: str
    label: str
    paths: tuple[str, ...]  # every file with these bytes (duplicates)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "label": self.label, "paths": list(self.paths)}


@dataclass
class Split:
    seed: int
    fractions: tuple[float, float, float]
    parts: dict[str, list[SplitItem]]
    excluded: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for name, items in self.parts.items():
            per_class: dict[str, int] = defaultdict(int)
            for item in items:
                per_class[item.label] += 1
            counts[name] = dict(sorted(per_class.items()))
        return counts

    def hashes(self, *names: str) -> set[str]:
        return {item.sha256 for name in names for item in self.parts[name]}

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "unit": "unique image (sha256 of the file bytes)",
            "counts": self.counts(),
            "excluded": self.excluded,
            **{name: [item.to_json() for item in items] for name, items in self.parts.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Split":
        parts = {name: [SplitItem(item["sha256"], item["label"], tuple(item["paths"])) for item in data[name]] for name in SPLIT_NAMES}
        return cls(seed=data["seed"], fractions=tuple(data["fractions"]), parts=parts, excluded=data["excluded"])


def make_split(index: DatasetIndex, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Split:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    paths: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, set[str]] = defaultdict(set)
    for entry in index.valid:
        paths[entry.sha256].append(entry.path)
        labels[entry.sha256].add(entry.label)

    excluded = [
        {"sha256": sha, "paths": sorted(paths[sha]), "labels": sorted(labels[sha]), "reason": "conflicting labels"}
        for sha in sorted(labels)
        if len(labels[sha]) > 1
    ]
    by_class: dict[str, list[SplitItem]] = defaultdict(list)
    for sha in labels:
        if len(labels[sha]) == 1:
            (label,) = labels[sha]
            by_class[label].append(SplitItem(sha, label, tuple(sorted(paths[sha]))))

    parts: dict[str, list[SplitItem]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda item: hashlib.sha256(f"{seed}:{item.sha256}".encode()).hexdigest())
        n_train = round(len(items) * fractions[0])
        n_val = round(len(items) * fractions[1])
        parts["train"] += items[:n_train]
        parts["val"] += items[n_train : n_train + n_val]
        parts["test"] += items[n_train + n_val :]
    return Split(seed=seed, fractions=(fractions[0], fractions[1], fractions[2]), parts=parts, excluded=excluded)


def load_split_images(root: Path, items: list[SplitItem], preprocessor: Preprocessor, desc: str, progress: bool) -> np.ndarray:
    """Preprocessed uint8 images (n, h, w, 3) for split items under ROOT, decoded in a thread pool."""

    def load(item: SplitItem) -> np.ndarray:
        return preprocessor.to_uint8(read_image_file(root / item.paths[0]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(tqdm(pool.map(load, items), total=len(items), desc=desc, unit="img", disable=not progress))
    height, width = preprocessor.config.input_size
    return np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)
