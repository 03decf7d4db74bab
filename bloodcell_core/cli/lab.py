"""The laboratory's workflow: submit samples, read their reports, fields and cells, export them for the LIMS,
review and sign off, and the local verification dossier. With BLOODCELL_API_URL set, the sample commands go
through the HTTP API."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path

import click

from bloodcell_core.cli import context
from bloodcell_core.cli.group import BloodcellGroup, fail
from bloodcell_core.cli.options import EXISTING_FILE, json_option, out_option, overlays_option
from bloodcell_core.service.results import Report
from bloodcell_core.service.states import FieldStatus


@click.command()
@click.option("--sample-id", required=True, help="The LIMS accession id of the sample.")
@click.option("--wait", is_flag=True, help="Wait for the report.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait with --wait.")
@json_option()
@click.option(
    "--fields",
    "as_fields",
    is_flag=True,
    help="PATHS are whole smear fields: the worker finds their white cells and classifies each one.",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def submit(sample_id: str, wait: bool, timeout: float, as_json: bool, as_fields: bool, paths: tuple[Path, ...]) -> None:
    """Submit cell images (files or folders of images) as one sample to the classification queue;
    with --fields, whole smear fields instead (`bloodcell submit --sample-id S1 --fields FIELD_OR_DIR...`).

    Submitting the same sample id and images again is harmless: nothing is duplicated; new images
    or fields under a known sample id are added to it. With BLOODCELL_API_URL and
    BLOODCELL_API_TOKEN set, this goes through the HTTP API.
    """
    from tqdm import tqdm

    from bloodcell_core.clients.files import collect_images

    files = collect_images(list(paths))
    if not files:
        fail("no image files found in the given paths")
    client = context.client(http=True)
    images = [(str(f), f.read_bytes()) for f in tqdm(files, desc="reading", unit="img", disable=as_json or not sys.stderr.isatty())]
    if as_fields:
        submission = client.submit(sample_id, [], actor=context.actor(), fields=images)
    else:
        submission = client.submit(sample_id, images, actor=context.actor())
    if wait:
        _print_report(client.wait(sample_id, timeout=timeout), as_json)
        return
    message = {
        "sample_id": sample_id,
        "status": submission.status,
        "new_cells": submission.new_cells,
        "new_fields": submission.new_fields,
    }
    what = f"{submission.new_fields} new field(s)" if as_fields else f"{submission.new_cells} new cell image(s)"
    click.echo(json.dumps(message) if as_json else f"sample {sample_id}: {what}, status {submission.status}")


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    click.echo(f"sample {report.sample_id}: {report.status}, report {report.report_status} (model {report.model_version})")
    if report.error:
        click.echo(f"  error: {report.error}")
    apart = report.non_leukocyte_classes or []  # nucleated red cells and platelets: not among the 100 leukocytes
    for label, count in report.counts.items():
        if label not in apart:
            click.echo(f"  {label:<16}{count:>6}{report.percent[label]:>8.1f} %")
    for label in apart:
        click.echo(f"  {label:<16}{report.counts[label]:>6}{report.percent[label]:>8.1f} per 100 leukocytes (not in the differential)")
    if report.signed_off_by:
        comment = f": {report.sign_off_comment}" if report.sign_off_comment else ""
        click.echo(f"  signed off by {report.signed_off_by} ({report.signed_off_role}) at {report.signed_off_at}{comment}")
    elif report.awaiting_sign_off_again:
        click.echo("  changed after its sign-off: waits for a new sign-off (the earlier one is in the history)")
    if report.counts:
        flag = "BLAST FLAG" if report.blast_flag else "no blast flag"
        click.echo(f"  {flag}: {report.blast_count} blasts, {report.blast_percent or 0.0:.1f} %")
        click.echo(
            f"  {len(report.needs_review)} cell(s) for review (below confidence {report.review_threshold}"
            f" or unlike the training images: {report.n_unfamiliar or 0})"
        )
        for warning in report.warnings:
            click.echo(f"  WARNING: {warning}")
        for note, n in report.preprocessing_notes.items():
            click.echo(f"  note: {note} for {n} of {report.n_classified} cells (preprocessing fell back)")
    for item in report.failed:
        click.echo(f"  FAILED {item.name}: {item.error}")
    for field in report.fields:
        found = f"{field.n_cells} white cell(s)" if field.status == FieldStatus.LOCATED else field.status
        click.echo(f"  field {field.name}: {found}" + (f" ({field.error})" if field.error else ""))


@click.command()
@click.argument("sample_id")
@json_option()
def report(sample_id: str, as_json: bool) -> None:
    """Show a sample's status and report (through the HTTP API when BLOODCELL_API_URL is set)."""
    _print_report(context.client(http=True).report(sample_id), as_json)


@click.command("fields")
@click.argument("sample_id")
@overlays_option
@json_option()
def fields_command(sample_id: str, overlays_dir: Path | None, as_json: bool) -> None:
    """The whole fields of a sample: each field's cells with their boxes and labels (through the HTTP
    API when BLOODCELL_API_URL is set)."""
    client = context.client(http=True)
    found = client.fields(sample_id)
    if overlays_dir is not None:
        overlays_dir.mkdir(parents=True, exist_ok=True)
        for field in found:
            if field.status == FieldStatus.LOCATED:
                png = client.field_overlay(sample_id, field.image_sha256)
                (overlays_dir / f"{field.image_sha256[:16]}_overlay.png").write_bytes(png)
    if as_json:
        click.echo(json.dumps([field.model_dump(mode="json") for field in found], indent=2))
        return
    for field in found:
        click.echo(f"{field.name}\t{field.status}\t{field.image_sha256}" + (f"\t{field.error}" if field.error else ""))
        for cell in field.cells:
            box = cell.box
            label = f"{cell.label} {cell.confidence:.3f}" if cell.confidence is not None else (cell.label or cell.status)
            click.echo(f"  x={box.x} y={box.y} width={box.width} height={box.height}\t{label}")


@click.command()
@click.argument("sample_id")
@click.option("--needs-review", is_flag=True, help="Only cells waiting for a technologist.")
@json_option()
def cells(sample_id: str, needs_review: bool, as_json: bool) -> None:
    """Per-cell results of a sample: model label and confidence, reviewed label, the label that counts."""
    rows = context.client(http=True).cells(sample_id, needs_review)
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    for row in rows:
        confidence = "" if row.confidence is None else f"{row.confidence:.3f}"
        mark = (
            f" REVIEW: {', '.join(row.review_reasons)}"
            if row.needs_review
            else (f" (reviewed: {row.reviewed_label})" if row.reviewed_label else "")
        )
        click.echo(f"{row.image_sha256[:12]}  {row.label or row.error or row.status:<16}{confidence:>7}  {row.name}{mark}")


@click.command("export")
@click.argument("sample_id")
@click.option(
    "--format",
    "format_name",
    default="fhir-r4",
    show_default=True,
    help="An exporter (`bloodcell plugins` lists them): fhir-r4, hl7v2, ...",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file, not stdout.")
def export_command(sample_id: str, format_name: str, output: Path | None) -> None:
    """Export a sample's report for the LIMS (FHIR R4 Bundle, HL7 v2 ORU^R01, or a plugin's format)."""
    document = context.client(http=True).export(sample_id, format_name)
    if output is None:
        click.echo(document)
    else:
        output.write_text(document)


@click.group(cls=BloodcellGroup)
def review() -> None:
    """Technologist review: list cells to check, relabel a cell, sign off a sample (audited)."""


@review.command("list")
@json_option()
def review_list(as_json: bool) -> None:
    """Samples waiting for review, with their low-confidence cells."""
    queue = context.client(http=True).review_queue()
    if as_json:
        click.echo(json.dumps([item.model_dump(mode="json") for item in queue], indent=2))
        return
    for item in queue:
        click.echo(f"sample {item.sample_id}: {len(item.cells)} cell(s) to review, {len(item.failed)} failed")
        for cell in item.cells:
            click.echo(f"  {cell.image_sha256}  {cell.model_label:<16}{cell.confidence:.3f}  {cell.name}")


@review.command("label")
@click.argument("sample_id")
@click.argument("image_sha256")
@click.argument("label")
@click.option("--reviewer", required=True, help="Who makes the change (goes into the audit log).")
@click.option("--reason", required=True, help="Why (goes into the audit log).")
def review_label(sample_id: str, image_sha256: str, label: str, reviewer: str, reason: str) -> None:
    """Set LABEL for the cell IMAGE_SHA256 of SAMPLE_ID; the report is recomputed."""
    report = context.client(http=True).relabel(sample_id, image_sha256, label, reviewer, reason, actor=context.actor())
    _print_report(report, as_json=False)


@review.command("sign-off")
@click.argument("sample_id")
@click.option("--reviewer", required=True, help="The console user who releases the report (their role is checked).")
@click.option("--comment", default="", help="Shown on the sample page and in the FHIR and HL7 exports.")
@click.option("--confirm-incomplete", is_flag=True, help="Sign off although images failed or few leukocytes were classified.")
def review_sign_off(sample_id: str, reviewer: str, comment: str, confirm_incomplete: bool) -> None:
    """Release the report: final, or amended for a report corrected after an earlier sign-off (docs/sign-off.md)."""
    report = context.client(http=True).sign_off(sample_id, reviewer, comment, context.actor(), confirm_incomplete)
    _print_report(report, as_json=False)


@click.command("verify")
@click.option("--model", help="A candidate version to score beside production on the same samples (default: production only).")
@click.option("--from", "day_from", metavar="DATE", help="Only samples signed off on or after DATE (YYYY-MM-DD).")
@click.option("--to", "day_to", metavar="DATE", help="Only samples signed off on or before DATE (YYYY-MM-DD).")
@click.option("--samples", "samples_file", type=EXISTING_FILE, help="Only these samples: a file of accession ids, one a line.")
@click.option(
    "--criteria",
    type=EXISTING_FILE,
    help="The laboratory's acceptance criteria, JSON or YAML (docs/verification.md; default: the built-in ones).",
)
@click.option("--classify", is_flag=True, help="First classify the verified cells --model has not classified yet (loads it).")
@out_option("Folder for the dossier.")
def verify_command(
    model: str | None,
    day_from: str | None,
    day_to: str | None,
    samples_file: Path | None,
    criteria: Path | None,
    classify: bool,
    out_dir: Path,
) -> None:
    """The local verification dossier: the production model (and --model beside it) against the technologists'
    final labels on signed-off samples, per cell, per sample and per flag, held against the acceptance criteria.
    Writes dossier.json, dossier.html, dossier.pdf and the plots into --out (docs/verification.md)."""
    from bloodcell_core.service import verification
    from bloodcell_core.service.verification_report import summary_rows
    from bloodcell_core.service.versions import load_classifier

    settings = context.settings()
    accession_ids = None
    if samples_file is not None:
        accession_ids = [line.strip() for line in samples_file.read_text().splitlines() if line.strip()]
    dossier = verification.make_dossier(
        settings,
        out_dir,
        context.actor(),
        model=model,
        day_from=verification.parse_day(day_from, "--from") if day_from else None,
        day_to=verification.parse_day(day_to, "--to") if day_to else None,
        accession_ids=accession_ids,
        criteria=verification.read_criteria(criteria),
        classify=classify,
        classifier_for=functools.cache(lambda version: load_classifier(settings, version)),
        command=shlex.join(["bloodcell", "verify", *sys.argv[2:]]),
    )
    for scored in dossier["models"]:
        click.echo(f"{scored['role']} {scored['version']}")
        for name, value in summary_rows(scored):
            click.echo(f"  {name:38} {value}")
    click.echo(f"dossier: {out_dir / 'dossier.html'} (and dossier.pdf, dossier.json)")


COMMANDS: list[click.Command] = [submit, report, fields_command, cells, export_command, review, verify_command]
