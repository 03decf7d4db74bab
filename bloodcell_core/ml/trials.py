"""The cross-laboratory trial table (`bloodcell trials`): one factor of the recipe varied at a time, at one budget.

Every trial trains the same data (kaggle5 + pbc8 as the 9-class differential, at most PER_CLASS images per class,
the same hash-ordered subset, seed 0) for EPOCHS epochs with stain and acquisition augmentation, and differs from
``today`` (the shipped default's recipe) in one factor only: normalisation, scale, colour, width or objective. Each is then
scored by the generalisation table, per cell and per sample (``generalisation.model_rows``). Trials are resumable:
a trial whose model directory exists is not trained again, and a scored one is not scored again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EPOCHS = 10
PER_CLASS = 500
SEED = 0
RENAMES = {"seg_neutrophil": "neutrophil"}


@dataclass(frozen=True)
class Trial:
    name: str
    factor: str  # what it varies against ``today``
    setting: str  # the factor's value, in words
    model: str
    steps: tuple[str, ...]
    learning_rate: float | None = None  # peak rate where the model's default does not converge in EPOCHS
    source_adversary: float = 0.0  # peak weight of a gradient-reversed source head (``source_adversary`` module)


TRIALS = (
    Trial(
        "today",
        "(reference)",
        "BatchNorm, nucleus-extent crop, per-image Reinhard, compact",
        "compact_cnn",
        ("locate_cell", "reinhard"),
    ),
    Trial("gn", "normalisation", "GroupNorm (8 groups), warm-up 1 epoch, peak lr 2e-3", "compact_cnn_gn", ("locate_cell", "reinhard")),
    Trial(
        "gn_lr5",
        "normalisation",
        "GroupNorm (8 groups), warm-up 1 epoch, peak lr 5e-3",
        "compact_cnn_gn",
        ("locate_cell", "reinhard"),
        learning_rate=5e-3,
    ),
    Trial(
        "gn_ws",
        "normalisation",
        "GroupNorm (8 groups) + weight standardisation, warm-up 1 epoch, peak lr 2e-3",
        "compact_cnn_gn_ws",
        ("locate_cell", "reinhard"),
    ),
    Trial(
        "ws",
        "normalisation",
        "no normalisation layer, weight standardisation, warm-up 1 epoch, peak lr 2e-3",
        "compact_cnn_ws",
        ("locate_cell", "reinhard"),
    ),
    Trial(
        "ln",
        "normalisation",
        "LayerNorm (GroupNorm, 1 group), warm-up 1 epoch, peak lr 2e-3",
        "compact_cnn_ln",
        ("locate_cell", "reinhard"),
    ),
    Trial("ruler", "scale", "red-cell ruler: 3 red-cell diameters", "compact_cnn", ("red_cell_scale", "reinhard")),
    Trial("colour", "colour", "referenced to red cells and background", "compact_cnn", ("red_cell_colour", "locate_cell")),
    Trial("wide", "width", "2x filters (~3 M parameters)", "compact_cnn_wide", ("locate_cell", "reinhard")),
    Trial(
        "mixstyle",
        "objective",
        "MixStyle after the first 3 stages (p 0.5, Beta(0.1, 0.1)): feature style mixed across the batch",
        "compact_cnn_mixstyle",
        ("locate_cell", "reinhard"),
    ),
    Trial(
        "adv",
        "objective",
        "source adversary on neutrophils (Munich / PBC), gradient reversal peak weight 1.0",
        "compact_cnn",
        ("locate_cell", "reinhard"),
        source_adversary=1.0,
    ),
    Trial(
        "adv_03",
        "objective",
        "source adversary on neutrophils (Munich / PBC), gradient reversal peak weight 0.3",
        "compact_cnn",
        ("locate_cell", "reinhard"),
        source_adversary=0.3,
    ),
)


def run_trial(trial: Trial, data_root: Path, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (unless OUT/NAME exists) and score one trial; its rows are kept in OUT/NAME/report/trial.json."""
    from bloodcell_core.ml.generalisation import model_rows
    from bloodcell_core.ml.training import train
    from bloodcell_core.ml.training_plan import TrainingPlan

    model_dir = out / trial.name
    scored = model_dir / "report" / "trial.json"
    if scored.is_file():
        return json.loads(scored.read_text())
    if not (model_dir / "metadata.json").is_file():
        log(f"trial {trial.name}: training {trial.model} with steps {','.join(trial.steps)}")
        plan = TrainingPlan(
            trial.model,
            [data_root / "kaggle5", data_root / "pbc8"],
            model_dir,
            epochs=EPOCHS,
            seed=SEED,
            max_per_class=PER_CLASS,
            learning_rate=trial.learning_rate,
            preprocessing_steps=trial.steps,
            renames=RENAMES,
            acquisition_augmentation=True,
            views=("identity",),
            source_adversary=trial.source_adversary,
        )
        train(plan, log=log)
    result = {"trial": trial.__dict__ | {"steps": list(trial.steps)}, "rows": model_rows(model_dir, data_root, log)}
    scored.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _row(rows: list[dict[str, Any]], name_start: str) -> dict[str, Any]:
    return next((r for r in rows if r["set"].startswith(name_start)), {})


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """One line of the trial table from a trial's generalisation rows."""
    rows = result["rows"]
    same, pbc, munich = _row(rows, "held-out"), _row(rows, "PBC neutrophils"), _row(rows, "Munich neutrophils")
    bccd, bccd_samples = _row(rows, "BCCD test split"), _row(rows, "normal samples, another laboratory")
    normal, leukaemic = _row(rows, "normal samples, same sources"), _row(rows, "leukaemic samples, same sources, all")
    return {
        "trial": result["trial"]["name"],
        "factor": result["trial"]["factor"],
        "setting": result["trial"]["setting"],
        "same_source_accuracy": same.get("accuracy"),
        "same_source_macro_f1": same.get("macro_f1"),
        "pbc_neutrophils": pbc.get("accuracy"),
        "munich_neutrophils": munich.get("accuracy"),
        "source_probe": pbc.get("source_probe_accuracy"),
        "bccd_accuracy": bccd.get("accuracy"),
        "bccd_unfamiliar": bccd.get("unfamiliar_share"),
        "bccd_normal_no_blast_flag": None if not bccd_samples else round(1 - bccd_samples["flagged_blasts"], 4),
        "bccd_normal_no_flag": None if not bccd_samples else round(1 - bccd_samples["flagged_any"], 4),
        "same_normal_flagged": normal.get("flagged_any"),
        "normal_called_blast": same.get("normal_called_blast"),
        "blasts_found": same.get("myeloblast_recall"),
        "leukaemic_blast_flag": leukaemic.get("flagged_blasts"),
        "blast_percent_r": (leukaemic.get("blast_percent") or {}).get("r"),
    }


COLUMNS = (
    ("trial", "trial"),
    ("factor", "factor"),
    ("setting", "setting"),
    ("same_source_accuracy", "same-source accuracy"),
    ("same_source_macro_f1", "macro-F1"),
    ("pbc_neutrophils", "source swap: PBC neutrophils"),
    ("munich_neutrophils", "source swap: Munich neutrophils"),
    ("source_probe", "source probe (0.5 = no source)"),
    ("bccd_accuracy", "BCCD cells"),
    ("bccd_normal_no_blast_flag", "BCCD normal samples without blast flag"),
    ("bccd_normal_no_flag", "BCCD normal samples without any flag"),
    ("same_normal_flagged", "same-source normal samples flagged"),
    ("normal_called_blast", "normal cells called blast"),
    ("blasts_found", "blasts found per cell"),
    ("leukaemic_blast_flag", "leukaemic samples with blast flag"),
    ("blast_percent_r", "blast % r"),
)


def table(summaries: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for s in summaries:
        cells = ["—" if s[key] is None else (f"{s[key]:.3f}" if isinstance(s[key], float) else str(s[key])) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_trials(names: list[str] | None, data_root: Path, out: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume) the named trials, all by default, in TRIALS' order; write OUT/trials.json and OUT/trials.md."""
    known = {t.name: t for t in TRIALS}
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"unknown trial(s) {unknown}; known: {', '.join(known)}")
    chosen = [t for t in TRIALS if not names or t.name in names]
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summary(run_trial(t, data_root, out, log)) for t in chosen]
    (out / "trials.json").write_text(json.dumps(summaries, indent=1) + "\n")
    (out / "trials.md").write_text(table(summaries) + "\n")
    return summaries
