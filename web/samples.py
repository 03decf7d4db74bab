"""The worklist and a sample's page, with what the page loads: its state, exports, field overlays, cell images."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from bloodcell_core.edge import ClientDep, FieldSha256, ImageSha256, SettingsDep, image_headers
from bloodcell_core.plugin_manager import exporters
from bloodcell_core.service import signoff
from bloodcell_core.service.results import CellResult
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES, SampleFlag, SampleStatus
from web.deps import LoggedIn
from web.rendering import FILE_HEADERS, page

router = APIRouter()


@router.get("/")
def samples_page(who: LoggedIn, client: ClientDep, status: str = "", flag: str = "") -> Response:
    rows = client.worklist(status or None, flag or None)
    return page("samples.html", who, rows=rows, status=status, flag=flag, statuses=list(SampleStatus), flags=_flag_choices())


@router.get("/samples/rows")
def sample_rows(who: LoggedIn, client: ClientDep, status: str = "", flag: str = "") -> Response:
    """The worklist's rows alone: the page polls this to stay live."""
    return page("_sample_rows.html", who, rows=client.worklist(status or None, flag or None))


@router.get("/samples/{sample_id}")
def sample_page(sample_id: str, who: LoggedIn, settings: SettingsDep, client: ClientDep) -> Response:
    report = client.report(sample_id)
    cells = client.cells(sample_id)
    classes = [] if report.model_version is None else client.model_classes(report.model_version)
    rows = [(label, report.counts.get(label, 0), report.percent.get(label, 0.0)) for label in report.counts]
    apart = set(report.non_leukocyte_classes or [])  # nucleated red cells and platelets: not among the 100
    return page(
        "sample.html",
        who,
        settings=settings,
        report=report,
        to_review=[cell for cell in cells if cell.needs_review],  # shown first: they are what the technologist is here for
        gallery=_gallery(cells, classes),
        classes=classes,
        rows=[row for row in rows if row[0] not in apart],
        other_rows=[row for row in rows if row[0] in apart],
        most=max([count for _, count, _ in rows], default=0) or 1,
        fields=client.fields(sample_id),
        exporters=sorted(exporters()),
        final=report.status in FINAL_SAMPLE_STATUSES,
        may_sign_off=signoff.may_sign_off(settings, who.role, report.blast_flag),
        to_confirm=signoff.confirmations_needed(settings, report) if report.model_version else [],
    )


def _gallery(cells: list[CellResult], classes: list[str]) -> list[tuple[str, list[CellResult]]]:
    """The cells that need no review grouped by label (or status), in the model's class order, others after."""
    gallery: dict[str, list[CellResult]] = {}
    for cell in cells:
        if not cell.needs_review:
            gallery.setdefault(cell.label or cell.status, []).append(cell)
    order = [label for label in classes if label in gallery] + sorted(set(gallery) - set(classes))
    return [(label, gallery[label]) for label in order]


@router.get("/samples/{sample_id}/state")
def sample_state(sample_id: str, _: LoggedIn, client: ClientDep) -> dict[str, Any]:
    report = client.report(sample_id)
    return {"status": report.status, "n_cells": report.n_cells, "n_classified": report.n_classified}


@router.get("/samples/{sample_id}/export/{format_name}")
def export(sample_id: str, format_name: str, _: LoggedIn, client: ClientDep) -> Response:
    media_type, body = client.export_document(sample_id, format_name)
    disposition = {"Content-Disposition": f'inline; filename="{sample_id}.{format_name}"'}
    return Response(body, media_type=media_type, headers={**FILE_HEADERS, **disposition})


@router.get("/samples/{sample_id}/fields/{field_sha256}/overlay")
def overlay(sample_id: str, _: LoggedIn, field_sha256: FieldSha256, client: ClientDep) -> Response:
    return Response(client.field_overlay(sample_id, field_sha256), media_type="image/png", headers=FILE_HEADERS)


@router.get("/images/{image_sha256}")
def image(request: Request, _: LoggedIn, image_sha256: ImageSha256, client: ClientDep) -> Response:
    """A cell image by its sha256 (content-addressed: kept a day, immutable); a revalidation answers 304."""
    headers = image_headers(image_sha256)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    data = client.image(image_sha256)
    return Response(data, media_type=_media_type(data), headers=headers)


def sample_url(sample_id: str, anchor: str = "") -> str:
    return f"/ui/samples/{quote(sample_id)}{anchor}"


def _flag_choices() -> list[tuple[str, str]]:
    return [("needs_review", "cells to review")] + [(str(flag), str(flag).replace("_", " ")) for flag in SampleFlag]


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"
