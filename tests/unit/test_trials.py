"""The trial table's plan and layout (bloodcell_core/ml/trials.py); the trials themselves are real training runs."""

from __future__ import annotations

from helpers import run_cli

from bloodcell_core.ml.trials import COLUMNS, TRIALS, summary, table
from bloodcell_core.plugin_manager import get_model_spec, get_preprocessing_step


def test_every_trial_names_installed_plugins_and_varies_one_factor_of_today():
    today = TRIALS[0]
    assert today.name == "today"
    for trial in TRIALS:
        get_model_spec(trial.model)
        for step in trial.steps:
            get_preprocessing_step(step)
        changed = (
            (trial.model != today.model) + (set(trial.steps) != set(today.steps)) + (trial.source_adversary != today.source_adversary)
        )
        assert changed == (0 if trial is today else 1), trial.name


def test_a_trials_line_reads_its_generalisation_rows():
    rows = [
        {"set": "held-out test split", "accuracy": 0.9, "macro_f1": 0.88, "normal_called_blast": 0.01, "myeloblast_recall": 0.95},
        {"set": "PBC neutrophils (pbc8/neutrophil)", "accuracy": 0.8, "source_probe_accuracy": 0.7},
        {"set": "Munich neutrophils (kaggle5/seg_neutrophil)", "accuracy": 0.85},
        {"set": "BCCD test split, white cells by box", "accuracy": 0.6, "unfamiliar_share": 0.2},
        {"set": "normal samples, same sources (test split)", "flagged_any": 0.1},
        {
            "set": "normal samples, another laboratory (BCCD test split, drawn with replacement)",
            "flagged_blasts": 0.25,
            "flagged_any": 0.5,
        },
        {"set": "leukaemic samples, same sources, all blast levels", "flagged_blasts": 0.8, "blast_percent": {"r": 0.97}},
    ]
    line = summary({"trial": {"name": "gn", "factor": "normalisation", "setting": "GroupNorm"}, "rows": rows})
    assert line["bccd_normal_no_blast_flag"] == 0.75 and line["bccd_normal_no_flag"] == 0.5
    assert line["source_probe"] == 0.7 and line["blast_percent_r"] == 0.97 and line["blasts_found"] == 0.95
    assert table([line]).splitlines()[2].startswith("| gn | normalisation | GroupNorm | 0.900 | 0.880 | 0.800 | 0.850 | 0.700 |")
    assert len(table([line]).splitlines()[0].split(" | ")) == len(COLUMNS)


def test_an_unknown_trial_is_refused_by_name():
    result = run_cli("trials", "nope", check=False)
    known = "today, gn, gn_lr5, gn_ws, ws, ln, ruler, colour, wide"
    assert result.returncode == 1 and f"unknown trial(s) ['nope']; known: {known}" in result.stderr
