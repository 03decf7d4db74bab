"""The review console: server-rendered pages for technologists, supervisors and admins under /ui.

A thin adapter over the core services, like ``api/``: people log in with a user account (not an API
token), get an HttpOnly session cookie, and every state-changing request carries the session's CSRF
token. Pages are Jinja2 templates with autoescaping; the only script is ``static/console.js`` (ours,
no third-party code), allowed by a Content-Security-Policy that forbids inline scripts and styles.
Every action is audited under ``user:NAME``.

The pages live in one module per concern (login, samples, submit, review, model, admin, verification), their
dependencies in ``deps.py``; uploads, sha256 parameters and errors go through ``bloodcell_core.edge`` as the
API's do, and errors come back as ``error_page`` under /ui.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from web import admin, login, model, review, samples, submit, verification
from web.deps import LoginRequired, viewer_of
from web.rendering import HERE, page

PAGES = (login, samples, submit, review, model, admin, verification)


def install_console(app: FastAPI) -> None:
    """Mount the console on APP: pages under /ui, its script and stylesheet under /ui/static."""
    for module in PAGES:
        app.include_router(module.router, prefix="/ui", include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(LoginRequired, login_required)


def login_required(request: Request, _exc: Exception) -> Response:
    """Scripts get 401; a person (a page or a form, e.g. after the session expired) the login page."""
    if request.headers.get("x-requested-with") == "console" or not _from_a_browser(request):
        return JSONResponse({"detail": "log in first"}, status_code=401)
    back = request.url.path if request.method == "GET" else "/ui/"
    return RedirectResponse(f"/ui/login?next={quote(back)}", status_code=303)


async def error_page(request: Request, status: int, detail: str, headers: dict[str, str]) -> Response:
    """An error as a page with the console's navigation (``bloodcell_core.edge`` answers the console's errors so)."""
    who = await run_in_threadpool(viewer_of, request.app.state.client, request)
    return page("error.html", who, status, headers, status=status, detail=detail, posted=request.method == "POST")


def _from_a_browser(request: Request) -> bool:
    return request.method == "GET" or "form" in request.headers.get("content-type", "")
