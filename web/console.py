"""The review console: server-rendered pages for technologists, supervisors and admins under /ui.

A thin adapter over the core services, like ``api/``: people log in with a user account (not an API
token), get an HttpOnly session cookie, and every state-changing request carries the session's CSRF
token. Pages are Jinja2 templates with autoescaping; the only script is ``static/console.js`` (ours,
no third-party code), allowed by a Content-Security-Policy that forbids inline scripts and styles.
Every action is audited under ``user:NAME``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from bloodcell_core.clients.local import Client
from bloodcell_core.config import Settings
from bloodcell_core.plugin_manager import exporters
from bloodcell_core.service import samples, signoff, users
from bloodcell_core.service.audit_log import audit_events
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.http_status import SERVICE_ERRORS, error_message, image_headers, status_of, upload_name
from bloodcell_core.service.results import production_of
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES, Role, SampleFlag, SampleStatus
from bloodcell_core.service.submission import check_image_limits
from bloodcell_core.service.versions import version_classes
from web.verification import verification_router

HERE = Path(__file__).parent
SESSION_COOKIE = "bloodcell_session"
LOGIN_CSRF_COOKIE = "bloodcell_login_csrf"  # double-submit token of the login form (no session yet)
PLOTS = ("confusion_matrix", "reliability", "coverage", "training_curves")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # patient data: nothing of a page stays in a shared workstation's cache
}
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
T = TypeVar("T")


@dataclass(frozen=True)
class Viewer:
    """The logged-in person: their name, role and the session's CSRF token."""

    name: str
    role: str
    csrf_token: str

    @property
    def actor(self) -> str:
        return f"user:{self.name}"

    def can(self, role: str) -> bool:
        return users.has_role(self.role, role)


class LoginRequired(Exception):
    """No live session: pages redirect to the login page, scripts get 401."""


def _templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"], default=True))
    environment.filters["pct"] = lambda value: f"{value:.1f}"
    environment.filters["when"] = _readable_time
    environment.filters["tojson_attr"] = lambda value: json.dumps(value)  # autoescaped again as an attribute value
    return environment


def install_console(app: FastAPI, settings: Settings, client: Client) -> None:
    """Mount the console on APP: pages under /ui, its script and stylesheet under /ui/static."""
    app.include_router(console_router(settings, client), prefix="/ui", include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    templates = _templates()

    @app.exception_handler(LoginRequired)
    def login_required(request: Request, _exc: LoginRequired) -> Response:
        """Scripts get 401; a person (a page or a form, e.g. after the session expired) the login page."""
        if request.headers.get("x-requested-with") == "console" or not _from_a_browser(request):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        back = request.url.path if request.method == "GET" else "/ui/"
        return RedirectResponse(f"/ui/login?next={quote(back)}", status_code=303)

    @app.exception_handler(HTTPException)
    async def html_errors(request: Request, exc: HTTPException) -> Response:
        """Errors of console pages as a page with the console's navigation; the API's stay JSON."""
        if not request.url.path.startswith("/ui") or request.headers.get("x-requested-with") == "console":
            return await http_exception_handler(request, exc)
        who = await run_in_threadpool(_viewer_of, settings, request)
        body = templates.get_template("error.html").render(
            status=exc.status_code, detail=exc.detail, viewer=who, posted=request.method == "POST"
        )
        return HTMLResponse(body, status_code=exc.status_code, headers={**SECURITY_HEADERS, **(exc.headers or {})})


def console_router(settings: Settings, client: Client) -> APIRouter:
    router = APIRouter()
    templates = _templates()

    def page(name: str, viewer: Viewer | None, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = templates.get_template(name).render(viewer=viewer, settings=settings, **context)
        return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)

    def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A core service call, its errors as HTTP errors with the service's own message."""
        try:
            return function(*args, **kwargs)
        except SERVICE_ERRORS as exc:
            raise HTTPException(status_of(exc), error_message(exc)) from None

    def viewer(request: Request) -> Viewer:
        found = _viewer_of(settings, request)
        if found is None:
            raise LoginRequired()
        return found

    def csrf_checked(request: Request, who: Viewer = Depends(viewer), csrf_token: str = Form("")) -> Viewer:
        sent = request.headers.get("x-csrf-token") or csrf_token
        if not sent or not secrets.compare_digest(sent, who.csrf_token):
            raise HTTPException(403, "stale or missing CSRF token: reload the page and try again")
        return who

    def admin_form(who: Viewer = Depends(csrf_checked)) -> Viewer:
        """A user-management form: a live session, its CSRF token and the admin role."""
        if not who.can(Role.ADMIN):
            raise HTTPException(403, "managing users needs the admin role")
        return who

    def role(needed: Role) -> Callable[..., Viewer]:
        def check(who: Viewer = Depends(viewer)) -> Viewer:
            if not who.can(needed):
                raise HTTPException(403, f"this needs the {needed} role; you are {who.role}")
            return who

        return check

    router.include_router(verification_router(settings, page, call, role(Role.SUPERVISOR), csrf_checked))

    # --- logging in and out -----------------------------------------------------------------------

    @router.get("/login")
    def login_page(next: str = "/ui/") -> Response:
        token = secrets.token_urlsafe(32)
        response = page("login.html", None, login_csrf=token, next=_local(next), error="")
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/ui/login", max_age=3600)
        return response

    @router.post("/login")
    def login(
        request: Request,
        name: str = Form(""),
        password: str = Form(""),
        csrf_token: str = Form(""),
        next: str = Form("/ui/"),
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, csrf_token):
            raise HTTPException(403, "stale login form: reload the login page and try again")
        address = request.client.host if request.client else "unknown"
        try:
            user = users.authenticate(settings, name, password, address)
        except users.LoginThrottled as exc:
            message = f"too many failed logins: try again in {exc.retry_after_s} s"
            return page("login.html", None, 429, login_csrf=expected, next=_local(next), error=message)
        except users.LoginRefused as exc:
            return page("login.html", None, 401, login_csrf=expected, next=_local(next), error=error_message(exc))
        token, _csrf = users.start_session(settings, user["name"])
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=_over_tls(request),
            path="/ui",
            max_age=int(settings.session_hours * 3600),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
        return response

    @router.post("/logout")
    def logout(request: Request, _: Viewer = Depends(csrf_checked)) -> Response:
        users.end_session(settings, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    # --- samples ------------------------------------------------------------------------------------

    @router.get("/")
    def samples_page(who: Viewer = Depends(viewer), status: str = "", flag: str = "") -> Response:
        with session_scope(settings.database_url) as session:
            rows = samples.list_samples(session, status=status or None, flag=flag or None)
        return page("samples.html", who, rows=rows, status=status, flag=flag, statuses=list(SampleStatus), flags=_flag_choices())

    @router.get("/samples/rows")
    def sample_rows(who: Viewer = Depends(viewer), status: str = "", flag: str = "") -> Response:
        """The worklist's rows alone: the page polls this to stay live."""
        with session_scope(settings.database_url) as session:
            rows = samples.list_samples(session, status=status or None, flag=flag or None)
        return page("_sample_rows.html", who, rows=rows)

    @router.get("/submit")
    def submit_page(who: Viewer = Depends(viewer)) -> Response:
        return page("submit.html", who, limits=settings)

    @router.post("/submit")
    async def submit(request: Request, who: Viewer = Depends(viewer)) -> Response:
        """The form is read only after the session is checked, and within the API's limits."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > settings.max_request_bytes:
            raise HTTPException(413, f"send at most {settings.max_request_bytes:,} bytes (BLOODCELL_MAX_REQUEST_BYTES)")
        try:
            form = await request.form(max_files=settings.max_images_per_sample + 1, max_fields=10)
        except HTTPException as exc:
            raise HTTPException(413 if "Too many" in str(exc.detail) else 400, f"the upload was refused: {exc.detail}") from None
        sent = form.get("csrf_token")
        if not isinstance(sent, str) or not secrets.compare_digest(sent, who.csrf_token):
            raise HTTPException(403, "stale or missing CSRF token: reload the page and try again")
        accession_id, kind = str(form.get("accession_id") or "").strip(), form.get("kind") or "images"
        if kind not in ("images", "fields"):
            raise HTTPException(422, "kind must be images or fields")
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
        if not uploads:
            raise HTTPException(422, "choose or drop at least one image")
        if len(uploads) > settings.max_images_per_sample:
            raise HTTPException(413, f"{len(uploads)} files exceed {settings.max_images_per_sample} per sample")
        named = []
        for k, upload in enumerate(uploads):
            data = await upload.read(settings.max_image_bytes + 1)
            name = upload_name(upload.filename, k)
            await run_in_threadpool(call, check_image_limits, settings, name, data)
            named.append((name, data))
        images, fields = (named, []) if kind == "images" else ([], named)
        await run_in_threadpool(call, client.submit, accession_id, images, who.actor, fields=fields)
        return RedirectResponse(f"/ui/samples/{quote(accession_id)}", status_code=303)

    @router.get("/samples/{sample_id}")
    def sample_page(sample_id: str, who: Viewer = Depends(viewer)) -> Response:
        report = call(client.report, sample_id)
        cells = call(client.cells, sample_id)
        fields = call(client.fields, sample_id)
        classes = _classes(settings, report.model_version)
        to_review = [cell for cell in cells if cell["needs_review"]]
        gallery: dict[str, list[dict[str, Any]]] = {}
        for cell in cells:
            if not cell["needs_review"]:
                gallery.setdefault(cell["label"] or cell["status"], []).append(cell)
        order = [label for label in classes if label in gallery] + sorted(set(gallery) - set(classes))
        rows = [(label, report.counts.get(label, 0), report.percent.get(label, 0.0)) for label in report.counts]
        apart = set(report.non_leukocyte_classes or [])  # nucleated red cells and platelets: not among the 100
        most = max([count for _, count, _ in rows], default=0) or 1
        return page(
            "sample.html",
            who,
            report=report,
            to_review=to_review,  # shown first: they are what the technologist is here for
            gallery=[(label, gallery[label]) for label in order],
            classes=classes,
            rows=[row for row in rows if row[0] not in apart],
            other_rows=[row for row in rows if row[0] in apart],
            most=most,
            fields=fields,
            exporters=sorted(exporters()),
            final=report.status in FINAL_SAMPLE_STATUSES,
            may_sign_off=signoff.may_sign_off(settings, who.role, report.blast_flag),
            to_confirm=signoff.confirmations_needed(settings, report) if report.model_version else [],
        )

    @router.get("/samples/{sample_id}/state")
    def sample_state(sample_id: str, _: Viewer = Depends(viewer)) -> dict[str, Any]:
        report = call(client.report, sample_id)
        return {"status": report.status, "n_cells": report.n_cells, "n_classified": report.n_classified}

    @router.post("/samples/{sample_id}/cells/{image_sha256}/label")
    def relabel(
        sample_id: str, image_sha256: str, who: Viewer = Depends(csrf_checked), label: str = Form(...), reason: str = Form("")
    ) -> Response:
        if not who.can(Role.TECHNOLOGIST):
            raise HTTPException(403, "relabelling needs the technologist role")
        call(client.relabel, sample_id, image_sha256, label, who.name, reason, who.actor)
        return RedirectResponse(f"/ui/samples/{quote(sample_id)}#cell-{image_sha256[:16]}", status_code=303)

    @router.post("/samples/{sample_id}/sign-off")
    def sign_off(
        sample_id: str, who: Viewer = Depends(csrf_checked), comment: str = Form(""), confirm_incomplete: bool = Form(False)
    ) -> Response:
        call(client.sign_off, sample_id, who.name, comment, who.actor, confirm_incomplete)  # the rule, under the row lock
        return RedirectResponse(f"/ui/samples/{quote(sample_id)}", status_code=303)

    @router.get("/samples/{sample_id}/export/{format_name}")
    def export(sample_id: str, format_name: str, _: Viewer = Depends(viewer)) -> Response:
        from bloodcell_core.service.exports import export_sample

        with session_scope(settings.database_url) as session:
            media_type, body = call(export_sample, session, settings=settings, accession_id=sample_id, format_name=format_name)
        disposition = {"Content-Disposition": f'inline; filename="{sample_id}.{format_name}"'}
        return Response(body, media_type=media_type, headers={**FILE_HEADERS, **disposition})

    @router.get("/samples/{sample_id}/fields/{field_sha256}/overlay")
    def overlay(sample_id: str, field_sha256: str, _: Viewer = Depends(viewer)) -> Response:
        return Response(call(client.field_overlay, sample_id, field_sha256), media_type="image/png", headers=FILE_HEADERS)

    @router.get("/images/{image_sha256}")
    def image(image_sha256: str, request: Request, _: Viewer = Depends(viewer)) -> Response:
        """A cell image by its sha256 (content-addressed: kept a day, immutable); a revalidation answers 304."""
        if len(image_sha256) != 64 or not all(c in "0123456789abcdef" for c in image_sha256):
            raise HTTPException(422, "not a sha256")
        headers = image_headers(image_sha256)
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        with session_scope(settings.database_url) as session:
            data = call(samples.get_image, session, settings=settings, image_sha256=image_sha256)
        return Response(data, media_type=_media_type(data), headers=headers)

    # --- review, model, audit, users ----------------------------------------------------------------

    @router.get("/review")
    def review_page(who: Viewer = Depends(viewer)) -> Response:
        return page("review.html", who, queue=client.review_queue(200))

    @router.get("/model")
    def model_page(who: Viewer = Depends(viewer)) -> Response:
        versions = client.models()
        production = production_of(versions)
        generalisation: list[dict[str, Any]] = []
        plots: list[str] = []
        if production is not None:
            report_dir = Path(production.artifact) / "report"
            if (report_dir / "generalisation.json").is_file():
                generalisation = json.loads((report_dir / "generalisation.json").read_text())
            plots = [name for name in PLOTS if (report_dir / f"{name}.png").is_file()]
        return page("model.html", who, production=production, versions=versions, generalisation=generalisation, plots=plots)

    @router.get("/model/plots/{name}.png")
    def model_plot(name: str, _: Viewer = Depends(viewer)) -> Response:
        production = production_of(client.models())
        if name not in PLOTS or production is None:
            raise HTTPException(404, "no such plot")
        path = Path(production.artifact) / "report" / f"{name}.png"
        if not path.is_file():
            raise HTTPException(404, "the production model's report has no such plot")
        return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/audit")
    def audit_page(who: Viewer = Depends(role(Role.ADMIN)), subject: str = "") -> Response:
        with session_scope(settings.database_url) as session:
            events = audit_events(session, subject=subject or None, limit=500)
        return page("audit.html", who, events=events, subject=subject)

    @router.get("/users")
    def users_page(who: Viewer = Depends(role(Role.ADMIN))) -> Response:
        return page("users.html", who, people=users.list_users(settings), roles=list(Role))

    @router.post("/users")
    def create_user(
        who: Viewer = Depends(admin_form), name: str = Form(...), user_role: str = Form(...), password: str = Form(...)
    ) -> Response:
        call(users.create_user, settings, name, user_role, password, who.actor)
        return RedirectResponse("/ui/users", status_code=303)

    @router.post("/users/{name}/disable")
    def disable_user(name: str, who: Viewer = Depends(admin_form)) -> Response:
        if name == who.name:
            raise HTTPException(409, "you cannot disable your own account: another admin can")
        call(users.disable_user, settings, name, who.actor)
        return RedirectResponse("/ui/users", status_code=303)

    @router.post("/users/{name}/enable")
    def enable_user(name: str, who: Viewer = Depends(admin_form)) -> Response:
        call(users.enable_user, settings, name, who.actor)
        return RedirectResponse("/ui/users", status_code=303)

    @router.post("/users/{name}/role")
    def change_role(name: str, who: Viewer = Depends(admin_form), user_role: str = Form(...)) -> Response:
        if name == who.name:
            raise HTTPException(409, "you cannot change your own role: another admin can")
        call(users.set_role, settings, name, user_role, who.actor)
        return RedirectResponse("/ui/users", status_code=303)

    @router.post("/users/{name}/password")
    def reset_password(name: str, who: Viewer = Depends(admin_form), password: str = Form(...)) -> Response:
        call(users.set_password, settings, name, password, who.actor)
        return RedirectResponse("/ui/users", status_code=303)

    return router


def _viewer_of(settings: Settings, request: Request) -> Viewer | None:
    """The person whose live session the request carries; None without one."""
    token = request.cookies.get(SESSION_COOKIE)
    found = users.session_user(settings, token) if token else None
    return None if found is None else Viewer(found["name"], found["role"], found["csrf_token"])


def _readable_time(iso: str | None) -> str:
    """An ISO time as people read it, to the minute (the console's script shows it in the browser's time zone)."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    return moment.strftime("%d %b %Y, %H:%M") + (f" {moment.tzname()}" if moment.tzinfo is not None else "")


def _local(target: str) -> str:
    """Only paths of the console as a redirect target: never another site (open redirect)."""
    return target if target.startswith("/ui") and not target.startswith("//") and "\\" not in target else "/ui/"


def _over_tls(request: Request) -> bool:
    return request.url.scheme == "https"  # X-Forwarded-Proto counts only from BLOODCELL_TRUSTED_PROXIES (uvicorn)


def _flag_choices() -> list[tuple[str, str]]:
    return [("needs_review", "cells to review")] + [(str(flag), str(flag).replace("_", " ")) for flag in SampleFlag]


def _classes(settings: Settings, version: str | None) -> list[str]:
    """The classes of the model version that made the report: what a cell may be relabelled to."""
    if version is None:
        return []
    with session_scope(settings.database_url) as session:
        return version_classes(session, version=version)


def _from_a_browser(request: Request) -> bool:
    return request.method == "GET" or "form" in request.headers.get("content-type", "")


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"
