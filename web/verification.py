"""The console's verification page (supervisors): the latest local verification dossier, and a new one on demand.

Its own router, included by ``console.console_router`` with the console's page, error and role helpers. A new
dossier scores production (and a chosen candidate beside it, when that candidate has predictions on the
verified cells) on every signed-off sample, or those signed off between two dates, under the built-in
acceptance criteria or the file BLOODCELL_HOME/verification/criteria.json where a supervisor keeps them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

from fastapi import APIRouter, Depends, Form, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

from bloodcell_core.config import Settings
from bloodcell_core.service import verification
from bloodcell_core.service.verification_report import FILES, summary_rows

# The dossier page is our own self-contained HTML (inline styles, images as data: URLs); nothing else may load.
DOSSIER_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MEDIA_TYPES = {"dossier.json": "application/json", "dossier.html": "text/html; charset=utf-8", "dossier.pdf": "application/pdf"}


def verification_router(
    settings: Settings,
    page: Callable[..., HTMLResponse],
    call: Callable[..., Any],
    supervisor: Callable[..., Any],
    csrf_checked: Callable[..., Any],
) -> APIRouter:
    router = APIRouter()

    @router.get("/verification")
    def verification_page(who: Any = Depends(supervisor), error: str = "") -> Response:
        latest = verification.latest_dossier(settings)
        dossier = json.loads((latest / "dossier.json").read_text()) if latest else None
        summaries = [(m, summary_rows(m)) for m in dossier["models"]] if dossier else []
        return page("verification.html", who, dossier=dossier, run=latest.name if latest else None, summaries=summaries)

    @router.post("/verification")
    def make_dossier(
        who: Any = Depends(csrf_checked), model: str = Form(""), day_from: str = Form(""), day_to: str = Form("")
    ) -> Response:
        supervisor(who)  # the role check, after the CSRF check
        criteria_file = verification.dossiers_dir(settings) / "criteria.json"
        out_dir = verification.dossiers_dir(settings) / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        call(
            verification.make_dossier,
            settings,
            out_dir,
            who.actor,
            model=model.strip() or None,
            day_from=call(verification.parse_day, day_from, "from") if day_from.strip() else None,
            day_to=call(verification.parse_day, day_to, "to") if day_to.strip() else None,
            criteria=call(verification.read_criteria, criteria_file if criteria_file.is_file() else None),
            command=f"console: {who.actor} model={model.strip() or 'production'} from={day_from or '-'} to={day_to or '-'}",
        )
        return RedirectResponse("/ui/verification", status_code=303)

    @router.get("/verification/{run}/{name}")
    def dossier_file(run: str, name: str, _: Any = Depends(supervisor)) -> Response:
        path = verification.dossiers_dir(settings) / run / name
        if name not in FILES or not run.isalnum() or not path.is_file():
            raise HTTPException(404, "no such dossier file")
        headers = DOSSIER_HEADERS | {"Content-Disposition": f'inline; filename="{run}-{name}"'}
        return Response(path.read_bytes(), media_type=MEDIA_TYPES[name], headers=headers)

    return router
