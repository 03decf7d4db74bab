"""The production model's page: its figures, its generalisation table and its plots, read from the files registered
with the version (in the database), so any host shows them, with or without the model's directory."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from bloodcell_core.edge import ClientDep
from bloodcell_core.service.results import production_of
from web.deps import LoggedIn
from web.rendering import page

router = APIRouter()
PLOTS = ("confusion_matrix", "reliability", "coverage", "training_curves")
GENERALISATION = "generalisation.json"


@router.get("/model")
def model_page(who: LoggedIn, client: ClientDep) -> Response:
    versions = client.models()
    production = production_of(versions)
    generalisation: list[dict[str, Any]] = []
    plots: list[str] = []
    if production is not None:
        names = set(client.model_report_files(production.version))
        if GENERALISATION in names:
            generalisation = json.loads(client.model_report_file(production.version, GENERALISATION))
        plots = [name for name in PLOTS if f"{name}.png" in names]
    return page("model.html", who, production=production, versions=versions, generalisation=generalisation, plots=plots)


@router.get("/model/plots/{name}.png")
def model_plot(name: str, _: LoggedIn, client: ClientDep) -> Response:
    production = production_of(client.models())
    if name not in PLOTS or production is None:
        raise HTTPException(404, "no such plot")
    if f"{name}.png" not in client.model_report_files(production.version):
        raise HTTPException(404, "the production model's report has no such plot")
    png = client.model_report_file(production.version, f"{name}.png")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
