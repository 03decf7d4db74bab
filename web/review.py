"""Review: the queue of samples waiting for a technologist, relabelling a cell, and signing a sample off."""

from __future__ import annotations

from fastapi import APIRouter, Form, HTTPException, Response
from fastapi.responses import RedirectResponse

from bloodcell_core.edge import ClientDep
from bloodcell_core.service.states import Role
from web.deps import FormSender, LoggedIn
from web.rendering import page
from web.samples import sample_url

router = APIRouter()


@router.get("/review")
def review_page(who: LoggedIn, client: ClientDep) -> Response:
    return page("review.html", who, queue=client.review_queue(200))


@router.post("/samples/{sample_id}/cells/{image_sha256}/label")
def relabel(
    sample_id: str, image_sha256: str, who: FormSender, client: ClientDep, label: str = Form(...), reason: str = Form("")
) -> Response:
    if not who.can(Role.TECHNOLOGIST):
        raise HTTPException(403, "relabelling needs the technologist role")
    client.relabel(sample_id, image_sha256, label, who.name, reason, who.actor)
    return RedirectResponse(sample_url(sample_id, f"#cell-{image_sha256[:16]}"), status_code=303)


@router.post("/samples/{sample_id}/sign-off")
def sign_off(
    sample_id: str, who: FormSender, client: ClientDep, comment: str = Form(""), confirm_incomplete: bool = Form(False)
) -> Response:
    client.sign_off(sample_id, who.name, comment, who.actor, confirm_incomplete)  # the rule, under the row lock
    return RedirectResponse(sample_url(sample_id), status_code=303)
