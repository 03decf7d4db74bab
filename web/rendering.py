"""How the console answers: Jinja2 pages (autoescaped) with the console's security headers, and file headers."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bloodcell_core.service.states import CellStatus, FieldStatus, ReportStatus, SampleFlag

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # patient data: nothing of a page stays in a shared workstation's cache
}
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _readable_time(iso: str | None) -> str:
    """An ISO time as people read it, to the minute (the console's script shows it in the browser's time zone)."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    return moment.strftime("%d %b %Y, %H:%M") + (f" {moment.tzname()}" if moment.tzinfo is not None else "")


def _templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"], default=True))
    environment.filters["pct"] = lambda value: f"{value:.1f}"
    environment.filters["when"] = _readable_time
    environment.filters["tojson_attr"] = lambda value: json.dumps(value)  # autoescaped again as an attribute value
    # the states' enums, so that pages compare states as the service does, never as spelled strings
    environment.globals.update(
        CellStatus=CellStatus, FieldStatus=FieldStatus, SampleFlag=SampleFlag, SIGNED_OFF=(ReportStatus.FINAL, ReportStatus.AMENDED)
    )
    return environment


TEMPLATES = _templates()


def page(name: str, viewer: Any, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """The template NAME rendered for VIEWER (the logged-in person, or None on the login page)."""
    body = TEMPLATES.get_template(name).render(viewer=viewer, **context)
    return HTMLResponse(body, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})
