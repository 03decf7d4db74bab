"""The console's verification page (supervisors): the latest local verification dossier, and a new one on demand.

Its own router, included by ``console.install_console`` like every page of the console. A new
dossier scores production (and a chosen candidate beside it, when that candidate has predictions on the
verified cells) on every signed-off sample, or those signed off between two dates, under the built-in
acceptance criteria or the file BLOODCELL_HOME/verification/criteria.json where a supervisor keeps them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from fastapi import APIRouter, Form, HTTPException, Response
from fastapi.responses import RedirectResponse

from bloodcell_core.edge import SettingsDep
from bloodcell_core.service import verification
from bloodcell_core.service.verification_report import FILES, summary_rows
from web.deps import Supervisor, SupervisorForm
from web.rendering import page

# The dossier page is our own self-contained HTML (inline styles, images as data: URLs); nothing else may load.
DOSSIER_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MEDIA_TYPES = {"dossier.json": "application/json", "dossier.html": "text/html; charset=utf-8", "dossier.pdf": "application/pdf"}


router = APIRouter()


@router.get("/verification")
def verification_page(who: Supervisor, settings: SettingsDep, error: str = "") -> Response:
    latest = verification.latest_dossier(settings)
    dossier = json.loads((latest / "dossier.json").read_text()) if latest else None
    summaries = [(m, summary_rows(m)) for m in dossier["models"]] if dossier else []
    return page("verification.html", who, dossier=dossier, run=latest.name if latest else None, summaries=summaries)


@router.post("/verification")
def make_dossier(
    who: SupervisorForm, settings: SettingsDep, model: str = Form(""), day_from: str = Form(""), day_to: str = Form("")
) -> Response:
    criteria_file = verification.dossiers_dir(settings) / "criteria.json"
    out_dir = verification.dossiers_dir(settings) / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    verification.make_dossier(
        settings,
        out_dir,
        who.actor,
        model=model.strip() or None,
        day_from=verification.parse_day(day_from, "from") if day_from.strip() else None,
        day_to=verification.parse_day(day_to, "to") if day_to.strip() else None,
        criteria=verification.read_criteria(criteria_file if criteria_file.is_file() else None),
        command=f"console: {who.actor} model={model.strip() or 'production'} from={day_from or '-'} to={day_to or '-'}",
    )
    return RedirectResponse("/ui/verification", status_code=303)


@router.get("/verification/{run}/{name}")
def dossier_file(run: str, name: str, _: Supervisor, settings: SettingsDep) -> Response:
    path = verification.dossiers_dir(settings) / run / name
    if name not in FILES or not run.isalnum() or not path.is_file():
        raise HTTPException(404, "no such dossier file")
    headers = DOSSIER_HEADERS | {"Content-Disposition": f'inline; filename="{run}-{name}"'}
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[name], headers=headers)
