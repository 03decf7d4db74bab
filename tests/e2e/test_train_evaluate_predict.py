"""Training writes a complete model directory; evaluate and predict go through the serving path."""

import dataclasses
import io
import json
from pathlib import Path

import pytest
from helpers import KAGGLE5, PBC8, run_cli

from bloodcell_core.ml.artifacts import ArtifactError, load_artifact
from bloodcell_core.ml.calibration import REVIEW_ALL
from bloodcell_core.ml.evaluation import evaluate
from bloodcell_core.ml.inference import Classifier

pytestmark = pytest.mark.real_data


def test_model_directory_is_complete(tiny_model: Path):
    metadata = json.loads((tiny_model / "metadata.json").read_text())
    assert metadata["classes"] == ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]
    assert metadata["preprocessing"]["steps"] == ["center_crop"] and metadata["input_shape"] == [128, 128, 3]
    assert len(metadata["dataset"]["fingerprint"]) == 64
    assert set(metadata["split"]["counts"]) == {"train", "val", "test"}
    assert {"test", "val", "colour_only_baseline_test"} <= set(metadata["metrics"])
    assert {"keras", "tensorflow", "opencv", "numpy", "bloodcell"} <= set(metadata["versions"])
    calibration = metadata["calibration"]
    # 12 images per class leave too few validation cells to accept any without review: the threshold is above 1
    assert calibration["temperature"] > 0 and calibration["review_threshold"] == REVIEW_ALL
    assert {"ece_before", "ece_after", "coverage", "accepted_accuracy"} <= set(calibration["test"])
    for name in (
        "metrics.json",
        "classification_report.txt",
        "confusion_matrix.png",
        "training_curves.png",
        "augmentation_preview.png",
        "reliability.png",
        "reliability_uncalibrated.png",
        "coverage.png",
        "calibration.json",
    ):
        assert (tiny_model / "report" / name).stat().st_size > 0, name
    split = json.loads((tiny_model / "split.json").read_text())
    assert sum(len(split[name]) for name in ("train", "val", "test")) == 60


def test_classifier_serves_calibrated_probabilities(tiny_model: Path):
    from bloodcell_core.ml.calibration import apply_temperature

    classifier = Classifier.from_dir(tiny_model)
    data = next((KAGGLE5 / "myeloblast").iterdir()).read_bytes()
    raw = classifier.artifact.model.predict_on_batch(classifier.preprocessor(data)[None])
    served = classifier.classify_one(data)
    expected = apply_temperature(raw, classifier.artifact.temperature)[0]
    assert [served.probabilities[c] for c in classifier.classes] == pytest.approx(expected.tolist(), abs=1e-5)


def test_saved_model_has_no_optimizer_state(tiny_model: Path):
    import zipfile

    import h5py

    with zipfile.ZipFile(tiny_model / "model.keras") as archive:
        config = json.loads(archive.read("config.json"))
        with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
            groups = list(weights.keys())
    assert not config.get("compile_config")
    assert "optimizer" not in groups and "layers" in groups
    assert getattr(load_artifact(tiny_model).model, "optimizer", None) is None


def test_tampered_model_file_is_refused(tiny_model: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    with open(copy / "model.keras", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_artifact(copy)


def test_predict_reports_a_bad_image_alone(tiny_model: Path, tmp_path: Path):
    good = next((KAGGLE5 / "basophil").iterdir())
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    result = run_cli("predict", str(tiny_model), str(good), str(text_file), str(tmp_path / "missing.png"), "--json", check=False)
    assert result.returncode == 1
    entries = json.loads(result.stdout)
    assert entries[0]["label"] in json.loads((tiny_model / "metadata.json").read_text())["classes"]
    assert len(entries[0]["top3"]) == 3 and 0 < entries[0]["confidence"] <= 1
    assert "not an image file" in entries[1]["error"]
    assert "cannot read file" in entries[2]["error"]
    text = run_cli("predict", str(tiny_model), str(good), check=False).stdout
    assert "top 3:" in text


def test_classify_keeps_order_and_isolates_errors(tiny_model: Path):
    classifier = Classifier.from_dir(tiny_model)
    files = sorted((KAGGLE5 / "monocyte").iterdir())[:70]
    items = [(f.name, f.read_bytes()) for f in files]
    items.insert(65, ("empty.jpg", b""))
    results = classifier.classify(items)
    assert [r.name for r in results] == [name for name, _ in items]
    assert results[65].error == "empty file (0 bytes)"
    assert all(r.error is None for i, r in enumerate(results) if i != 65)
    single = classifier.classify_one(items[0][1])
    assert single.probabilities == pytest.approx(results[0].probabilities, abs=1e-5)


def test_padded_batches_give_the_same_probabilities(tiny_model: Path):
    """On JAX, chunks are padded to power-of-two batches (one compiled shape per size class): padding changes nothing."""
    from unittest import mock

    import keras
    import numpy as np

    from bloodcell_core.ml.inference import padded_size, predict_in_batches

    assert [padded_size(n) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    classifier = Classifier.from_dir(tiny_model)
    images = np.stack([classifier.preprocessor(f.read_bytes()) for f in sorted((KAGGLE5 / "basophil").iterdir())[:70]])
    expected = np.asarray(classifier.artifact.model(images, training=False))
    model = mock.Mock(wraps=classifier.artifact.model)
    with mock.patch.object(keras.backend, "backend", return_value="jax"):  # the padding path, on this backend
        assert predict_in_batches(model, images) == pytest.approx(expected, abs=1e-5)
        assert predict_in_batches(model, images[:3]) == pytest.approx(expected[:3], abs=1e-5)
    assert [len(call.args[0]) for call in model.predict_on_batch.call_args_list] == [64, 8, 4]
    assert predict_in_batches(classifier.artifact.model, images[:3]) == pytest.approx(expected[:3], abs=1e-5)


def test_evaluate_leaves_out_training_images_and_unknown_classes(tiny_model: Path):
    classifier = Classifier.from_dir(tiny_model)
    metrics = evaluate(classifier, PBC8, progress=False)
    excluded = metrics["excluded"]
    assert excluded["unknown_class_folders"] == ["eosinophil", "ig", "lymphocyte", "neutrophil", "platelet"]
    # the pbc8 basophil/erythroblast/monocyte files are the kaggle5 ones: the tiny model trained on some
    assert excluded["seen_in_training"] > 0
    assert metrics["n"] == 3 * 850 - excluded["seen_in_training"] - excluded["duplicate_files"]
    assert set(metrics["per_class"]) == set(classifier.classes)


def test_evaluate_cli_json_keys(tiny_model: Path, tmp_path: Path):
    subset = tmp_path / "subset"
    for label in ("myeloblast", "seg_neutrophil"):
        (subset / label).mkdir(parents=True)
        for f in sorted((KAGGLE5 / label).iterdir())[-15:]:
            (subset / label / f.name).symlink_to(f)
    report = json.loads(run_cli("evaluate", str(tiny_model), str(subset), "--json", "--include-seen").stdout)
    assert {
        "accuracy",
        "macro_f1",
        "ece",
        "n",
        "per_class",
        "confusion_matrix",
        "coverage",
        "accepted_accuracy",
        "unfamiliar_share",
    } <= set(report)
    assert report["n"] == 30 and 0.0 <= report["coverage"] <= 1.0
    # coverage is the service's review rule: the cells predict --json says need no review
    predicted = json.loads(run_cli("predict", str(tiny_model), *map(str, sorted(subset.rglob("*.jpg"))), "--json").stdout)
    assert report["coverage"] == pytest.approx(sum(not p["needs_review"] for p in predicted) / 30)
    assert all({"needs_review", "review_reasons", "ood_score"} <= set(p) for p in predicted)
    assert "accepted without review" in run_cli("evaluate", str(tiny_model), str(subset)).stdout
    # a folder named otherwise is scored as the model's class with --rename
    renamed = tmp_path / "renamed" / "neutrophil"
    renamed.parent.mkdir()
    renamed.symlink_to(subset / "seg_neutrophil")
    swapped = json.loads(
        run_cli(
            "evaluate", str(tiny_model), str(renamed.parent), "--json", "--include-seen", "--rename", "neutrophil=seg_neutrophil"
        ).stdout
    )
    assert swapped["n"] == 15 and swapped["excluded"]["unknown_class_folders"] == []


def test_train_refuses_to_overwrite_a_model(tiny_model: Path):
    result = run_cli("train", "--model", "compact_cnn", "--data", str(KAGGLE5), "--out", str(tiny_model), check=False)
    assert result.returncode == 1 and "already holds a model" in result.stderr


def test_batch_norm_recalibration_sets_the_exact_statistics():
    import keras
    import numpy as np

    from bloodcell_core.ml.training import recalibrate_batch_norm

    inputs = keras.Input((4,))
    layer = keras.layers.BatchNormalization()
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(3.0, 2.0, (256, 4)).astype("float32")
    recalibrate_batch_norm(model, x, batch_size=64)
    assert np.allclose(np.asarray(layer.moving_mean), x.mean(axis=0), atol=1e-4)
    batch_variances = np.mean([x[s : s + 64].var(axis=0) for s in range(0, 256, 64)], axis=0)
    assert np.allclose(np.asarray(layer.moving_variance), batch_variances, rtol=1e-3)
    assert layer.momentum == 0.99  # restored


def test_test_time_views_average_log_probabilities_of_flipped_images(tiny_model: Path):
    import numpy as np

    from bloodcell_core.ml.inference import VIEWS, predict_in_batches, predict_views

    model = load_artifact(tiny_model).model
    classifier = Classifier.from_dir(tiny_model)
    images = np.stack([classifier.preprocessor(f.read_bytes()) for f in sorted((KAGGLE5 / "monocyte").iterdir())[:70]])
    assert predict_views(model, images) == pytest.approx(predict_in_batches(model, images), abs=1e-6)
    assert VIEWS["rotate_180"](images)[0] == pytest.approx(np.flip(images[0], (0, 1)))
    views = ("identity", "flip_vertical", "rotate_180")
    per_view = [np.asarray(model(np.ascontiguousarray(VIEWS[v](images)), training=False)) for v in views]
    geometric = np.exp(np.mean(np.log(per_view), axis=0))
    expected = geometric / geometric.sum(axis=1, keepdims=True)
    averaged = predict_views(model, images, views)  # 70 images: a chunk of 64 views, then one of 6
    assert averaged == pytest.approx(expected, abs=1e-5)
    assert averaged.sum(axis=1) == pytest.approx(np.ones(70), abs=1e-5)
    assert not np.allclose(averaged, per_view[0], atol=1e-3)  # the views do change the answer


def test_a_view_gate_asks_the_other_views_only_for_cells_the_first_leaves_unsure(tiny_model: Path):
    import numpy as np

    from bloodcell_core.ml.inference import predict_in_batches, predict_views

    class CountingModel:  # the model, counting the images it is asked about
        def __init__(self, model):
            self.model, self.output_shape, self.images = model, model.output_shape, 0

        def predict_on_batch(self, batch):
            self.images += len(batch)
            return self.model.predict_on_batch(batch)

    model = CountingModel(load_artifact(tiny_model).model)
    classifier = Classifier.from_dir(tiny_model)
    images = np.stack([classifier.preprocessor(f.read_bytes()) for f in sorted((KAGGLE5 / "basophil").iterdir())[:70]])
    views = ("identity", "flip_horizontal", "rotate_180")
    first = predict_in_batches(model, images)
    every = predict_views(model, images, views)
    gate = float(np.median(first.max(axis=1)))
    unsure = first.max(axis=1) < gate
    assert 0 < unsure.sum() < 70
    model.images = 0
    gated = predict_views(model, images, views, gate=gate)
    assert model.images == 70 + 2 * unsure.sum()  # one look at every cell, two more at each unsure one
    assert gated[~unsure] == pytest.approx(first[~unsure], abs=1e-6)  # sure cells keep their one-look answer
    assert gated[unsure] == pytest.approx(every[unsure], abs=1e-5)  # the others get the full average
    assert predict_views(model, images, views, gate=1e-9) == pytest.approx(first, abs=1e-6)


def test_calibrate_with_views_makes_a_new_version_that_serves_them(tiny_model: Path, tmp_path: Path):
    import shutil

    import numpy as np

    from bloodcell_core.ml.artifacts import version_id
    from bloodcell_core.ml.calibration import apply_temperature
    from bloodcell_core.ml.inference import predict_views

    copy = tmp_path / "with_views"
    shutil.copytree(tiny_model, copy)
    refused = run_cli("calibrate", str(copy), "--views", "identity,upside_down", check=False)
    assert refused.returncode != 0 and "unknown test-time views ['upside_down']" in refused.stderr
    assert "flip_horizontal" in refused.stderr
    record = json.loads(run_cli("calibrate", str(copy), "--views", "flip_horizontal, identity").stdout)
    assert record["views"] == ["identity", "flip_horizontal"]
    assert version_id(copy) != version_id(tiny_model)
    metadata = json.loads((copy / "metadata.json").read_text())
    assert metadata["format_version"] == 3  # code that knows no views or gates refuses it rather than serve it otherwise
    report = json.loads((copy / "report" / "metrics.json").read_text())
    assert report["test"]["accuracy"] == metadata["metrics"]["test"]["accuracy"]
    assert "averaged over 2 test-time views" in (copy / "report" / "classification_report.txt").read_text()

    classifier = Classifier.from_dir(copy)
    assert classifier.artifact.views == ("identity", "flip_horizontal")
    data = next((KAGGLE5 / "myeloblast").iterdir()).read_bytes()
    image = classifier.preprocessor(data)[None]
    expected = apply_temperature(predict_views(classifier.artifact.model, image, record["views"]), record["temperature"])
    served = classifier.classify_one(data)
    assert [served.probabilities[c] for c in classifier.classes] == pytest.approx(expected[0].tolist(), abs=1e-5)
    batch = classifier.classify([("a", data), ("b", data)])
    assert batch[1].probabilities == pytest.approx(served.probabilities, abs=1e-5)
    assert not np.allclose(
        list(served.probabilities.values()), list(Classifier.from_dir(tiny_model).classify_one(data).probabilities.values()), atol=1e-4
    )

    ungated = version_id(copy)
    assert "'off'" in run_cli("calibrate", str(copy), "--view-gate", "high", check=False).stderr
    assert "in (0, 1]" in run_cli("calibrate", str(copy), "--view-gate", "1.5", check=False).stderr
    # a gate just under this image's first-view confidence: the served answer is the first view's alone
    first_view = predict_views(classifier.artifact.model, image)
    gate = round(float(first_view.max()) * 0.99, 6)
    record = json.loads(run_cli("calibrate", str(copy), "--view-gate", str(gate)).stdout)
    assert record["view_gate"] == gate and record["views"] == ["identity", "flip_horizontal"] and version_id(copy) != ungated
    gated = Classifier.from_dir(copy)
    assert gated.view_gate == gate
    served = [gated.classify_one(data).probabilities[c] for c in gated.classes]
    assert served == pytest.approx(apply_temperature(first_view, record["temperature"])[0].tolist(), abs=1e-5)
    every_view = apply_temperature(predict_views(gated.artifact.model, image, record["views"]), record["temperature"])
    assert not np.allclose(served, every_view[0], atol=1e-4)
    assert json.loads(run_cli("calibrate", str(copy), "--views", "identity").stdout)["view_gate"] is None  # one view: no gate
    assert json.loads(run_cli("calibrate", str(copy), "--views", "identity,flip_horizontal").stdout)["view_gate"] is None
    assert version_id(copy) == ungated  # the same views, no gate: the same version as before

    from bloodcell_core.ml.artifacts import update_metadata

    for views in (["identity", "flip_horizontal"], ["flip_horizontal"]):  # a broken gate is refused, one view or more
        update_metadata(copy, calibration=record | {"views": views, "view_gate": "high"})
        with pytest.raises(ArtifactError, match="the view gate is a confidence"):
            Classifier.from_dir(copy)
    update_metadata(copy, calibration=record | {"views": ["flip_horizontal"], "view_gate": 0.9})
    assert Classifier.from_dir(copy).classify_one(data).error is None  # one view: the gate means nothing
    record["views"] = ["sideways"]
    update_metadata(copy, calibration=record)
    with pytest.raises(ArtifactError, match="unknown test-time views"):
        Classifier.from_dir(copy)


def test_training_can_start_from_a_model_with_the_same_split(tiny_model: Path, tmp_path: Path):
    import numpy as np

    from bloodcell_core.ml.artifacts import version_id
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    warm = tmp_path / "warm"
    plan = TrainingPlan(
        "compact_cnn",
        KAGGLE5,
        warm,
        epochs=1,
        max_per_class=12,
        init_from=tiny_model,
        learning_rate=1e-5,
        views=("flip_horizontal", "identity"),
        view_gate=0.5,
    )
    metadata = train(plan, progress=False, log=lambda _: None)
    assert metadata.training["initialised_from"] == {"directory": str(tiny_model.resolve()), "version": version_id(tiny_model)}
    assert metadata.calibration["views"] == ["identity", "flip_horizontal"]  # one spelling per set of views
    assert metadata.calibration["view_gate"] == 0.5 and metadata.format_version == 3
    # Adam moves a weight by about the learning rate per step: two steps at 1e-5 stay within 1e-4 of the start,
    # where the seed's fresh weights lie ~1e-3 away (the tiny model's own two steps at 1e-3)
    start, after = load_artifact(tiny_model).model.get_weights(), load_artifact(warm).model.get_weights()
    kernels = [k for k, w in enumerate(start) if w.ndim == 4]
    assert max(float(np.abs(after[k] - start[k]).max()) for k in kernels) < 1e-4
    # Another seed draws another split: starting there from these weights would test on images they trained on
    with pytest.raises(ValueError, match="differs from this run in split "):
        train(
            dataclasses.replace(plan, out_dir=tmp_path / "leaky", seed=1),  # another seed: another split
            progress=False,
            log=lambda _: None,
        )
    result = run_cli(
        "train",
        "--model",
        "resnet_small",
        "--data",
        str(KAGGLE5),
        "--out",
        str(tmp_path / "other"),
        "--max-per-class",
        "12",
        "--epochs",
        "1",
        "--init-from",
        str(tiny_model),
        check=False,
    )
    assert result.returncode != 0 and "differs from this run in plugin " in result.stderr
