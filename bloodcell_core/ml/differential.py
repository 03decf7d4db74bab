"""The differential judged per sample, as a laboratory judges it: the flag rule, synthetic samples and their statistics.

One module for every sample-level figure: the service's reports flag samples with ``sample_flags``; the
generalisation table composes seeded synthetic samples out of labelled cells the model has classified
(``compose_samples``) and summarises them (``summarise_samples``: share of samples flagged, predicted against true
blast and immature percentages); ``threshold_sweep`` says what a stricter or looser flag rule would cost in
flagged normal samples and missed leukaemic ones; local verification (service/verification.py) adds proportions with
Wilson intervals, sensitivity / specificity / PPV / NPV, Passing-Bablok regression and Bland-Altman agreement.
Nothing here reads images or runs a model: it counts calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from bloodcell_core.config import Settings

BLASTS = "blasts"
IMMATURE_CELLS = "immature_cells"
UNFAMILIAR_IMAGES = "unfamiliar_images"

# A normal adult differential of 100 leukocytes (the other laboratory's normal samples were composed so).
NORMAL_DIFFERENTIAL = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}
BLAST_PERCENTS = (2, 5, 10, 20, 50)


@dataclass(frozen=True)
class FlagRule:
    """When a sample is flagged. Defaults are the service's (``BLOODCELL_BLAST_COUNT`` and friends)."""

    blast_class: str = "myeloblast"
    blast_count: int = 5  # blast flag at this many blast cells ...
    blast_percent: float = 20.0  # ... or this percent of the leukocytes
    immature_classes: tuple[str, ...] = ("ig", "myeloblast")
    immature_percent: float = 5.0  # immature flag above this percent of the leukocytes
    non_leukocyte_classes: tuple[str, ...] = ("erythroblast", "platelet")
    unfamiliar_share: float = 0.1  # unfamiliar flag above this share of the classified cells

    @classmethod
    def from_settings(cls, settings: Settings) -> FlagRule:
        return cls(
            blast_class=settings.blast_class,
            blast_count=settings.blast_count,
            blast_percent=settings.blast_percent,
            immature_classes=settings.immature_classes,
            immature_percent=settings.immature_percent,
            non_leukocyte_classes=settings.non_leukocyte_classes,
            unfamiliar_share=settings.unfamiliar_share,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def differential_percent(counts: dict[str, int], non_leukocyte_classes: Iterable[str]) -> tuple[dict[str, float], int]:
    """(percent per class, leukocytes counted): per 100 leukocytes, as a laboratory reports a differential.

    Nucleated red cells and platelets do not count towards the 100; their figure is per 100 leukocytes too.
    A sample without any leukocyte has no differential: every figure is 0.
    """
    excluded = set(non_leukocyte_classes)
    leukocytes = sum(k for label, k in counts.items() if label not in excluded)
    return {label: round(100.0 * k / leukocytes, 2) if leukocytes else 0.0 for label, k in counts.items()}, leukocytes


def sample_flags(rule: FlagRule, counts: dict[str, int], n: int, n_unfamiliar: int) -> list[str]:
    """The flags of one sample with these class ``counts`` of ``n`` classified cells, ``n_unfamiliar`` of which
    are unlike the training images: blasts (count or percent), immature cells, unfamiliar images."""
    if not n:
        return []
    percent, _ = differential_percent(counts, rule.non_leukocyte_classes)
    flags: list[str] = []
    if counts.get(rule.blast_class, 0) >= rule.blast_count or percent.get(rule.blast_class, 0.0) >= rule.blast_percent:
        flags.append(BLASTS)
    if sum(percent.get(label, 0.0) for label in rule.immature_classes) > rule.immature_percent:
        flags.append(IMMATURE_CELLS)
    if n_unfamiliar / n > rule.unfamiliar_share:
        flags.append(UNFAMILIAR_IMAGES)
    return flags


@dataclass(frozen=True)
class CellCall:
    """One classified cell: its true class, the model's class, and whether it was unlike the training images."""

    true: str
    predicted: str
    unfamiliar: bool = False


@dataclass(frozen=True)
class SyntheticSample:
    """Cells drawn to a known differential; ``kind`` is ``normal`` or ``leukaemic``, ``blast_percent`` the intended share."""

    kind: str
    blast_percent: float
    cells: tuple[CellCall, ...]

    def counts(self, which: str) -> dict[str, int]:
        """Class counts by the ``true`` class or the ``predicted`` one."""
        found: dict[str, int] = {}
        for cell in self.cells:
            label = cell.true if which == "true" else cell.predicted
            found[label] = found.get(label, 0) + 1
        return found


def leukaemic_composition(blast_percent: float, blast_class: str, total: int = 100) -> dict[str, int]:
    """A normal differential of ``total`` cells with ``blast_percent`` of them replaced by blasts (largest remainder)."""
    blasts = round(total * blast_percent / 100.0)
    rest = total - blasts
    exact = {label: k * rest / sum(NORMAL_DIFFERENTIAL.values()) for label, k in NORMAL_DIFFERENTIAL.items()}
    composition = {label: int(v) for label, v in exact.items()}
    for label in sorted(exact, key=lambda c: exact[c] - composition[c], reverse=True)[: rest - sum(composition.values())]:
        composition[label] += 1
    return {label: k for label, k in composition.items() if k} | {blast_class: blasts}


def compose_samples(
    pool: Mapping[str, Sequence[CellCall]],
    composition: dict[str, int],
    n_samples: int,
    *,
    kind: str,
    blast_class: str = "myeloblast",
    seed: int = 0,
) -> list[SyntheticSample]:
    """``n_samples`` samples of ``composition`` (class -> cells) drawn from ``pool`` (true class -> classified cells).

    Cells are drawn without replacement within a sample where the pool holds enough, else with replacement
    (a small pool, such as BCCD's test split, repeats cells across and within samples: say so beside the figures).
    Classes the pool lacks are drawn as the composition's largest class instead, so every sample keeps its size.
    Seeded: the same pool, composition and seed give the same samples.
    """
    rng = np.random.default_rng(seed)
    available = {label: k for label, k in composition.items() if pool.get(label)}
    if not available:
        raise ValueError(f"the pool holds none of the classes {sorted(composition)}")
    filler = max(available, key=lambda label: available[label])
    wanted = dict(available)
    wanted[filler] += sum(k for label, k in composition.items() if label not in available)
    blast_percent = 100.0 * wanted.get(blast_class, 0) / sum(wanted.values())
    samples = []
    for _ in range(n_samples):
        cells: list[CellCall] = []
        for label, k in wanted.items():
            candidates = pool[label]
            picks = rng.choice(len(candidates), size=k, replace=k > len(candidates))
            cells += [candidates[i] for i in picks]
        samples.append(SyntheticSample(kind, blast_percent, tuple(cells)))
    return samples


def percent_agreement(predicted: list[float], true: list[float]) -> dict[str, float | None]:
    """Pearson r (None where either side is constant), mean bias (predicted - true) and mean absolute error, in points."""
    p, t = np.asarray(predicted, float), np.asarray(true, float)
    r = float(np.corrcoef(p, t)[0, 1]) if len(p) > 1 and p.std() > 0 and t.std() > 0 else None
    return {
        "r": None if r is None else round(r, 4),
        "bias": round(float((p - t).mean()), 3) if len(p) else None,
        "mae": round(float(np.abs(p - t).mean()), 3) if len(p) else None,
    }


def summarise_samples(samples: Sequence[SyntheticSample], rule: FlagRule) -> dict[str, Any]:
    """Sample-level figures of a group: the share of samples with any of the blast or immature flags, with each flag
    (and the unfamiliar warning), and predicted against true blast and immature percentages (r, bias, MAE)."""
    flags, percents = [], {"blast": ([], []), "immature": ([], [])}  # type: ignore[var-annotated]
    for sample in samples:
        predicted = sample.counts("predicted")
        n_unfamiliar = sum(cell.unfamiliar for cell in sample.cells)
        flags.append(set(sample_flags(rule, predicted, len(sample.cells), n_unfamiliar)))
        for which, counts in (("predicted", predicted), ("true", sample.counts("true"))):
            percent, _ = differential_percent(counts, rule.non_leukocyte_classes)
            k = 0 if which == "predicted" else 1
            percents["blast"][k].append(percent.get(rule.blast_class, 0.0))
            percents["immature"][k].append(sum(percent.get(label, 0.0) for label in rule.immature_classes))

    def share(test: Any) -> float | None:
        return round(float(np.mean([test(f) for f in flags])), 4) if flags else None

    return {
        "n_samples": len(samples),
        "cells_per_sample": len(samples[0].cells) if samples else 0,
        "flagged_any": share(lambda f: bool(f & {BLASTS, IMMATURE_CELLS})),
        "flagged_blasts": share(lambda f: BLASTS in f),
        "flagged_immature": share(lambda f: IMMATURE_CELLS in f),
        "flagged_unfamiliar": share(lambda f: UNFAMILIAR_IMAGES in f),
        "blast_percent": percent_agreement(*percents["blast"]),
        "immature_percent": percent_agreement(*percents["immature"]),
    }


def threshold_sweep(
    normal: Sequence[SyntheticSample], leukaemic: Sequence[SyntheticSample], rules: Iterable[FlagRule]
) -> list[dict[str, Any]]:
    """For each candidate rule: the share of normal samples it flags (blast or immature; 1 - specificity) and of
    leukaemic samples it flags (any flag, and with blasts: sensitivity), overall and per intended blast percentage."""
    rows = []
    levels = sorted({s.blast_percent for s in leukaemic})
    for rule in rules:
        normal_summary, leukaemic_summary = summarise_samples(normal, rule), summarise_samples(leukaemic, rule)
        found = {level: summarise_samples([s for s in leukaemic if s.blast_percent == level], rule) for level in levels}
        rows.append(
            {
                "rule": rule.to_json(),
                "normal_flagged_any": normal_summary["flagged_any"],
                "normal_flagged_blasts": normal_summary["flagged_blasts"],
                "leukaemic_flagged_any": leukaemic_summary["flagged_any"],
                "leukaemic_flagged_blasts": leukaemic_summary["flagged_blasts"],
                "leukaemic_flagged_blasts_by_percent": {f"{level:g}": summary["flagged_blasts"] for level, summary in found.items()},
            }
        )
    return rows


# --- verification statistics: the figures a laboratory files before it reports (service/verification.py) -------------

Z95 = 1.959963984540054  # two-sided 95 %


def proportion(k: int, n: int) -> dict[str, Any]:
    """k of n with its Wilson score 95 % interval (scipy's), as CLSI and ICSH verification reports give it;
    ``value`` and the bounds are None when n is 0 (nothing to estimate)."""
    from scipy.stats import binomtest

    if not n:
        return {"k": k, "n": n, "value": None, "low": None, "high": None}
    interval = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"k": k, "n": n, "value": round(k / n, 4), "low": round(float(interval.low), 4), "high": round(float(interval.high), 4)}


def binary_agreement(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of a positive call against the reference, each with its Wilson interval."""
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "ppv": proportion(tp, tp + fp),
        "npv": proportion(tn, tn + fn),
    }


def passing_bablok(reference: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Passing-Bablok regression of ``measured`` on ``reference`` (1983): slope and intercept with 95 % intervals.

    Robust and symmetric in both methods' errors, so suited to differential percentages, which are counts with
    many ties. Pairs with equal x and y give no slope, and a slope of exactly -1 is dropped (the method's rule);
    the median is shifted by the number of slopes below -1. None where fewer than 3 samples or no usable pair.
    """
    x, y = np.asarray(reference, float), np.asarray(measured, float)
    n = len(x)
    i, j = np.triu_indices(n, k=1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    usable = ~((dx == 0) & (dy == 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(dx != 0, dy / np.where(dx != 0, dx, 1), np.sign(dy) * np.inf)[usable]
    slopes = np.sort(slopes[slopes != -1])
    if n < 3 or not len(slopes):
        return {
            "n": n,
            "slope": None,
            "slope_low": None,
            "slope_high": None,
            "intercept": None,
            "intercept_low": None,
            "intercept_high": None,
        }
    count, shift = len(slopes), int((slopes < -1).sum())

    def shifted(position: float) -> float:  # 1-based position in the sorted slopes, shifted by K
        return float(slopes[min(max(int(position) + shift, 1), count) - 1])

    slope = shifted((count + 1) // 2) if count % 2 else (shifted(count // 2) + shifted(count // 2 + 1)) / 2
    c = Z95 * np.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    m1 = round((count - c) / 2)
    low, high = shifted(m1), shifted(count - m1 + 1)
    finite = np.isfinite([slope, low, high])

    def intercept(b: float) -> float | None:
        return round(float(np.median(y - b * x)), 4) + 0.0 if np.isfinite(b) else None  # + 0.0: no "-0.0"

    return {
        "n": n,
        "slope": round(slope, 4) + 0.0 if finite[0] else None,
        "slope_low": round(low, 4) + 0.0 if finite[1] else None,
        "slope_high": round(high, 4) + 0.0 if finite[2] else None,
        "intercept": intercept(slope),
        "intercept_low": intercept(high),
        "intercept_high": intercept(low),
    }


def bland_altman(reference: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Bland-Altman of ``measured - reference``: mean bias with its 95 % t interval, and the 95 % limits of
    agreement (bias ± 1.96 SD of the differences). None where fewer than 2 samples."""
    from scipy.stats import t as student_t

    differences = np.asarray(measured, float) - np.asarray(reference, float)
    n = len(differences)
    if n < 2:
        return {"n": n, "bias": None, "bias_low": None, "bias_high": None, "sd": None, "lower_limit": None, "upper_limit": None}
    bias, sd = float(differences.mean()), float(differences.std(ddof=1))
    half = float(student_t.ppf(0.975, n - 1) * sd / np.sqrt(n))
    return {
        "n": n,
        "bias": round(bias, 4),
        "bias_low": round(bias - half, 4),
        "bias_high": round(bias + half, 4),
        "sd": round(sd, 4),
        "lower_limit": round(bias - Z95 * sd, 4),
        "upper_limit": round(bias + Z95 * sd, 4),
    }
