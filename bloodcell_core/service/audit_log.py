"""The audit log: who did what to which sample, cell or model version, and when."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.service.results import AuditEventInfo
from bloodcell_core.service.tables import AuditEvent


def record_event(session: Session, actor: str, action: str, subject: str, **details: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action, subject=subject, details=details))


def audit_events(session: Session, *, subject: str | None = None, limit: int = 100) -> list[AuditEventInfo]:
    """The audit log, newest first, optionally for one subject (a sample's accession id, a model version)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    return [
        AuditEventInfo(at=e.at.isoformat(), actor=e.actor, action=e.action, subject=e.subject, details=e.details)
        for e in session.scalars(query)
    ]
