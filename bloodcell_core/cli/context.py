"""What the service's commands read: the settings, who acts, and a client (in process or over HTTP).
Their errors (invalid settings, an unmigrated database) reach the user through the group's error rule."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from bloodcell_core.cli.group import fail
from bloodcell_core.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def settings() -> Settings:
    """BLOODCELL_* settings, validated."""
    found = Settings.from_env()
    found.validate()
    return found


def migrated_settings() -> Settings:
    """The settings of a database at the latest schema (else DatabaseNotMigrated says what to run)."""
    from bloodcell_core.service.db import require_migrated

    found = settings()
    require_migrated(found.database_url)
    return found


def transaction() -> AbstractContextManager[Session]:
    """One transaction on the migrated database: the session a service call takes first."""
    from bloodcell_core.service.db import session_scope

    return session_scope(migrated_settings().database_url)


def actor() -> str:
    """Who runs the command, as the audit log names it."""
    return f"cli:{os.environ.get('USER', 'unknown')}"


def client(http: bool = False) -> Any:
    """The in-process client, or with ``http`` and BLOODCELL_API_URL set, the HTTP API client."""
    if http and os.environ.get("BLOODCELL_API_URL"):
        from bloodcell_core.clients.http import HttpClient

        token = os.environ.get("BLOODCELL_API_TOKEN")
        if not token:
            fail("BLOODCELL_API_URL is set: BLOODCELL_API_TOKEN must hold a token (`bloodcell tokens create`)")
        return HttpClient(os.environ["BLOODCELL_API_URL"], token)
    from bloodcell_core.clients.local import Client

    return Client(settings())
