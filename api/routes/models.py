"""The registry of model versions (classifiers) and which one is in production."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import schemas
from api.deps import Reader
from bloodcell_core.edge import ClientDep
from bloodcell_core.service.states import ModelStatus

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=schemas.ModelRegistry, summary="Model versions and the production one (scope: read)")
def models(_: Reader, client: ClientDep) -> dict[str, Any]:
    versions = client.models()
    production = next((v["version"] for v in versions if v["status"] == ModelStatus.PRODUCTION), None)
    return {"production": production, "versions": versions}
