"""Submitting a sample from the browser: cell images or whole fields, read by the API's upload reader."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from bloodcell_core.edge import ClientDep, SettingsDep, read_files, read_form
from web.deps import LoggedIn, check_csrf
from web.rendering import page
from web.samples import sample_url

router = APIRouter()


@router.get("/submit")
def submit_page(who: LoggedIn, settings: SettingsDep) -> Response:
    return page("submit.html", who, limits=settings)


@router.post("/submit")
async def submit(request: Request, who: LoggedIn, settings: SettingsDep, client: ClientDep) -> Response:
    """The form is read only after the session is checked, and within the API's limits."""
    form = await read_form(request, settings, max_fields=10)
    check_csrf(form.get("csrf_token"), who)
    accession_id, kind = str(form.get("accession_id") or "").strip(), form.get("kind") or "images"
    if kind not in ("images", "fields"):
        raise HTTPException(422, "kind must be images or fields")
    # a file input left empty sends a part without a name: not a file
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
    if not uploads:
        raise HTTPException(422, "choose or drop at least one image")
    if len(uploads) > settings.max_images_per_sample:
        raise HTTPException(413, f"{len(uploads)} files exceed {settings.max_images_per_sample} per sample")
    named = await read_files(list(uploads), settings, "files")
    images, fields = (named, []) if kind == "images" else ([], named)
    await run_in_threadpool(client.submit, accession_id, images, who.actor, fields=fields)
    return RedirectResponse(sample_url(accession_id), status_code=303)
