"""Morphology-free reference classifiers: how much of the accuracy needs no look at the cell?

Each one sees something other than the cell's shape: the image size (which source it came from), the
background colour in the corners (the stain and scanner), or whole-image colour statistics. They are
trained and tested on the same split as the models, so their accuracy is directly comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from bloodcell_core.ml.artifacts import ModelMetadata
from bloodcell_core.ml.dataset import index_dataset
from bloodcell_core.ml.metrics import classification_metrics
from bloodcell_core.ml.preprocessing import PreprocessingConfig, Preprocessor
from bloodcell_core.ml.splits import load_split_images, make_split

HISTOGRAM_BINS = 16
SERVING_STEPS = ("center_crop",)  # the shipped models' preprocessing


def colour_features(images: np.ndarray) -> np.ndarray:
    """Per image: RGB channel means, standard deviations and 16-bin histograms (54 numbers, no shape)."""
    flat = images.reshape(len(images), -1, 3).astype(np.float32)
    histograms = [
        np.stack([np.histogram(image[:, c], bins=HISTOGRAM_BINS, range=(0, 256))[0] for c in range(3)]).ravel() for image in flat
    ]
    pixels = flat.shape[1]
    return np.hstack([flat.mean(axis=1), flat.std(axis=1), np.array(histograms, dtype=np.float32) / pixels])


def _score(
    classifier, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    classifier.fit(train_x, train_y)
    probabilities = np.zeros((len(test_y), len(classes)))
    probabilities[:, classifier.classes_] = classifier.predict_proba(test_x)
    metrics = classification_metrics(test_y, probabilities, classes)
    return {"n": metrics["n"], "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4)}


def colour_only_baseline(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
) -> dict[str, Any]:
    """Logistic regression on whole-image colour statistics, trained and tested on the model's split."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    scores = _score(classifier, colour_features(train_images), train_labels, colour_features(test_images), test_labels, classes)
    return {
        "features": "RGB means, standard deviations and 16-bin histograms of the preprocessed image",
        "classifier": "logistic regression",
        **scores,
    }


def shortcut_audit(
    data_dir: Path | str,
    seed: int = 0,
    model_metadata: ModelMetadata | None = None,
    steps: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Morphology-free classifiers on the training split of ``seed``, scored on its test split.

    ``steps`` are the preprocessing steps of the served image (e.g. with colour normalisation). With a
    model's metadata, its split fractions, input size and steps (unless ``steps`` is given) are used, and
    its test accuracy is set beside the shortcuts when it was trained on the same split.
    """

    index = index_dataset(data_dir, progress=progress)
    fractions, input_size = (0.7, 0.15, 0.15), (128, 128)
    if model_metadata is not None:
        fractions = tuple(model_metadata.split["fractions"])
        input_size = (model_metadata.input_shape[0], model_metadata.input_shape[1])
        steps = steps if steps is not None else tuple(model_metadata.preprocessing["steps"])
    steps = steps if steps is not None else SERVING_STEPS
    split = make_split(index, seed=seed, fractions=fractions)
    classes = sorted({item.label for items in split.parts.values() for item in items})
    entry = {e.sha256: e for e in index.valid}
    preprocessor = Preprocessor(PreprocessingConfig(input_size=input_size, steps=steps))
    features: dict[str, dict[str, np.ndarray]] = {}
    labels = {}
    for part in ("train", "test"):
        items = split.parts[part]
        entries = [entry[item.sha256] for item in items]
        labels[part] = np.array([classes.index(item.label) for item in items])
        served = load_split_images(index.root, items, preprocessor, f"preprocessing {part}", progress)
        features[part] = {
            "image_size": np.array([[e.height, e.width] for e in entries], dtype=np.float32),
            "corner_colour": np.array([e.background_rgb for e in entries], dtype=np.float32),
            "whole_image_colour": colour_features(served),
            "image_size_after_preprocessing": np.array([image.shape[:2] for image in served], dtype=np.float32),
        }
    described = {
        "image_size": ("height and width of the file", "decision tree"),
        "corner_colour": ("mean RGB of the four 16-pixel corners (background: stain, scanner)", "decision tree"),
        "whole_image_colour": ("RGB means, deviations and histograms of the served image", "logistic regression"),
        "image_size_after_preprocessing": ("height and width of what the model sees (center crop, resize)", "decision tree"),
    }
    results = {}
    for name, (what, kind) in described.items():
        classifier = (
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
            if kind == "logistic regression"
            else DecisionTreeClassifier(max_depth=8, min_samples_leaf=5, random_state=0)
        )
        results[name] = {
            "features": what,
            "classifier": kind,
            **_score(classifier, features["train"][name], labels["train"], features["test"][name], labels["test"], classes),
        }
    results["image_size_after_preprocessing"]["distinct_sizes"] = len(
        {tuple(size) for size in features["train"]["image_size_after_preprocessing"].tolist()}
    )
    chance = float(np.bincount(labels["test"]).max() / len(labels["test"]))
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "seed": seed,
        "steps": list(steps),
        "classes": classes,
        "fingerprint": index.fingerprint(),
        "n_test": int(len(labels["test"])),
        "chance_accuracy": round(chance, 4),
        "classifiers": results,
        "model": None,
    }
    if model_metadata is not None:
        same_split = model_metadata.dataset_fingerprint == report["fingerprint"] and model_metadata.split["seed"] == seed
        accuracy = model_metadata.metrics["test"]["accuracy"]
        best = max(r["accuracy"] for r in results.values())
        report["model"] = {
            "plugin": model_metadata.plugin,
            "test_accuracy": round(accuracy, 4),
            "same_split": same_split,
            "best_shortcut_accuracy": best,
            "share_of_accuracy_without_morphology": round(best / accuracy, 4),
            "errors": {"best_shortcut": round((1 - best) * report["n_test"]), "model": round((1 - accuracy) * report["n_test"])},
        }
    return report


def format_shortcuts(report: dict[str, Any]) -> str:
    lines = [
        f"{report['data_dir']}: {len(report['classes'])} classes, test split of seed {report['seed']} "
        f"(n={report['n_test']}), chance {report['chance_accuracy']:.4f}; served image: {', '.join(report['steps'])}, "
        "then the resize",
        "",
    ]
    lines.append(f"{'classifier':<34}{'accuracy':>10}{'macro-F1':>10}  features")
    for name, row in report["classifiers"].items():
        lines.append(f"{name:<34}{row['accuracy']:>10.4f}{row['macro_f1']:>10.4f}  {row['features']}")
    model = report["model"]
    if model is not None:
        note = "" if model["same_split"] else "  (trained on another split or data: not comparable)"
        lines.append(f"{'model ' + model['plugin']:<34}{model['test_accuracy']:>10.4f}{'':>10}  the cell itself{note}")
        lines += [
            "",
            f"the best morphology-free classifier reaches {model['share_of_accuracy_without_morphology']:.1%} of "
            f"the model's accuracy; the model makes {model['errors']['model']} errors where it makes "
            f"{model['errors']['best_shortcut']}",
        ]
    size_after = report["classifiers"]["image_size_after_preprocessing"]
    lines.append(
        f"after the serving preprocessing every image is one size ({size_after['distinct_sizes']} distinct): "
        f"the size cue is gone (accuracy {size_after['accuracy']:.4f}, chance {report['chance_accuracy']:.4f})"
    )
    return "\n".join(lines)
