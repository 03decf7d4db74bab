"""Bearer-token authentication with scopes: 401 without a valid token, 403 without the route's scope.

Every route but /health and /health/ready depends on one of these (tests/integration/test_api.py walks them all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bloodcell_core.service.api_clients import authenticate
from bloodcell_core.service.db import session_scope

bearer = HTTPBearer(auto_error=False, description="A token from `bloodcell tokens create`")


@dataclass(frozen=True)
class Caller:
    client_id: int
    name: str
    scopes: tuple[str, ...]


def authenticated(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """A dependency that admits any active token, whatever its scopes (the API documentation)."""
    if credentials is None:
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"})
    with session_scope(request.app.state.settings.database_url) as session:
        client = authenticate(session, credentials.credentials)
        if client is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return Caller(client.id, client.name, tuple(client.scopes))


def require(scope: str) -> Callable[..., Caller]:
    """A dependency that admits only tokens holding ``scope``."""

    def check(caller: Caller = Depends(authenticated)) -> Caller:
        if scope not in caller.scopes:
            raise HTTPException(403, f"token of {caller.name!r} lacks the {str(scope)!r} scope")
        return caller

    return check
