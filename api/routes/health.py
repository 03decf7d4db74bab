"""Liveness and readiness, open without a token so that load balancers can probe them."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import schemas
from bloodcell_core import __version__
from bloodcell_core.edge import ClientDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=schemas.Health, summary="Liveness (no token)")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/health/ready",
    responses={200: {"model": schemas.Readiness}, 503: {"model": schemas.Readiness}},
    summary="Readiness: database, Redis and workers (no token)",
)
def ready(client: ClientDep) -> JSONResponse:
    checks = client.readiness()
    return JSONResponse(checks, status_code=200 if checks["ready"] else 503)
