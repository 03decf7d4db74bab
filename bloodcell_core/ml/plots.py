"""PNG figures for model reports: confusion matrix, training curves, reliability, coverage, augmentation preview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_png(metrics: dict[str, Any], path: Path, title: str) -> None:
    title = f"{title}\naccuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, n={metrics['n']}"
    fig = confusion_matrix_figure(metrics["confusion_matrix"], metrics["classes"], title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrix_figure(
    counts: list[list[int]], classes: list[str], title: str, true_label: str = "true", predicted_label: str = "predicted"
) -> Figure:
    """Counts with each row shaded by its share (rows: the true class, columns: the predicted one)."""
    matrix = np.array(counts)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.1 * len(classes) + 2))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel(predicted_label)
    ax.set_ylabel(true_label)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves_png(history: dict[str, list[float]], path: Path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    loss_ax.plot(epochs, history["loss"], label="train")
    loss_ax.plot(epochs, history["val_loss"], label="validation")
    loss_ax.set_title("loss")
    acc_ax.plot(epochs, history["accuracy"], label="train")
    acc_ax.plot(epochs, history["val_accuracy"], label="validation")
    if "source_accuracy" in history:  # a source adversary's head: near chance when the features hide the source
        acc_ax.plot(epochs, history["source_accuracy"], label="source head (train)", linestyle=":")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_png(metrics: dict[str, Any], path: Path, title: str) -> None:
    bins = [b for b in metrics["reliability"] if b["count"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=[b["high"] - b["low"] for b in bins],
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot(
        [b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3", label="accuracy at the bin's mean confidence"
    )
    for b in bins:
        ax.text((b["low"] + b["high"]) / 2, b["accuracy"] + 0.02, f"n={b['count']}", ha="center", fontsize=7)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {metrics['ece']:.4f}")
    ax.legend(loc="center left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def coverage_png(curve: list[dict[str, float]], calibration: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy of the accepted cells against the share accepted, as the confidence threshold rises."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], color="C0", label="test cells")
    test = calibration["test"]
    ax.axhline(calibration["target_accuracy"], ls="--", color="grey", label=f"target {calibration['target_accuracy']}")
    if test["accepted_accuracy"] is not None:
        ax.plot(
            [test["coverage"]],
            [test["accepted_accuracy"]],
            "o",
            color="C3",
            label=f"review threshold {calibration['review_threshold']:.4f} (chosen on validation)",
        )
    ax.set_xlabel("share of cells accepted without review (coverage)")
    ax.set_ylabel("accuracy of the accepted cells")
    ax.set_ylim(max(0.0, min(p["accuracy"] for p in curve) - 0.01), 1.001)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{title}\ncoverage {test['coverage']:.1%} at accuracy {test['accepted_accuracy']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid_png(rows: list[list[np.ndarray]], row_labels: list[str], path: Path, title: str) -> None:
    """Rows of RGB uint8 images, e.g. an original and its augmentations."""
    n_cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
        axes[r][0].set_title(row_labels[r], fontsize=8, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def learning_curve_png(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy (and accuracy of the accepted cells) against the number of a laboratory's cells fine-tuned on."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [p["lab_cells"] for p in points]
    ax.plot(x, [p["accuracy"] for p in points], "o-", label="accuracy")
    ax.plot(x, [p["coverage"] for p in points], "s--", label="share accepted without review")
    ax.set_xscale("symlog", linthresh=25)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("laboratory cells fine-tuned on")
    ax.set_ylabel("share of the laboratory's test cells")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
