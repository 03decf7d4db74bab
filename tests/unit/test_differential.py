"""The sample-level statistics (bloodcell_core/ml/differential.py) on generated calls: no model, no images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bloodcell_core.ml.differential import (
    BLAST_PERCENTS,
    NORMAL_DIFFERENTIAL,
    CellCall,
    FlagRule,
    binary_agreement,
    bland_altman,
    compose_samples,
    leukaemic_composition,
    passing_bablok,
    proportion,
    summarise_samples,
    threshold_sweep,
)

CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "myeloblast")


def perfect_pool(per_class: int = 40) -> dict[str, list[CellCall]]:
    return {label: [CellCall(label, label) for _ in range(per_class)] for label in CLASSES}


def test_leukaemic_compositions_hold_100_cells_with_the_asked_share_of_blasts():
    for percent in BLAST_PERCENTS:
        composition = leukaemic_composition(percent, "myeloblast")
        assert sum(composition.values()) == 100
        assert composition["myeloblast"] == percent
    assert leukaemic_composition(0, "myeloblast") == NORMAL_DIFFERENTIAL | {"myeloblast": 0}


def test_samples_are_seeded_and_keep_their_composition():
    # cells told apart by their unfamiliar mark, so that two draws can differ
    pool = {label: [CellCall(label, label, unfamiliar=k % 3 == 0) for k in range(40)] for label in CLASSES}
    first = compose_samples(pool, NORMAL_DIFFERENTIAL, 5, kind="normal", seed=3)
    assert first == compose_samples(pool, NORMAL_DIFFERENTIAL, 5, kind="normal", seed=3)
    assert first != compose_samples(pool, NORMAL_DIFFERENTIAL, 5, kind="normal", seed=4)
    for sample in first:
        assert sample.counts("true") == NORMAL_DIFFERENTIAL
        assert sample.blast_percent == 0


def test_classes_the_pool_lacks_are_drawn_as_the_largest_class_and_small_pools_repeat_cells():
    pool = {"neutrophil": [CellCall("neutrophil", "neutrophil", unfamiliar=k < 2) for k in range(10)],
            "lymphocyte": [CellCall("lymphocyte", "lymphocyte")]}  # fmt: skip
    (sample,) = compose_samples(pool, NORMAL_DIFFERENTIAL, 1, kind="normal")
    assert sample.counts("true") == {"neutrophil": 70, "lymphocyte": 30}  # monocytes, eosinophils, basophil -> neutrophils
    with pytest.raises(ValueError, match="none of the classes"):
        compose_samples({"platelet": pool["neutrophil"]}, NORMAL_DIFFERENTIAL, 1, kind="normal")


def test_a_perfect_classifier_flags_no_normal_sample_and_tracks_every_blast_percentage():
    pool, rule = perfect_pool(), FlagRule()
    normal = compose_samples(pool, NORMAL_DIFFERENTIAL, 20, kind="normal")
    summary = summarise_samples(normal, rule)
    assert summary["flagged_any"] == summary["flagged_blasts"] == summary["flagged_immature"] == 0.0
    assert summary["blast_percent"] == {"r": None, "bias": 0.0, "mae": 0.0}  # true blasts are all 0: no correlation
    leukaemic = [s for k, p in enumerate(BLAST_PERCENTS)
                 for s in compose_samples(pool, leukaemic_composition(p, "myeloblast"), 4, kind="leukaemic", seed=k)]  # fmt: skip
    summary = summarise_samples(leukaemic, rule)
    assert summary["blast_percent"]["r"] == 1.0 and summary["blast_percent"]["bias"] == 0.0
    # 2 blasts in 100 cells reach neither the count (5) nor the percentage (20): 4 of the 5 levels are flagged
    assert summary["flagged_blasts"] == 0.8
    assert summary["cells_per_sample"] == 100


def test_flags_and_agreement_follow_the_calls_not_the_truth():
    """A classifier that calls 1 in 10 lymphocytes a blast: 3 false blasts per normal sample (under the count of 5),
    3 % immature (under 5 %); with 20 % of lymphocytes wrong, 6 blasts: both flags on every normal sample."""
    rule = FlagRule()
    for wrong, flagged in ((3, 0.0), (6, 1.0)):
        lymphocytes = [CellCall("lymphocyte", "myeloblast" if k < wrong else "lymphocyte") for k in range(30)]
        pool = perfect_pool() | {"lymphocyte": lymphocytes}
        summary = summarise_samples(compose_samples(pool, NORMAL_DIFFERENTIAL, 10, kind="normal"), rule)
        assert summary["flagged_blasts"] == summary["flagged_any"] == flagged
        assert summary["blast_percent"]["bias"] == wrong


def test_agreement_is_pearsons_r_with_the_mean_bias():
    rng = np.random.default_rng(0)
    pool = perfect_pool()
    pool["myeloblast"] = [CellCall("myeloblast", "myeloblast" if rng.random() < 0.7 else "lymphocyte") for _ in range(60)]
    samples = [s for k, p in enumerate(BLAST_PERCENTS)
               for s in compose_samples(pool, leukaemic_composition(p, "myeloblast"), 6, kind="leukaemic", seed=k)]  # fmt: skip
    predicted = [s.counts("predicted").get("myeloblast", 0) for s in samples]
    true = [s.counts("true")["myeloblast"] for s in samples]
    summary = summarise_samples(samples, FlagRule())["blast_percent"]
    assert summary["r"] == pytest.approx(stats.pearsonr(predicted, true)[0], abs=1e-4)
    assert summary["bias"] == pytest.approx(np.mean(np.subtract(predicted, true)), abs=1e-3)
    assert summary["bias"] < 0  # 30 % of blasts called lymphocytes: the blast percentage runs low


def test_a_stricter_blast_rule_flags_fewer_samples_of_both_kinds():
    rng = np.random.default_rng(1)
    pool = perfect_pool()
    pool["lymphocyte"] = [CellCall("lymphocyte", "myeloblast" if rng.random() < 0.1 else "lymphocyte") for _ in range(80)]
    normal = compose_samples(pool, NORMAL_DIFFERENTIAL, 30, kind="normal")
    leukaemic = [s for k, p in enumerate(BLAST_PERCENTS)
                 for s in compose_samples(pool, leukaemic_composition(p, "myeloblast"), 10, kind="leukaemic", seed=k)]  # fmt: skip
    rows = threshold_sweep(normal, leukaemic, [FlagRule(blast_count=c) for c in (2, 5, 10, 20)])
    normal_flagged = [r["normal_flagged_blasts"] for r in rows]
    found = [r["leukaemic_flagged_blasts"] for r in rows]
    assert normal_flagged == sorted(normal_flagged, reverse=True) and normal_flagged[0] > normal_flagged[-1]
    assert found == sorted(found, reverse=True)
    assert rows[-1]["leukaemic_flagged_blasts_by_percent"]["50"] == 1.0  # 50 blasts pass any count rule
    assert rows[-1]["rule"]["blast_count"] == 20


def test_the_generalisation_table_composes_its_per_sample_rows_from_each_sets_calls():
    from bloodcell_core.ml.generalisation import OTHER_LABORATORY, SAME_SOURCE, sample_groups, sample_rows

    nine = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "myeloblast", "neutrophil", "platelet"]
    same = [CellCall(label, label) for label in nine for _ in range(20)]
    bccd = [
        CellCall(label, "lymphocyte" if label == "neutrophil" else label) for label in ("neutrophil", "lymphocyte") for _ in range(9)
    ]
    rows = sample_rows(sample_groups({SAME_SOURCE: same, OTHER_LABORATORY: bccd}, nine))
    assert [r["set"] for r in rows] == [
        "normal samples, same sources (test split)",
        "normal samples, another laboratory (BCCD test split, drawn with replacement)",
        *[f"leukaemic samples, same sources, {p} % blasts" for p in BLAST_PERCENTS],
        "leukaemic samples, same sources, all blast levels",
    ]
    same_normal, bccd_normal, *_, all_levels = rows
    assert same_normal["flagged_any"] == 0.0 and same_normal["n_samples"] == 50 and same_normal["level"] == "sample"
    assert bccd_normal["immature_percent"]["bias"] == 0.0  # every BCCD neutrophil called a lymphocyte: no flag for it
    assert all_levels["n_samples"] == 50 * len(BLAST_PERCENTS) and all_levels["blast_percent"]["r"] == 1.0
    # the kaggle5 model has no lymphocyte: it cannot count a normal differential
    assert sample_groups({SAME_SOURCE: same}, ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil"]) == []


def test_the_threshold_sweep_rows_trade_normal_samples_flagged_against_leukaemic_ones_found():
    from bloodcell_core.ml.generalisation import OTHER_LABORATORY, SAME_SOURCE, candidate_rules, sample_groups, threshold_rows

    nine = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "myeloblast", "neutrophil", "platelet"]
    same = [CellCall(label, label) for label in nine for _ in range(20)]
    # the other laboratory's lymphocytes: one in ten called a blast, one in five an immature granulocyte
    bccd = [CellCall("neutrophil", "neutrophil") for _ in range(10)]
    bccd += [CellCall("lymphocyte", ("myeloblast", "ig", "ig", "lymphocyte", "lymphocyte", *["lymphocyte"] * 5)[k]) for k in range(10)]
    groups = sample_groups({SAME_SOURCE: same, OTHER_LABORATORY: bccd}, nine)
    rules = candidate_rules()
    rows = threshold_rows(groups, rules)
    assert len(rows) == len(rules) and {(r["blast_count"], r["immature_percent"]) for r in rows} == {
        (rule.blast_count, rule.immature_percent) for rule in rules
    }
    by_rule = {(r["blast_count"], r["immature_percent"]): r for r in rows}
    # about 3 of 100 cells called blast at the other laboratory: a 2-blast rule flags most of its normals, a 10-blast rule none
    assert by_rule[(2, 30.0)]["other_normal_flagged_blasts"] > 0.5 and by_rule[(10, 30.0)]["other_normal_flagged_blasts"] == 0.0
    # same sources are called right: never a normal sample flagged; every 10 % leukaemic sample found from 10 blasts down
    assert all(r["same_normal_flagged_any"] == 0.0 for r in rows)
    assert by_rule[(10, 30.0)]["leukaemic_flagged_blasts_by_percent"]["10"] == 1.0
    assert by_rule[(15, 30.0)]["leukaemic_flagged_blasts_by_percent"]["10"] == 0.0
    assert by_rule[(5, 5.0)]["leukaemic_flagged_any"] >= by_rule[(5, 5.0)]["leukaemic_flagged_blasts"]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval from its textbook formula (Newcombe 1998, method 3)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (45, 50), (50, 50), (1, 1), (172, 200)])
def test_proportion_is_the_wilson_interval(k, n):
    found = proportion(k, n)
    low, high = wilson(k, n)
    assert (found["k"], found["n"], found["value"]) == (k, n, round(k / n, 4))
    assert found["low"] == pytest.approx(low, abs=1e-4) and found["high"] == pytest.approx(high, abs=1e-4)
    assert proportion(0, 0) == {"k": 0, "n": 0, "value": None, "low": None, "high": None}


def test_binary_agreement_counts_each_cell_of_the_two_by_two_table():
    found = binary_agreement(tp=18, fp=4, fn=2, tn=76)
    assert (found["sensitivity"]["k"], found["sensitivity"]["n"]) == (18, 20)
    assert (found["specificity"]["k"], found["specificity"]["n"]) == (76, 80)
    assert (found["ppv"]["k"], found["ppv"]["n"]) == (18, 22)
    assert (found["npv"]["k"], found["npv"]["n"]) == (76, 78)


def test_passing_bablok_on_an_exact_line_and_against_theil_sen_where_they_coincide():
    x = np.array([0, 1, 2, 3, 5, 8, 10, 20, 30, 40.0])
    exact = passing_bablok(x, 2 * x + 1)
    assert (exact["slope"], exact["slope_low"], exact["slope_high"], exact["intercept"]) == (2.0, 2.0, 2.0, 1.0)
    # increasing x and y, no ties: no slope is <= -1 or undefined, so Passing-Bablok's slope is Theil-Sen's median
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 60, 25))
    y = np.sort(1.08 * x + 1.5 + rng.normal(0, 1.5, 25))
    fit = passing_bablok(x, y)
    assert fit["slope"] == pytest.approx(stats.theilslopes(y, x).slope, abs=1e-4)
    slopes = np.sort([(y[j] - y[i]) / (x[j] - x[i]) for i in range(25) for j in range(i + 1, 25)])
    c = 1.959963984540054 * np.sqrt(25 * 24 * 55 / 18)
    m1 = round((len(slopes) - c) / 2)
    assert fit["slope_low"] == pytest.approx(slopes[m1 - 1], abs=1e-4)
    assert fit["slope_high"] == pytest.approx(slopes[len(slopes) - m1], abs=1e-4)
    assert fit["intercept"] == pytest.approx(np.median(y - fit["slope"] * x), abs=1e-3)
    assert fit["intercept_low"] == pytest.approx(np.median(y - slopes[len(slopes) - m1] * x), abs=1e-4)
    assert fit["intercept_high"] == pytest.approx(np.median(y - slopes[m1 - 1] * x), abs=1e-4)
    assert passing_bablok([1.0, 2.0], [1.0, 2.0])["slope"] is None  # too few samples to say


def test_passing_bablok_shifts_the_median_by_the_slopes_below_minus_one():
    x, y = [0.0, 1.0, 2.0, 3.0], [0.0, 3.0, 0.5, 4.0]  # sorted slopes -2.5, 0.25, 0.5, 1.33, 3, 3.5: one below -1
    assert passing_bablok(x, y)["slope"] == round((4 / 3 + 3) / 2, 4)  # unshifted, the median would be (0.5 + 1.33) / 2


def test_bland_altman_against_numpy_and_scipy():
    rng = np.random.default_rng(5)
    reference = rng.uniform(0, 70, 40)
    measured = reference + 1.2 + rng.normal(0, 2.0, 40)
    found = bland_altman(reference, measured)
    d = measured - reference
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert found["bias"] == pytest.approx(d.mean(), abs=1e-4)
    assert (found["bias_low"], found["bias_high"]) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
    assert found["lower_limit"] == pytest.approx(d.mean() - 1.96 * d.std(ddof=1), abs=2e-3)
    assert found["upper_limit"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1), abs=2e-3)
    assert bland_altman([1.0], [2.0])["bias"] is None
