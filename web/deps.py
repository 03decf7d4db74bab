"""Who is asking, for every console page: the logged-in person (``Viewer``) from the session cookie, the CSRF check
of every state-changing request, and role checks. Declared once; pages name them in their signature."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Callable

from fastapi import Depends, Form, HTTPException, Request

from bloodcell_core.clients.local import Client
from bloodcell_core.edge import ClientDep
from bloodcell_core.service import users
from bloodcell_core.service.states import Role

SESSION_COOKIE = "bloodcell_session"


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


def viewer_of(client: Client, request: Request) -> Viewer | None:
    """The person whose live session the request carries; None without one."""
    token = request.cookies.get(SESSION_COOKIE)
    found = client.session_user(token) if token else None
    return None if found is None else Viewer(found["name"], found["role"], found["csrf_token"])


def logged_in(request: Request, client: ClientDep) -> Viewer:
    found = viewer_of(client, request)
    if found is None:
        raise LoginRequired()
    return found


def check_csrf(sent: object, who: Viewer) -> None:
    if not isinstance(sent, str) or not sent or not secrets.compare_digest(sent, who.csrf_token):
        raise HTTPException(403, "stale or missing CSRF token: reload the page and try again")


def csrf_checked(request: Request, who: Annotated[Viewer, Depends(logged_in)], csrf_token: str = Form("")) -> Viewer:
    check_csrf(request.headers.get("x-csrf-token") or csrf_token, who)
    return who


def role(needed: Role) -> Callable[..., Viewer]:
    """A page for people with at least the role NEEDED."""

    def check(who: Annotated[Viewer, Depends(logged_in)]) -> Viewer:
        if not who.can(needed):
            raise HTTPException(403, f"this needs the {needed} role; you are {who.role}")
        return who

    return check


def admin_form(who: Annotated[Viewer, Depends(csrf_checked)]) -> Viewer:
    """A user-management form: a live session, its CSRF token and the admin role."""
    if not who.can(Role.ADMIN):
        raise HTTPException(403, "managing users needs the admin role")
    return who


def supervisor_form(who: Annotated[Viewer, Depends(csrf_checked)]) -> Viewer:
    """A supervisor's form: the CSRF check first, then the role."""
    return role(Role.SUPERVISOR)(who)


LoggedIn = Annotated[Viewer, Depends(logged_in)]
FormSender = Annotated[Viewer, Depends(csrf_checked)]  # a state-changing request with the session's CSRF token
Supervisor = Annotated[Viewer, Depends(role(Role.SUPERVISOR))]
AdminViewer = Annotated[Viewer, Depends(role(Role.ADMIN))]
AdminForm = Annotated[Viewer, Depends(admin_form)]
SupervisorForm = Annotated[Viewer, Depends(supervisor_form)]
