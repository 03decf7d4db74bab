"""The registry of model versions (classifiers) and which one is in production."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import schemas
from api.deps import Reader
from bloodcell_core.edge import ClientDep
from bloodcell_core.service.results import production_of

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=schemas.ModelRegistryPublic, summary="Model versions and the production one (scope: read)")
def models(_: Reader, client: ClientDep) -> dict[str, Any]:
    versions = client.models()
    production = production_of(versions)
    return {"production": production.version if production else None, "versions": versions}
