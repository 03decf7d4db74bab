"""The HTTP API: `bloodcell api` (or `uvicorn api.app:create_app --factory --no-proxy-headers`: `bloodcell api`
believes forwarded headers only from BLOODCELL_TRUSTED_PROXIES). OpenAPI docs at /docs (token needed).

Every route but /health and /health/ready needs a bearer token: those under /v1 and /metrics with the
scope named in their summary, the documentation (/docs, /openapi.json) any active token. The two health routes are
open so load balancers can probe them. Routes call bloodcell_core services only. The review console for
people (user accounts and session cookies, not tokens) is mounted under /ui from ``web/``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import schemas
from api.auth import Caller, authenticated, require
from bloodcell_core import __version__
from bloodcell_core.clients.local import Client
from bloodcell_core.config import Settings
from bloodcell_core.plugin_manager import exporters
from bloodcell_core.service import samples, webhooks
from bloodcell_core.service.audit_log import audit_events
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.exports import export_sample
from bloodcell_core.service.http_status import ERROR_STATUS, error_message, image_headers, upload_name
from bloodcell_core.service.ops_metrics import ServiceMetrics
from bloodcell_core.service.results import Report, production_of
from bloodcell_core.service.states import Scope
from bloodcell_core.service.submission import check_accession_id, check_image_limits
from web.console import install_console

SHA256 = re.compile(r"^[0-9a-f]{64}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
SUBMIT_FIELDS = {"accession_id", "images", "image_sha256", "fields"}


def _links(accession_id: str) -> dict[str, str]:
    base = f"/v1/samples/{accession_id}"
    return {
        "report": base,
        "cells": f"{base}/cells",
        "fields": f"{base}/fields",
        "fhir": f"{base}/export/fhir-r4",
        "hl7": f"{base}/export/hl7v2",
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    app = FastAPI(
        title="bloodcell",
        version=__version__,
        description="White-blood-cell classification for laboratory systems: submit a sample's cell images, "
        "read the differential, export FHIR R4 / HL7 v2, review and sign off. Tokens: "
        "`bloodcell tokens create NAME --scope submit --scope read`.",
        # FastAPI would serve these without a token: the routes below serve them behind one
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.client = Client(settings)  # checks the database migration; sends tasks by name

    for error_type, status in ERROR_STATUS:

        def handler(_request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": error_message(exc)}, status_code=status)

        app.add_exception_handler(error_type, handler)

    @app.exception_handler(DataError)
    def invalid_value(_request: Request, exc: DataError) -> JSONResponse:
        # a value the database cannot hold, e.g. a NUL byte in a sample id (PostgreSQL text refuses it): the caller's error
        reason = (str(exc.orig).splitlines() or ["refused by the database"])[0]
        return JSONResponse({"detail": f"invalid value: {reason}"}, status_code=422)

    client: Client = app.state.client
    install_console(app, settings, client)  # the review console for people, under /ui (web/)

    @app.get("/health", response_model=schemas.Health, tags=["health"], summary="Liveness (no token)")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/health/ready",
        responses={200: {"model": schemas.Readiness}, 503: {"model": schemas.Readiness}},
        tags=["health"],
        summary="Readiness: database, Redis and workers (no token)",
    )
    def ready() -> JSONResponse:
        checks = client.readiness()
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    service_metrics = ServiceMetrics(settings)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics, computed from the database and Redis when scraped (scope: metrics)",
        response_class=Response,
        responses={200: {"content": {ServiceMetrics.content_type: {}}}},
    )
    def metrics(_: Caller = Depends(require(Scope.METRICS))) -> Response:
        return Response(service_metrics.render(), media_type=ServiceMetrics.content_type)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema(_: Caller = Depends(authenticated)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(_: Caller = Depends(authenticated)) -> HTMLResponse:
        # The page needs the token too, so a plain browser gets 401: open it through something that adds
        # the Authorization header (curl -o, a proxy, a header extension). The schema is embedded in the
        # page, because the page's own request for /openapi.json would carry no token.
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bloodcell API", swagger_ui_parameters={"spec": app.openapi()})

    @app.post(
        "/v1/samples",
        response_model=schemas.SubmissionReceipt,
        tags=["samples"],
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
        caller: Caller = Depends(require(Scope.SUBMIT)),
        idempotency_key: str | None = Header(None, description="Retries with the same key return the same sample"),
    ) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise HTTPException(411, "a Content-Length header is required")
        if int(length) > settings.max_request_bytes:
            raise HTTPException(
                413, f"request of {int(length):,} bytes exceeds {settings.max_request_bytes:,} (BLOODCELL_MAX_REQUEST_BYTES)"
            )
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send multipart/form-data with accession_id and images (files)")
        if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
            raise HTTPException(422, "Idempotency-Key: 1-255 printable ASCII characters without spaces")
        limit = settings.max_images_per_sample
        try:
            form = await request.form(max_files=limit + 1, max_fields=limit + 10)
        except StarletteHTTPException as exc:  # Starlette's multipart parser: malformed body, or over its part counts
            if "Too many" in str(exc.detail):
                raise HTTPException(
                    413, f"more than {limit} images or fields in one request (BLOODCELL_MAX_IMAGES_PER_SAMPLE)"
                ) from None
            reason = getattr(exc.__context__, "__cause__", None)  # python-multipart's own words, e.g. a header too long
            raise HTTPException(400, f"malformed multipart/form-data body: {reason or exc.detail}") from None
        unknown = sorted(set(form.keys()) - SUBMIT_FIELDS)
        if unknown:
            raise HTTPException(422, f"unknown form fields {unknown}; expected accession_id, images, image_sha256, fields")
        accession = form.getlist("accession_id")
        if len(accession) != 1 or not isinstance(accession[0], str):
            raise HTTPException(422, "exactly one accession_id text field is required" if accession else "missing field accession_id")
        accession_id = accession[0]
        await run_in_threadpool(check_accession_id, accession_id)
        uploads, references, field_uploads = form.getlist("images"), form.getlist("image_sha256"), form.getlist("fields")
        n_parts = len(uploads) + len(references) + len(field_uploads)
        if n_parts > limit:
            raise HTTPException(413, f"{n_parts} images and fields exceed {limit} per sample (BLOODCELL_MAX_IMAGES_PER_SAMPLE)")
        images: list[tuple[str, bytes]] = []
        fields: list[tuple[str, bytes]] = []
        for part, parts, read in (("images", uploads, images), ("fields", field_uploads, fields)):
            for k, upload in enumerate(parts):
                if not isinstance(upload, UploadFile):
                    raise HTTPException(422, f"{part} part {k} is a text field, not a file")
                name = upload_name(upload.filename, k)
                data = await upload.read(settings.max_image_bytes + 1)  # never more than one byte over the limit
                check_image_limits(settings, name, data)
                read.append((name, data))
        stored = []
        for k, reference in enumerate(references):
            if not isinstance(reference, str) or not SHA256.match(reference):
                raise HTTPException(422, f"image_sha256 {k} is not 64 lowercase hex digits")
            stored.append((reference, reference))
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
            "links": _links(submission.accession_id),
        }

    @app.get(
        "/v1/samples/{sample_id}",
        response_model=schemas.SampleReportPublic,
        tags=["samples"],
        summary="Sample status and report (scope: read)",
    )
    def get_sample(sample_id: str, _: Caller = Depends(require(Scope.READ))) -> schemas.SampleReportPublic:
        return schemas.SampleReportPublic(**dict(client.report(sample_id)), links=schemas.SampleLinks(**_links(sample_id)))

    @app.get(
        "/v1/samples/{sample_id}/cells",
        response_model=list[schemas.CellPublic],
        tags=["samples"],
        summary="Per-cell results (scope: read)",
    )
    def get_cells(
        sample_id: str,
        needs_review: bool = Query(False, description="Only cells waiting for review"),
        _: Caller = Depends(require(Scope.READ)),
    ) -> list[dict[str, Any]]:
        return client.cells(sample_id, needs_review)

    @app.get(
        "/v1/samples/{sample_id}/fields",
        response_model=list[schemas.SampleFieldPublic],
        tags=["samples"],
        summary="Whole fields with their cells' boxes and labels (scope: read)",
    )
    def get_fields(sample_id: str, _: Caller = Depends(require(Scope.READ))) -> list[dict[str, Any]]:
        return client.fields(sample_id)

    @app.get(
        "/v1/samples/{sample_id}/fields/{field_sha256}/overlay",
        tags=["samples"],
        summary="A field as PNG with its cells' boxes drawn and labelled (scope: read)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_field_overlay(sample_id: str, field_sha256: str, _: Caller = Depends(require(Scope.READ))) -> Response:
        if not SHA256.match(field_sha256):
            raise HTTPException(422, "not a sha256 (64 lowercase hex digits)")
        # no ETag: the labels drawn change when a technologist relabels a cell
        return Response(client.field_overlay(sample_id, field_sha256), media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/v1/samples/{sample_id}/export/{format_name}",
        tags=["exports"],
        summary="The report as FHIR R4 (fhir-r4), HL7 v2 ORU^R01 (hl7v2) or a plugin's format (scope: read)",
    )
    def export(sample_id: str, format_name: str, _: Caller = Depends(require(Scope.READ))) -> Response:
        with session_scope(settings.database_url) as session:
            media_type, body = export_sample(session, settings=settings, accession_id=sample_id, format_name=format_name)
        return Response(body, media_type=media_type)

    @app.get(
        "/v1/samples/{sample_id}/webhooks",
        response_model=list[schemas.WebhookDeliveryPublic],
        tags=["samples"],
        summary="Webhook deliveries (scope: read)",
    )
    def get_deliveries(sample_id: str, _: Caller = Depends(require(Scope.READ))) -> list[dict[str, Any]]:
        with session_scope(settings.database_url) as session:
            return webhooks.get_deliveries(session, accession_id=sample_id)

    @app.get("/v1/images/{image_sha256}", tags=["samples"], summary="A stored cell image (scope: read)")
    def get_image(image_sha256: str, _: Caller = Depends(require(Scope.READ))) -> Response:
        if not SHA256.match(image_sha256):
            raise HTTPException(422, "not a sha256 (64 lowercase hex digits)")
        with session_scope(settings.database_url) as session:
            data = samples.get_image(session, settings=settings, image_sha256=image_sha256)
        return Response(data, media_type="application/octet-stream", headers=image_headers(image_sha256))

    @app.get(
        "/v1/review",
        response_model=list[schemas.SampleForReviewPublic],
        tags=["review"],
        summary="Samples and cells waiting for review (scope: review)",
    )
    def review_queue(limit: int = Query(100, ge=1, le=1000), _: Caller = Depends(require(Scope.REVIEW))) -> list[dict[str, Any]]:
        return client.review_queue(limit)

    @app.post(
        "/v1/samples/{sample_id}/cells/{image_sha256}/label",
        response_model=schemas.ReportPublic,
        tags=["review"],
        summary="Reclassify a cell; audited, report recomputed (scope: review)",
    )
    def relabel(sample_id: str, image_sha256: str, body: schemas.Relabel, caller: Caller = Depends(require(Scope.REVIEW))) -> Report:
        return client.relabel(sample_id, image_sha256, body.label, body.reviewer, body.reason, f"api:{caller.name}")

    @app.post(
        "/v1/samples/{sample_id}/sign-off",
        response_model=schemas.ReportPublic,
        tags=["review"],
        summary="Sign off for a console user: the report becomes final (amended: a corrected one) (scope: review)",
        description="`reviewer` names the console user the sign-off is made for; their role decides whether they may "
        "sign off a sample with a blast flag (docs/sign-off.md).",
    )
    def sign_off(sample_id: str, body: schemas.SignOffCreate, caller: Caller = Depends(require(Scope.REVIEW))) -> Report:
        return client.sign_off(sample_id, body.reviewer, body.comment, f"api:{caller.name}", body.confirm_incomplete)

    @app.get(
        "/v1/models",
        response_model=schemas.ModelRegistryPublic,
        tags=["models"],
        summary="Model versions and the production one (scope: read)",
    )
    def models(_: Caller = Depends(require(Scope.READ))) -> dict[str, Any]:
        versions = client.models()
        production = production_of(versions)
        return {"production": production.version if production else None, "versions": versions}

    @app.get("/v1/exporters", response_model=list[schemas.Exporter], tags=["exports"], summary="Export formats (scope: read)")
    def list_exporters(_: Caller = Depends(require(Scope.READ))) -> list[dict[str, str]]:
        return [{"name": e.name, "media_type": e.media_type, "description": e.description} for e in exporters().values()]

    @app.get(
        "/v1/audit",
        response_model=list[schemas.AuditEventPublic],
        tags=["admin"],
        summary="The audit log, newest first (scope: admin)",
    )
    def audit_log(
        subject: str | None = None, limit: int = Query(100, ge=1, le=1000), _: Caller = Depends(require(Scope.ADMIN))
    ) -> list[dict[str, Any]]:
        with session_scope(settings.database_url) as session:
            return audit_events(session, subject=subject, limit=limit)

    return app
