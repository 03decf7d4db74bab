"""Users of the web review console: accounts, login throttling and browser sessions.

Passwords are chosen by people, so unlike API tokens they are stored as slow argon2 hashes. A login
is refused with one message whatever went wrong (unknown name, wrong password, disabled account), and
an unknown name costs as much time as a known one. Failed logins are counted per user name and per
address: after ``login_attempts`` failures within ``login_lockout_minutes`` (and no success since),
further logins are refused unchecked until the window has passed. Refused-unchecked logins are not
counted, so a lockout ends when it says it does. A browser session is a random token of which only the
sha256 is stored, with the CSRF token of its forms, and it lasts ``session_hours``.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.service.api_clients import token_sha256
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.states import ROLE_RANK, Role
from bloodcell_core.service.tables import LoginAttempt, User, WebSession, utcnow

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 pre-hashes any length; this only bounds the work one request can ask for
LOGIN_REFUSED = "unknown user name or wrong password"

_HASHER = PasswordHasher()


class LoginRefused(ServiceError):
    """Unknown user name, wrong password or disabled account: one message for all, never which."""

    def __init__(self) -> None:
        super().__init__(LOGIN_REFUSED)


class LoginThrottled(ServiceError):
    """Too many failed logins for this user name or from this address; try again in ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@cache
def _dummy_hash() -> str:
    """A hash of a random password, verified against when the user is unknown (same cost as a known one)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ServiceError(f"invalid user name {name!r}: 1-128 letters, digits and . _ - (starting with a letter or digit)")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ServiceError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ServiceError(f"a password may have at most {MAX_PASSWORD_CHARS} characters")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _user_row(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled_at is not None,
        "created_at": user.created_at.isoformat(),
        "last_login_at": _iso(user.last_login_at),
    }


def _find_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def _end_sessions_of(session: Session, user: User) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def create_user(session: Session, *, name: str, role: str, password: str, actor: str) -> dict[str, Any]:
    """Create an enabled user; returns the row as ``list_users`` shows it (never the password or its hash)."""
    _check_name(name)
    if role not in {r.value for r in Role}:
        raise ServiceError(f"role must be one of {', '.join(Role)}; got {role!r}")
    _check_password(password)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists already (disable it or pick another name)")
    user = User(name=name, role=Role(role).value, password_hash=_HASHER.hash(password), created_at=utcnow())
    session.add(user)
    record_event(session, actor, "user.created", name, role=user.role)
    return _user_row(user)


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user, by name: name, role, disabled, created_at and last_login_at (ISO strings or None)."""
    return [_user_row(user) for user in session.scalars(select(User).order_by(User.name))]


def _keep_an_admin(session: Session, user: User) -> None:
    """Refuse to take away the last active admin: nobody could manage users any more."""
    if user.role == Role.ADMIN and user.disabled_at is None:
        admins = session.scalars(select(User).where(User.role == Role.ADMIN, User.disabled_at.is_(None))).all()
        if len(admins) == 1:
            raise Conflict(f"{user.name!r} is the last active admin: create another admin first")


def disable_user(session: Session, *, name: str, actor: str) -> None:
    """Disable user NAME: its sessions end at once and it can no longer log in."""
    user = _find_user(session, name)
    _keep_an_admin(session, user)
    _end_sessions_of(session, user)
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        record_event(session, actor, "user.disabled", name)


def enable_user(session: Session, *, name: str, actor: str) -> None:
    """Let a disabled user NAME log in again, with the password it had."""
    user = _find_user(session, name)
    if user.disabled_at is not None:
        user.disabled_at = None
        record_event(session, actor, "user.enabled", name)


def set_role(session: Session, *, name: str, role: str, actor: str) -> None:
    """Give user NAME another role; its sessions end, so that no page keeps the old role's rights."""
    if role not in {r.value for r in Role}:
        raise ServiceError(f"role must be one of {', '.join(Role)}; got {role!r}")
    user = _find_user(session, name)
    if user.role == role:
        return
    _keep_an_admin(session, user)
    old, user.role = user.role, Role(role).value
    _end_sessions_of(session, user)
    record_event(session, actor, "user.role_changed", name, old=old, new=user.role)


def set_password(session: Session, *, name: str, password: str, actor: str) -> None:
    """Give user NAME a new password (same policy as ``create_user``); its sessions end."""
    _check_password(password)
    user = _find_user(session, name)
    user.password_hash = _HASHER.hash(password)
    _end_sessions_of(session, user)
    record_event(session, actor, "user.password_set", name)


def _retry_after(session: Session, *, settings: Settings, column: Any, value: str, now: datetime) -> float:
    """Seconds until fewer than ``login_attempts`` failures for COLUMN == VALUE are in the window; 0 if there are."""
    window = timedelta(minutes=settings.login_lockout_minutes)
    since = now - window
    last_success = session.scalar(select(func.max(LoginAttempt.at)).where(column == value, LoginAttempt.succeeded.is_(True)))
    failures = list(
        session.scalars(
            select(LoginAttempt.at)
            .where(column == value, LoginAttempt.succeeded.is_(False), LoginAttempt.at > since)
            .order_by(LoginAttempt.at)
        )
    )
    if last_success is not None:
        failures = [at for at in failures if at > last_success]
    if len(failures) < settings.login_attempts:
        return 0.0
    # The failure whose leaving the window brings the count below the limit (the oldest when exactly at it).
    return ((failures[len(failures) - settings.login_attempts] + window) - now).total_seconds()


def authenticate(settings: Settings, name: str, password: str, address: str) -> dict[str, str]:
    """{"name", "role"} of the user whose password this is; LoginThrottled or LoginRefused otherwise.

    ADDRESS is the client's address (throttled like a user name). Every checked attempt is recorded
    and audited; the password never is.
    """
    name_key, address_key = name[:128], address[:64]
    with session_scope(settings.database_url) as session:
        now = utcnow()
        wait = max(
            _retry_after(session, settings=settings, column=LoginAttempt.name, value=name_key, now=now),
            _retry_after(session, settings=settings, column=LoginAttempt.address, value=address_key, now=now),
        )
        if wait > 0:
            record_event(session, "web", "user.login_throttled", name_key, address=address_key, retry_after_s=math.ceil(wait))
    if wait > 0:
        raise LoginThrottled(max(1, math.ceil(wait)))

    dummy = _dummy_hash()  # made on the first login whoever logs in, so that it costs no unknown name extra time
    with session_scope(settings.database_url) as session:
        user = session.scalar(select(User).where(User.name == name)) if NAME_PATTERN.fullmatch(name) else None
        stored = user.password_hash if user is not None else dummy
        try:
            verified = len(password) <= MAX_PASSWORD_CHARS and _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            verified = False
        succeeded = user is not None and verified and user.disabled_at is None
        session.add(LoginAttempt(name=name_key, address=address_key, at=utcnow(), succeeded=succeeded))
        if user is None or not succeeded:
            reason = "unknown_user" if user is None else "wrong_password" if not verified else "disabled"
            record_event(session, "web", "user.login_failed", name_key, address=address_key, reason=reason)
            result = None
        else:
            if _HASHER.check_needs_rehash(user.password_hash):
                user.password_hash = _HASHER.hash(password)
            user.last_login_at = utcnow()
            record_event(session, f"user:{user.name}", "user.login", user.name, address=address_key)
            result = {"name": user.name, "role": user.role}
    if result is None:
        raise LoginRefused()
    return result


def start_session(session: Session, *, settings: Settings, name: str) -> tuple[str, str]:
    """A new browser session for the (authenticated) user NAME: (session token, CSRF token), each shown once.

    Only the session token's sha256 is stored; the session lasts ``settings.session_hours``.
    """
    token, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    user = _find_user(session, name)
    if user.disabled_at is not None:
        raise LoginRefused()
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))  # housekeeping: every expired session
    session.add(
        WebSession(
            token_sha256=token_sha256(token),
            user_id=user.id,
            csrf_token=csrf_token,
            created_at=now,
            expires_at=now + timedelta(hours=settings.session_hours),
            last_seen_at=now,
        )
    )
    return token, csrf_token


def session_user(session: Session, *, token: str) -> dict[str, Any] | None:
    """{"name", "role", "csrf_token", "expires_at"} of a live session of an enabled user, else None.

    An expired session (or one of a disabled user) is deleted; a live one's ``last_seen_at`` is updated.
    """
    if not token:
        return None
    web_session = session.scalar(select(WebSession).where(WebSession.token_sha256 == token_sha256(token)))
    if web_session is None:
        return None
    user = session.get(User, web_session.user_id)
    now = utcnow()
    if web_session.expires_at <= now or user is None or user.disabled_at is not None:
        session.delete(web_session)
        return None
    web_session.last_seen_at = now
    return {
        "name": user.name,
        "role": user.role,
        "csrf_token": web_session.csrf_token,
        "expires_at": web_session.expires_at.isoformat(),
    }


def end_session(session: Session, *, token: str) -> None:
    """Log out: the session of TOKEN is deleted (nothing happens for an unknown token)."""
    if not token:
        return
    web_session = session.scalar(select(WebSession).where(WebSession.token_sha256 == token_sha256(token)))
    if web_session is None:
        return
    user = session.get(User, web_session.user_id)
    session.delete(web_session)
    name = user.name if user is not None else f"user id {web_session.user_id}"
    record_event(session, f"user:{name}", "user.logout", name)


def has_role(role: str, needed: str) -> bool:
    """Whether ROLE may do what NEEDED may (a role may do everything of the roles ranked below it)."""
    if role not in {r.value for r in Role}:
        return False
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)]
