"""The verification dossier's files: JSON of every figure, PNG plots, one self-contained HTML page and a PDF of it.

``write_dossier`` writes them into a folder; the PDF (matplotlib's PdfPages) holds the summary tables as text
pages and the same plots as the HTML, so the two never disagree.
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bloodcell_core.ml.serving import confusion_matrix_figure  # noqa: E402

FILES = ("dossier.json", "dossier.html", "dossier.pdf")


def _fmt(p: dict[str, Any] | None) -> str:
    """A proportion with its interval: '0.912 (0.871-0.941)', or '-' when nothing was measured."""
    if not p or p.get("value") is None:
        return "-"
    return f"{p['value']:.3f} ({p['low']:.3f}-{p['high']:.3f})"


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_rows(scored: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures of one scored model, as (figure, value) text: the HTML, the PDF and the CLI show these."""
    cells, flags = scored["cell_level"], scored["flags"]
    return [
        ("samples / cells", f"{scored['n_samples']} / {cells['n_cells']}"),
        ("cell agreement", _fmt(cells["agreement"])),
        ("coverage (accepted without review)", _fmt(cells["coverage"])),
        ("accuracy of accepted cells", _fmt(cells["accepted_accuracy"])),
        ("blast flag sensitivity", _fmt(flags["blasts"]["sensitivity"])),
        ("blast flag specificity", _fmt(flags["blasts"]["specificity"])),
        ("blast flag PPV / NPV", f"{_fmt(flags['blasts']['ppv'])} / {_fmt(flags['blasts']['npv'])}"),
        ("immature flag sensitivity", _fmt(flags["immature_cells"]["sensitivity"])),
        ("immature flag specificity", _fmt(flags["immature_cells"]["specificity"])),
        ("conclusion", f"{scored['conclusion']}: {scored['conclusion_text']}"),
    ]


def _figures(scored: dict[str, Any]) -> dict[str, Figure]:
    """The plots of one scored model, by name."""
    version = scored["version"][:16]
    cells = scored["cell_level"]
    figures = {
        "confusion": confusion_matrix_figure(
            cells["confusion_matrix"], cells["classes"], f"{version}: model against technologist, cells", "technologist", "model"
        )
    }
    levels = [label for label, row in scored["sample_level"].items() if any(v or m for v, m in row["pairs"])]
    for name in ("regression", "bland_altman"):
        columns = 3
        rows = max(1, -(-len(levels) // columns))
        fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
        for ax, label in zip(axes.flat, levels):
            row = scored["sample_level"][label]
            verified = [v for v, _ in row["pairs"]]
            model = [m for _, m in row["pairs"]]
            if name == "regression":
                top = max(verified + model + [1.0])
                ax.scatter(verified, model, s=14)
                ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
                fit = row["passing_bablok"]
                if fit["slope"] is not None and fit["intercept"] is not None:
                    ax.plot([0, top], [fit["intercept"], fit["intercept"] + fit["slope"] * top], color="C3", lw=1)
                ax.set_xlabel("verified %")
                ax.set_ylabel("model %")
                ax.set_title(f"{label}: slope {_num(fit['slope'])}, intercept {_num(fit['intercept'])}", fontsize=9)
            else:
                ba = row["bland_altman"]
                ax.scatter([(v + m) / 2 for v, m in row["pairs"]], [m - v for v, m in row["pairs"]], s=14)
                for value, style in ((ba["bias"], "-"), (ba["lower_limit"], "--"), (ba["upper_limit"], "--")):
                    if value is not None:
                        ax.axhline(value, color="C3", lw=1, ls=style)
                ax.set_xlabel("mean of model and verified %")
                ax.set_ylabel("model - verified (points)")
                ax.set_title(
                    f"{label}: bias {_num(ba['bias'])}, limits {_num(ba['lower_limit'])} to {_num(ba['upper_limit'])}", fontsize=9
                )
        for ax in list(axes.flat)[len(levels) :]:
            ax.axis("off")
        fig.suptitle(
            f"{version}: {'Passing-Bablok regression' if name == 'regression' else 'Bland-Altman'} per cell type, one point per sample"
        )
        fig.tight_layout()
        figures[name] = fig
    sweep = [row for row in scored["flags"]["sweep"] if row["sensitivity"] is not None and row["specificity"] is not None]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([1 - row["specificity"] for row in sweep], [row["sensitivity"] for row in sweep], marker="o")
    points: dict[tuple[float, float], list[str]] = {}  # counts that land on the same point share one label
    for row in sweep:
        label = f"{row['blast_count']}{'*' if row['in_force'] else ''}"
        points.setdefault((1 - row["specificity"], row["sensitivity"]), []).append(label)
    for i, ((x, y), counts) in enumerate(points.items()):  # labels above and below in turn: neighbours stay readable
        ax.annotate(", ".join(counts), (x, y), textcoords="offset points", xytext=(4, -12 if i % 2 else 6), fontsize=8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("1 - specificity (normal samples flagged)")
    ax.set_ylabel("sensitivity (blast-positive samples flagged)")
    ax.set_title(f"{version}: blast flag at N blast cells (* in force)", fontsize=10)
    fig.tight_layout()
    figures["flag_sweep"] = fig
    return figures


def _text_page(pdf: PdfPages, title: str, lines: list[str]) -> None:
    fig = plt.figure(figsize=(8.27, 11.69))  # A4
    fig.text(0.06, 0.96, title, fontsize=13, weight="bold", va="top")
    wrapped = [part for line in lines for part in (textwrap.wrap(line, 110, subsequent_indent="    ") or [""])]
    fig.text(0.06, 0.92, "\n".join(wrapped[:90]), fontsize=7.5, family="monospace", va="top")
    pdf.savefig(fig)
    plt.close(fig)


def _pdf_lines(dossier: dict[str, Any], scored: dict[str, Any]) -> list[str]:
    provenance = scored["provenance"]
    lines = [f"{name:38} {value}" for name, value in summary_rows(scored)]
    lines += ["", "acceptance criteria:"]
    lines += [
        f"  {row['criterion']:44} required {row['required']:14} observed {row['observed']!s:14} {_met(row['met'])}"
        for row in scored["criteria"]
    ]
    lines += ["", "per cell type (cells): sensitivity, specificity, PPV (95 % Wilson)"]
    for label, row in scored["cell_level"]["per_class"].items():
        lines.append(f"  {label:14} {_fmt(row['sensitivity']):22} {_fmt(row['specificity']):22} {_fmt(row['ppv'])}")
    lines += [
        "",
        "per cell type (samples, percentage points): Passing-Bablok slope [CI], intercept [CI]; Bland-Altman bias [CI], limits",
    ]
    for label, row in scored["sample_level"].items():
        pb, ba = row["passing_bablok"], row["bland_altman"]
        lines.append(
            f"  {label:14} {_num(pb['slope'])} [{_num(pb['slope_low'])}, {_num(pb['slope_high'])}], {_num(pb['intercept'])} "
            f"[{_num(pb['intercept_low'])}, {_num(pb['intercept_high'])}]; {_num(ba['bias'])} [{_num(ba['bias_low'])}, "
            f"{_num(ba['bias_high'])}], {_num(ba['lower_limit'])} to {_num(ba['upper_limit'])}; "
            f"outside: {len(row['outside_allowable'])}"
        )
    lines += [
        "",
        "provenance:",
        f"  model {provenance['version']} ({provenance['plugin']}, {provenance['status']}) sha256 {provenance['sha256']}",
    ]
    lines += [f"  preprocessing {json.dumps(provenance['preprocessing'])}", f"  settings {json.dumps(dossier['settings'])}"]
    lines += [f"  software {json.dumps(dossier['software'])}, made {dossier['created_at']}", f"  command: {dossier['command']}"]
    lines += [
        f"  {s['sample_id']} signed off by {s['signed_off_by']} at {s['signed_off_at']} ({s['n_cells']} cells)"
        for s in dossier["samples"]
    ]
    return lines


def _met(met: bool | None) -> str:
    return "not evaluable" if met is None else "met" if met else "NOT MET"


TEMPLATES = Path(__file__).parent / "templates"


def write_dossier(dossier: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write dossier.json, the plots (``<version>-<plot>.png``), dossier.html and dossier.pdf into OUT_DIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dossier.json").write_text(json.dumps(dossier, indent=2))
    images: dict[str, dict[str, str]] = {}
    with PdfPages(out_dir / "dossier.pdf") as pdf:
        for scored in dossier["models"]:
            _text_page(pdf, f"Verification dossier: {scored['role']} model {scored['version'][:24]}", _pdf_lines(dossier, scored))
            images[scored["version"]] = {}
            for name, fig in _figures(scored).items():
                path = out_dir / f"{scored['version'][:16]}-{name}.png"
                fig.savefig(path, dpi=100)
                pdf.savefig(fig)
                plt.close(fig)
                images[scored["version"]][name] = base64.b64encode(path.read_bytes()).decode()
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    page = environment.get_template("dossier.html").render(
        dossier=dossier,
        models=dossier["models"],
        summaries=[summary_rows(m) for m in dossier["models"]],
        images=images,
        fmt=_fmt,
        num=_num,
        met=_met,
    )
    (out_dir / "dossier.html").write_text(page)
    return {name: out_dir / name for name in FILES}
