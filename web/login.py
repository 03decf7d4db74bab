"""Logging in (a double-submit CSRF token on the login form, throttled failures) and out."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from bloodcell_core.edge import ClientDep, SettingsDep, error_message
from bloodcell_core.service import users
from web.deps import SESSION_COOKIE, FormSender
from web.rendering import page

router = APIRouter()
LOGIN_CSRF_COOKIE = "bloodcell_login_csrf"  # double-submit token of the login form (no session yet)


@router.get("/login")
def login_page(next: str = "/ui/") -> Response:
    token = secrets.token_urlsafe(32)
    response = page("login.html", None, login_csrf=token, next=_local(next), error="")
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/ui/login", max_age=3600)
    return response


@router.post("/login")
def login(
    request: Request,
    settings: SettingsDep,
    client: ClientDep,
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
    token, _csrf = client.start_session(user["name"])
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # X-Forwarded-Proto counts only from BLOODCELL_TRUSTED_PROXIES (uvicorn)
        path="/ui",
        max_age=int(settings.session_hours * 3600),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
def logout(request: Request, client: ClientDep, _: FormSender) -> Response:
    client.end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


def _local(target: str) -> str:
    """Only paths of the console as a redirect target: never another site (open redirect)."""
    return target if target.startswith("/ui") and not target.startswith("//") and "\\" not in target else "/ui/"
