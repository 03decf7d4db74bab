"""The audit log, newest first: every human change under a person's or a token's name."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api import schemas
from api.deps import Admin
from bloodcell_core.edge import ClientDep
from bloodcell_core.service.results import AuditEventInfo

router = APIRouter(tags=["admin"])


@router.get("/v1/audit", response_model=list[schemas.AuditEventPublic], summary="The audit log, newest first (scope: admin)")
def audit_log(_: Admin, client: ClientDep, subject: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[AuditEventInfo]:
    return client.audit(subject, limit)
