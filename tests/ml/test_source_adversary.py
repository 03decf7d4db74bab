"""The source adversary: a gradient reversal, the head's targets, and a training run that uses them."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from helpers import KAGGLE5, PBC8

from bloodcell_core.ml.artifacts import load_artifact
from bloodcell_core.ml.source_adversary import AdversaryRamp, GradientReversal, source_targets
from bloodcell_core.ml.splits import SplitItem


def test_the_reversal_passes_values_unchanged_and_gradients_reversed():
    reversal = GradientReversal()
    reversal.weight.assign(0.5)
    scale = tf.Variable(np.ones((1, 8), np.float32))
    x = tf.constant(np.random.default_rng(0).random((4, 8), np.float32))
    with tf.GradientTape() as tape:
        y = reversal(x * scale)
        total = tf.reduce_sum(y)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6)
    np.testing.assert_allclose(tape.gradient(total, scale).numpy(), -0.5 * x.numpy().sum(axis=0, keepdims=True), rtol=1e-5)


def test_the_weight_ramps_from_zero_to_its_peak():
    reversal = GradientReversal()
    ramp = AdversaryRamp(reversal, peak=2.0, epochs=5)
    weights = []
    for epoch in range(5):
        ramp.on_epoch_begin(epoch)
        weights.append(float(keras.ops.convert_to_numpy(reversal.weight)))
    assert weights[0] == 0.0 and weights == sorted(weights) and 1.98 < weights[-1] <= 2.0


def test_the_head_judges_only_classes_that_come_from_two_folders():
    items = [
        SplitItem("a", "neutrophil", ("kaggle5/seg_neutrophil/a.jpg",)),
        SplitItem("b", "neutrophil", ("pbc8/neutrophil/b.jpg",)),
        SplitItem("c", "myeloblast", ("kaggle5/myeloblast/c.jpg",)),  # one source: its source is its class
        SplitItem("d", "basophil", ("kaggle5/basophil/d.jpg", "pbc8/basophil/d.jpg")),  # one file in two folders
    ]
    targets = source_targets(items)
    assert targets.folders == ["kaggle5", "pbc8"] and targets.judged_classes == ["neutrophil"]
    assert targets.onehot[:2].argmax(axis=1).tolist() == [0, 1]
    assert targets.weights.tolist() == [2.0, 2.0, 0.0, 0.0]  # the judged half weighs like a whole batch


def test_training_with_a_source_adversary_serves_the_classifier_alone(tmp_path: Path):
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    plan = TrainingPlan(
        "compact_cnn",
        [KAGGLE5, PBC8],
        tmp_path / "adv",
        epochs=2,
        max_per_class=8,
        renames={"seg_neutrophil": "neutrophil"},
        source_adversary=1.0,
    )
    metadata = train(plan, progress=False, log=lambda _: None)
    record = metadata.training["source_adversary"]
    assert record["judged_classes"] == ["neutrophil"] and record["folders"] == ["kaggle5", "pbc8"]
    assert record["judged_cells"] > 0 and metadata.training["epochs_run"] == 2
    model = load_artifact(tmp_path / "adv").model
    assert model.output_shape == (None, len(metadata.classes))  # no source head in what is served
    assert not any("source" in layer.name or "reversal" in layer.name for layer in model.layers)
