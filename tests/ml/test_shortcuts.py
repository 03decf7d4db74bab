"""The shortcut audit finds a planted source cue, and the serving preprocessing removes the size cue."""

import json

import numpy as np
from helpers import encode, run_cli


def test_size_cue_is_found_and_gone_after_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    for label, side in (("a", 60), ("b", 80)):  # same colours, different image sizes: a source cue
        (tmp_path / label).mkdir()
        for k in range(40):
            image = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            (tmp_path / label / f"{k}.png").write_bytes(encode(image))
    report = json.loads(run_cli("dataset", "shortcuts", str(tmp_path), "--json").stdout)
    found = report["classifiers"]
    assert found["image_size"]["accuracy"] == 1.0
    assert found["image_size_after_preprocessing"]["distinct_sizes"] == 1
    assert found["image_size_after_preprocessing"]["accuracy"] <= report["chance_accuracy"]
    assert set(found) == {"image_size", "corner_colour", "whole_image_colour", "image_size_after_preprocessing"}
    assert report["model"] is None
