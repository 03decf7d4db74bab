"""Administration: the audit log, and console users (create, disable, enable, change role, reset password)."""

from __future__ import annotations

from fastapi import APIRouter, Form, HTTPException, Response
from fastapi.responses import RedirectResponse

from bloodcell_core.edge import ClientDep
from bloodcell_core.service.states import Role
from web.deps import AdminForm, AdminViewer
from web.rendering import page

router = APIRouter()
USERS_PAGE = "/ui/users"


@router.get("/audit")
def audit_page(who: AdminViewer, client: ClientDep, subject: str = "") -> Response:
    return page("audit.html", who, events=client.audit(subject or None, 500), subject=subject)


@router.get("/users")
def users_page(who: AdminViewer, client: ClientDep) -> Response:
    return page("users.html", who, people=client.list_users(), roles=list(Role))


@router.post("/users")
def create_user(
    who: AdminForm, client: ClientDep, name: str = Form(...), user_role: str = Form(...), password: str = Form(...)
) -> Response:
    client.create_user(name, user_role, password, who.actor)
    return RedirectResponse(USERS_PAGE, status_code=303)


@router.post("/users/{name}/disable")
def disable_user(name: str, who: AdminForm, client: ClientDep) -> Response:
    if name == who.name:
        raise HTTPException(409, "you cannot disable your own account: another admin can")
    client.disable_user(name, who.actor)
    return RedirectResponse(USERS_PAGE, status_code=303)


@router.post("/users/{name}/enable")
def enable_user(name: str, who: AdminForm, client: ClientDep) -> Response:
    client.enable_user(name, who.actor)
    return RedirectResponse(USERS_PAGE, status_code=303)


@router.post("/users/{name}/role")
def change_role(name: str, who: AdminForm, client: ClientDep, user_role: str = Form(...)) -> Response:
    if name == who.name:
        raise HTTPException(409, "you cannot change your own role: another admin can")
    client.set_user_role(name, user_role, who.actor)
    return RedirectResponse(USERS_PAGE, status_code=303)


@router.post("/users/{name}/password")
def reset_password(name: str, who: AdminForm, client: ClientDep, password: str = Form(...)) -> Response:
    client.set_user_password(name, password, who.actor)
    return RedirectResponse(USERS_PAGE, status_code=303)
