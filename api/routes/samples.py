"""Samples: submit one (multipart), read its report, cells, whole fields (and their overlay) and webhook deliveries."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from api import schemas
from api.deps import Reader, Submitter
from bloodcell_core.config import Settings
from bloodcell_core.edge import SHA256, ClientDep, FieldSha256, SettingsDep, read_files, read_form
from bloodcell_core.service.results import CellResult, SampleFieldInfo, WebhookDeliveryInfo
from bloodcell_core.service.submission import check_accession_id

router = APIRouter(tags=["samples"])

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
SUBMIT_FIELDS = {"accession_id", "images", "image_sha256", "fields"}


def links(accession_id: str) -> dict[str, str]:
    base = f"/v1/samples/{accession_id}"
    return {
        "report": base,
        "cells": f"{base}/cells",
        "fields": f"{base}/fields",
        "fhir": f"{base}/export/fhir-r4",
        "hl7": f"{base}/export/hl7v2",
    }


@router.post(
    "/v1/samples",
    response_model=schemas.SubmissionReceipt,
    status_code=202,
    summary="Submit a sample (scope: submit)",
    description="multipart/form-data: `accession_id` (the LIMS accession id), `images` (one file part per "
    "cell image), `image_sha256` (images already stored) and/or `fields` (one file part per whole smear "
    "field: the worker finds its white cells and classifies each). Returns 202 when cells or fields were "
    "queued, 200 when the same sample and images (or the same Idempotency-Key) came before.",
    responses={
        200: {"description": "Nothing new: the existing sample", "model": schemas.SubmissionReceipt},
        409: {"description": "Conflict"},
        411: {"description": "Length required"},
        413: {"description": "Over a limit"},
        415: {"description": "Not multipart"},
        422: {"description": "Invalid fields"},
    },
)
async def submit(
    request: Request,
    response: Response,
    caller: Submitter,
    settings: SettingsDep,
    client: ClientDep,
    idempotency_key: str | None = Header(None, description="Retries with the same key return the same sample"),
) -> dict[str, Any]:
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise HTTPException(422, "Idempotency-Key: 1-255 printable ASCII characters without spaces")
    form = await read_form(request, settings, max_fields=settings.max_images_per_sample + 10)
    accession_id = _accession_id(form)
    await run_in_threadpool(check_accession_id, accession_id)
    _check_parts(form, settings)
    images = await read_files(form.getlist("images"), settings, "images")
    fields = await read_files(form.getlist("fields"), settings, "fields")
    stored = _stored_references(form)
    if not images and not stored and not fields:
        raise HTTPException(422, "a sample needs at least one image (images, image_sha256 or fields)")
    submission = await run_in_threadpool(
        client.submit, accession_id, images, f"api:{caller.name}", stored, caller.client_id, idempotency_key, fields
    )
    if not submission.new_cells and not submission.new_fields:
        response.status_code = 200
    return {
        "sample_id": submission.accession_id,
        "status": submission.status,
        "new_cells": submission.new_cells,
        "n_cells": submission.n_cells,
        "replayed": submission.replayed,
        "new_fields": submission.new_fields,
        "n_fields": submission.n_fields,
        "links": links(submission.accession_id),
    }


def _accession_id(form: FormData) -> str:
    unknown = sorted(set(form.keys()) - SUBMIT_FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown form fields {unknown}; expected accession_id, images, image_sha256, fields")
    accession = form.getlist("accession_id")
    if len(accession) != 1 or not isinstance(accession[0], str):
        raise HTTPException(422, "exactly one accession_id text field is required" if accession else "missing field accession_id")
    return accession[0]


def _check_parts(form: FormData, settings: Settings) -> None:
    limit = settings.max_images_per_sample
    n_parts = sum(len(form.getlist(part)) for part in ("images", "image_sha256", "fields"))
    if n_parts > limit:
        raise HTTPException(413, f"{n_parts} images and fields exceed {limit} per sample (BLOODCELL_MAX_IMAGES_PER_SAMPLE)")


def _stored_references(form: FormData) -> list[tuple[str, str]]:
    """(name, sha256) of the images already stored that the sample names; the sha256 is its name."""
    stored = []
    for k, reference in enumerate(form.getlist("image_sha256")):
        if not isinstance(reference, str) or not SHA256.match(reference):
            raise HTTPException(422, f"image_sha256 {k} is not 64 lowercase hex digits")
        stored.append((reference, reference))
    return stored


@router.get("/v1/samples/{sample_id}", response_model=schemas.SampleReportPublic, summary="Sample status and report (scope: read)")
def get_sample(sample_id: str, _: Reader, client: ClientDep) -> schemas.SampleReportPublic:
    return schemas.SampleReportPublic(**dict(client.report(sample_id)), links=schemas.SampleLinks(**links(sample_id)))


@router.get("/v1/samples/{sample_id}/cells", response_model=list[schemas.CellPublic], summary="Per-cell results (scope: read)")
def get_cells(
    sample_id: str,
    _: Reader,
    client: ClientDep,
    needs_review: bool = Query(False, description="Only cells waiting for review"),
) -> list[CellResult]:
    return client.cells(sample_id, needs_review)


@router.get(
    "/v1/samples/{sample_id}/fields",
    response_model=list[schemas.SampleFieldPublic],
    summary="Whole fields with their cells' boxes and labels (scope: read)",
)
def get_fields(sample_id: str, _: Reader, client: ClientDep) -> list[SampleFieldInfo]:
    return client.fields(sample_id)


@router.get(
    "/v1/samples/{sample_id}/fields/{field_sha256}/overlay",
    summary="A field as PNG with its cells' boxes drawn and labelled (scope: read)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_field_overlay(sample_id: str, _: Reader, field_sha256: FieldSha256, client: ClientDep) -> Response:
    # no ETag: the labels drawn change when a technologist relabels a cell
    return Response(client.field_overlay(sample_id, field_sha256), media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get(
    "/v1/samples/{sample_id}/webhooks", response_model=list[schemas.WebhookDeliveryPublic], summary="Webhook deliveries (scope: read)"
)
def get_deliveries(sample_id: str, _: Reader, client: ClientDep) -> list[WebhookDeliveryInfo]:
    return client.deliveries(sample_id)
