"""The plugin system, including a third-party plugin discovered through its entry point."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers import KAGGLE5, install_fake_distribution, run_cli

from bloodcell_core import plugin_manager
from bloodcell_core.ml.preprocessing import apply_step

pytestmark = pytest.mark.real_data

THROWAWAY_PLUGIN = """
import keras
from bloodcell_core import ModelSpec, PreprocessingStep, TrainingDefaults, hookimpl


def build(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def invert(image):
    return 255 - image


@hookimpl
def register_models(register):
    register(ModelSpec(name="throwaway_net", description="test only", build=build, input_size=(48, 48),
                       defaults=TrainingDefaults(epochs=1, batch_size=8, preprocessing_steps=("invert",))))


@hookimpl
def register_preprocessing_steps(register):
    register(PreprocessingStep(name="invert", description="test only", apply=invert))
"""


def test_builtin_plugins_come_from_entry_points():
    infos = {info.name: info for info in plugin_manager.describe_plugins()}
    assert infos["baseline_cnn"].models == ["baseline_cnn"]
    assert infos["compact_cnn"].models == [
        "compact_cnn",
        "compact_cnn_gn",
        "compact_cnn_gn_ws",
        "compact_cnn_ws",
        "compact_cnn_ln",
        "compact_cnn_mixstyle",
        "compact_cnn_wide",
    ]
    assert infos["center_crop"].preprocessing_steps == ["center_crop"]
    assert all("from bloodcell" in info.source for info in infos.values())


def test_plugins_command_lists_what_each_provides():
    listed = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").stdout)}
    assert listed["compact_cnn"]["hooks"] == ["register_models"]
    assert "provides: model baseline_cnn" in run_cli("plugins").stdout


def test_unknown_model_is_a_clear_error(tmp_path: Path):
    with pytest.raises(plugin_manager.PluginError, match="unknown model plugin 'resnet9000'; installed: baseline_cnn"):
        plugin_manager.get_model_spec("resnet9000")
    result = run_cli("train", "--model", "resnet9000", "--data", str(KAGGLE5), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode == 1 and "unknown model plugin 'resnet9000'" in result.stderr


def test_broken_plugin_is_named(tmp_path: Path):
    env = install_fake_distribution(tmp_path, "broken_plugin", "raise RuntimeError('missing licence key')\n")
    result = run_cli("plugins", env=env, check=False)
    assert result.returncode == 1
    assert "plugin 'broken_plugin'" in result.stderr and "missing licence key" in result.stderr


def test_plugin_with_a_misspelt_hook_is_named(tmp_path: Path):
    source = "from bloodcell_core import hookimpl\n\n@hookimpl\ndef register_model(register):\n    pass\n"
    env = install_fake_distribution(tmp_path, "typo_plugin", source)
    result = run_cli("plugins", env=env, check=False)
    assert result.returncode == 1 and "plugin 'typo_plugin'" in result.stderr and "register_model" in result.stderr


def test_third_party_model_plugin_trains_and_predicts(tmp_path: Path):
    (tmp_path / "site").mkdir()
    env = install_fake_distribution(tmp_path / "site", "throwaway_plugin", textwrap.dedent(THROWAWAY_PLUGIN))
    listed = {p["name"]: p for p in json.loads(run_cli("plugins", "--json", env=env).stdout)}
    assert listed["throwaway_plugin"]["models"] == ["throwaway_net"]
    assert listed["throwaway_plugin"]["source"] == "entry point 'throwaway_plugin' from throwaway_plugin 0.1"

    model_dir = tmp_path / "throwaway_model"
    run_cli("train", "--model", "throwaway_net", "--data", str(KAGGLE5), "--out", str(model_dir), "--max-per-class", "8", env=env)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["plugin"] == "throwaway_net" and metadata["input_shape"] == [48, 48, 3]
    assert metadata["preprocessing"]["steps"] == ["invert"]

    image = next((KAGGLE5 / "monocyte").iterdir())
    predictions = json.loads(run_cli("predict", str(model_dir), str(image), "--json", env=env).stdout)
    assert predictions[0]["label"] in metadata["classes"]
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", sorted(plugin_manager.model_specs()))
def test_every_model_plugin_keeps_the_contract(name: str, tmp_path: Path):
    """Builds for any class count, ends in a softmax over float images in [0, 1], and round-trips through a .keras file."""
    import keras
    import numpy as np

    spec = plugin_manager.get_model_spec(name)
    model = spec.build((*spec.input_size, 3), 8)
    images = np.random.default_rng(0).random((2, *spec.input_size, 3), dtype=np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (2, 8) and probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-4)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert np.asarray(reloaded(images, training=False)) == pytest.approx(probabilities, abs=1e-5)


def test_a_model_with_a_plugins_custom_layers_is_served_by_a_fresh_process(tiny_model: Path, tmp_path: Path):
    """compact_cnn_gn_ws saves weight-standardised convolutions, a layer its plugin registers: a process that only
    serves (no training, no plugin looked up by name) must still read it back."""
    import shutil

    from bloodcell_core.ml.artifacts import file_sha256

    model_dir = tmp_path / "gn_ws"
    shutil.copytree(tiny_model, model_dir)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    spec = plugin_manager.get_model_spec("compact_cnn_gn_ws")
    spec.build((*spec.input_size, 3), len(metadata["classes"])).save(model_dir / "model.keras")
    metadata["files"]["model.keras"]["sha256"] = file_sha256(model_dir / "model.keras")
    (model_dir / "metadata.json").write_text(json.dumps(metadata))
    image = next((KAGGLE5 / metadata["classes"][0]).iterdir())
    predictions = json.loads(run_cli("predict", str(model_dir), str(image), "--json").stdout)
    assert predictions[0]["label"] in metadata["classes"]


@pytest.mark.parametrize("name", sorted(plugin_manager.preprocessing_steps()))
def test_every_preprocessing_step_maps_rgb_uint8_to_rgb_uint8(name: str):
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    result, _notes = apply_step(plugin_manager.get_preprocessing_step(name), image)
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3


def test_reinhard_removes_a_colour_cast():
    import cv2
    import numpy as np
    from helpers import KAGGLE5

    from bloodcell_core.ml.preprocessing import decode_image
    from plugins.colour_norm import reinhard

    image = decode_image(next((KAGGLE5 / "monocyte").iterdir()).read_bytes())
    cast = np.clip(image.astype(np.int16) + np.array([40, -20, 25]), 0, 255).astype(np.uint8)  # another stain/scanner
    lab = [cv2.cvtColor(reinhard(x), cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(axis=0) for x in (image, cast)]
    assert np.abs(lab[0] - lab[1]).max() < 3.0
    assert (
        np.abs(
            cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
            - cv2.cvtColor(cast, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
        ).max()
        > 10
    )


def test_reinhard_matches_a_float64_reference_at_any_image_size():
    """The step's statistics are exact sums (not float32 running sums, which drift on large images) and
    its table gives what the per-pixel float64 formula gives, but for the odd pixel on a rounding edge."""
    import cv2
    import numpy as np
    from helpers import KAGGLE5

    from bloodcell_core.ml.preprocessing import decode_image
    from plugins.colour_norm import MIN_STD, REFERENCE_MEAN, REFERENCE_STD, reinhard

    def by_formula(image: np.ndarray) -> np.ndarray:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
        matched = (lab - lab.mean(axis=0)) / np.maximum(lab.std(axis=0), MIN_STD) * REFERENCE_STD + REFERENCE_MEAN
        return cv2.cvtColor(np.clip(matched, 0, 255).astype(np.uint8).reshape(image.shape), cv2.COLOR_LAB2RGB)

    image = decode_image(next((KAGGLE5 / "monocyte").iterdir()).read_bytes())
    for sample in (image, cv2.resize(image, (2400, 2400), interpolation=cv2.INTER_LINEAR), image[:20, :30]):
        got, expected = reinhard(sample), by_formula(sample)
        assert got.shape == sample.shape and got.dtype == np.uint8
        assert (got != expected).mean() < 1e-3
        assert np.abs(got.astype(int) - expected).max() <= 2
    blank = np.full((40, 40, 3), 200, np.uint8)  # a flat image is shifted, not stretched by a zero spread
    assert (reinhard(blank) == reinhard(blank)[0, 0]).all()


def test_mixstyle_mixes_feature_statistics_in_training_only():
    import numpy as np

    from plugins.compact_cnn import MixStyle

    rng = np.random.default_rng(0)
    # four "images" of one channel, each with its own mean and spread: their style
    features = np.stack([rng.normal(mean, spread, (6, 6, 1)) for mean, spread in ((0, 1), (5, 2), (-3, 0.5), (10, 3))]).astype(
        np.float32
    )
    always = MixStyle(probability=1.0, alpha=0.1, seed=0)
    assert np.array_equal(np.asarray(always(features, training=False)), features)
    mixed = np.asarray(always(features, training=True))
    assert mixed.shape == features.shape and not np.allclose(mixed, features, atol=1e-3)
    # each image keeps its own pattern (its normalised values): only the style moves
    normalised = (features - features.mean(axis=(1, 2), keepdims=True)) / features.std(axis=(1, 2), keepdims=True)
    restyled = (mixed - mixed.mean(axis=(1, 2), keepdims=True)) / mixed.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(restyled, normalised, atol=1e-3)
    never = MixStyle(probability=0.0, seed=0)
    np.testing.assert_allclose(np.asarray(never(features, training=True)), features, atol=1e-5)
