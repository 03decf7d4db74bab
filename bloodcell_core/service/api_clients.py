"""API clients and their tokens: created and revoked with `bloodcell tokens`, checked by the HTTP API.

A token is 256 random bits shown once; the database keeps only its sha256. A slow password hash is
not needed for a random secret of that length: nobody can guess a preimage, so a plain digest and
an indexed lookup suffice.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.states import Scope
from bloodcell_core.service.tables import ApiClient

TOKEN_PREFIX = "bct_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class NewClient:
    name: str
    token: str  # shown once
    scopes: list[str]
    webhook_url: str | None
    webhook_secret: str | None  # shown once; the receiver verifies signatures with it


def create_client(session: Session, *, name: str, scopes: list[str], webhook_url: str | None, actor: str) -> NewClient:
    if not NAME_PATTERN.match(name):
        raise ServiceError(f"invalid client name {name!r}: letters, digits and . _ - (up to 128)")
    unknown = sorted(set(scopes) - set(Scope))
    if unknown or not scopes:
        raise ServiceError(f"scopes must be some of {', '.join(Scope)}; got {', '.join(scopes) or 'none'}")
    if webhook_url is not None and urlparse(webhook_url).scheme not in ("http", "https"):
        raise ServiceError(f"webhook URL must be http(s): {webhook_url!r}")
    if session.scalar(select(ApiClient).where(ApiClient.name == name)) is not None:
        raise Conflict(f"an API client named {name!r} exists already (revoke it or pick another name)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    secret = secrets.token_hex(32) if webhook_url else None
    scopes = sorted(set(scopes), key=[scope.value for scope in Scope].index)
    session.add(
        ApiClient(
            name=name,
            token_sha256=token_sha256(token),
            token_prefix=token[:10],
            scopes=scopes,
            webhook_url=webhook_url,
            webhook_secret=secret,
        )
    )
    record_event(session, actor, "client.created", name, scopes=scopes, webhook_url=webhook_url)
    return NewClient(name, token, scopes, webhook_url, secret)


def revoke_client(session: Session, *, name: str, actor: str) -> None:
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise NotFound(f"no API client named {name!r}")
    if client.revoked_at is None:
        client.revoked_at = datetime.now(timezone.utc)
        record_event(session, actor, "client.revoked", name)


def list_clients(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "scopes": c.scopes,
            "token_prefix": c.token_prefix,
            "webhook_url": c.webhook_url,
            "created_at": c.created_at.isoformat(),
            "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
        }
        for c in session.scalars(select(ApiClient).order_by(ApiClient.id))
    ]


def authenticate(session: Session, token: str) -> ApiClient | None:
    """The active client holding this token, or None."""
    client = session.scalar(select(ApiClient).where(ApiClient.token_sha256 == token_sha256(token)))
    if client is None or client.revoked_at is not None:
        return None
    return client
