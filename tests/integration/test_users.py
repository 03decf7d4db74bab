"""Web console users on a real (SQLite) database: accounts, the password policy, login throttling by name and by
address, browser sessions and their expiry, sign-off rights, the audit trail, and `bloodcell users`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from helpers import PROJECT, run_cli
from servers import settings_for
from sqlalchemy import select, update

from bloodcell_core.clients.local import Client
from bloodcell_core.config import ROLES
from bloodcell_core.service import db, signoff, users
from bloodcell_core.service.audit_log import audit_events
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.results import AuditEventInfo
from bloodcell_core.service.states import ROLE_RANK, Role
from bloodcell_core.service.tables import LoginAttempt, User, WebSession

PASSWORD = "correct horse battery"
ADDRESS = "192.0.2.10"


def audit(settings, subject: str | None = None) -> list[AuditEventInfo]:
    with db.session_scope(settings.database_url) as session:
        return audit_events(session, subject=subject)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'bloodcell.db'}"}
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    return env


@pytest.fixture
def settings(env):
    return settings_for(env)


@pytest.fixture
def client(settings) -> Client:
    """The in-process client: each call one transaction, as the console's pages make them."""
    return Client(settings)


def age_login_attempts(settings, minutes: float) -> None:
    """Move every recorded login attempt MINUTES into the past (instead of sleeping through the window)."""
    with db.session_scope(settings.database_url) as session:
        for attempt in session.scalars(select(LoginAttempt)):
            attempt.at = attempt.at - timedelta(minutes=minutes)


def fail_logins(settings, name: str, times: int, address: str = ADDRESS) -> None:
    for _ in range(times):
        with pytest.raises(users.LoginRefused):
            users.authenticate(settings, name, "not the password", address)


def test_roles_settings_and_ranks_agree():
    assert ROLES == tuple(Role) and sorted(ROLE_RANK, key=ROLE_RANK.__getitem__) == list(Role)
    defaults = settings_for({})
    assert (defaults.session_hours, defaults.login_attempts, defaults.login_lockout_minutes) == (8, 5, 15)
    assert defaults.signoff_blast_role == "supervisor"
    defaults.validate()
    for name, value in [
        ("BLOODCELL_SIGNOFF_BLAST_ROLE", "boss"),
        ("BLOODCELL_SESSION_HOURS", "0"),
        ("BLOODCELL_LOGIN_ATTEMPTS", "0"),
        ("BLOODCELL_LOGIN_LOCKOUT_MINUTES", "-1"),
    ]:
        with pytest.raises(ValueError, match=name):
            settings_for({name: value}).validate()
    assert settings_for({"BLOODCELL_SIGNOFF_BLAST_ROLE": "Admin"}).signoff_blast_role == "admin"


def test_create_list_disable_and_set_password(settings, client):
    created = client.create_user("alice", "technologist", PASSWORD, "cli:test")
    assert created == {**created, "name": "alice", "role": "technologist", "disabled": False, "last_login_at": None}
    client.create_user("bob.s_2-x", Role.SUPERVISOR, PASSWORD, "cli:test")
    rows = client.list_users()
    assert [(r["name"], r["role"], r["disabled"]) for r in rows] == [
        ("alice", "technologist", False),
        ("bob.s_2-x", "supervisor", False),
    ]
    assert datetime.fromisoformat(rows[0]["created_at"]).tzinfo is not None
    assert all("password" not in key for row in rows for key in row)

    with db.session_scope(settings.database_url) as session:
        stored = session.scalar(select(User.password_hash).where(User.name == "alice"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored

    client.set_user_password("alice", "a brand new password", "cli:test")
    with pytest.raises(users.LoginRefused):
        users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    assert users.authenticate(settings, "alice", "a brand new password", ADDRESS) == {"name": "alice", "role": "technologist"}
    assert client.list_users()[0]["last_login_at"] is not None

    client.disable_user("alice", "cli:test")
    client.disable_user("alice", "cli:test")  # again: nothing more happens
    assert client.list_users()[0]["disabled"] is True
    with pytest.raises(NotFound):
        client.disable_user("nobody", "cli:test")
    with pytest.raises(NotFound):
        client.set_user_password("nobody", PASSWORD, "cli:test")
    actions = [e.action for e in audit(settings) if e.subject == "alice"]
    assert actions.count("user.disabled") == 1 and "user.password_set" in actions and "user.created" in actions


def test_names_roles_passwords_and_duplicates_are_checked(client):
    for name in ["", "-alice", "al ice", "alice/..", "ålice", "a" * 129, "alice\n"]:
        with pytest.raises(ServiceError, match="invalid user name"):
            client.create_user(name, "technologist", PASSWORD, "cli:test")
    client.create_user("a" * 128, "admin", PASSWORD, "cli:test")
    with pytest.raises(ServiceError, match="role must be one of"):
        client.create_user("carol", "root", PASSWORD, "cli:test")
    for password in ["", "short", "nine char"]:
        with pytest.raises(ServiceError, match="at least 10 characters"):
            client.create_user("carol", "technologist", password, "cli:test")
    with pytest.raises(ServiceError, match="at most"):
        client.create_user("carol", "technologist", "x" * 1025, "cli:test")
    client.create_user("carol", "technologist", "ten chars!", "cli:test")
    with pytest.raises(Conflict):
        client.create_user("carol", "admin", PASSWORD, "cli:test")
    with pytest.raises(ServiceError, match="at least 10 characters"):
        client.set_user_password("carol", "short", "cli:test")
    assert [r["name"] for r in client.list_users()] == ["a" * 128, "carol"]


def test_wrong_password_unknown_user_and_disabled_user_are_refused_alike(settings, client):
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    client.create_user("dave", "technologist", PASSWORD, "cli:test")
    client.disable_user("dave", "cli:test")
    messages = []
    for name, password in [
        ("alice", "wrong password!"),
        ("nobody", PASSWORD),
        ("dave", PASSWORD),
        ("bad name!", PASSWORD),
        ("alice", ""),
    ]:
        with pytest.raises(users.LoginRefused) as refused:
            users.authenticate(settings, name, password, ADDRESS)
        messages.append(str(refused.value))
    assert set(messages) == {"unknown user name or wrong password"}
    with db.session_scope(settings.database_url) as session:
        attempts = [(a.name, a.address, a.succeeded) for a in session.scalars(select(LoginAttempt).order_by(LoginAttempt.id))]
    assert attempts == [(n, ADDRESS, False) for n in ["alice", "nobody", "dave", "bad name!", "alice"]]


def test_login_succeeds_and_rehashes_an_outdated_hash(settings, client):
    client.create_user("alice", "supervisor", PASSWORD, "cli:test")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with db.session_scope(settings.database_url) as session:
        session.execute(update(User).where(User.name == "alice").values(password_hash=weak))
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS) == {"name": "alice", "role": "supervisor"}
    with db.session_scope(settings.database_url) as session:
        rehashed = session.scalar(select(User.password_hash).where(User.name == "alice"))
    assert rehashed != weak and not PasswordHasher().check_needs_rehash(rehashed)
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS)["name"] == "alice"


def test_failed_logins_for_a_name_throttle_it_until_the_window_has_passed(env):
    settings = settings_for({**env, "BLOODCELL_LOGIN_ATTEMPTS": "3", "BLOODCELL_LOGIN_LOCKOUT_MINUTES": "10"})
    client = Client(settings)
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    fail_logins(settings, "alice", 3, address="192.0.2.1")
    with pytest.raises(users.LoginThrottled) as throttled:  # even with the right password, from another address
        users.authenticate(settings, "alice", PASSWORD, "198.51.100.7")
    assert 590 <= throttled.value.retry_after_s <= 600 and "try again" in str(throttled.value)
    with db.session_scope(settings.database_url) as session:  # refused unchecked: not counted
        assert len(list(session.scalars(select(LoginAttempt)))) == 3
    with pytest.raises(users.LoginRefused):  # other names are not throttled (bob does not exist: refused, not throttled)
        users.authenticate(settings, "bob", PASSWORD, "198.51.100.7")

    age_login_attempts(settings, 9)
    with pytest.raises(users.LoginThrottled) as throttled:
        users.authenticate(settings, "alice", PASSWORD, "198.51.100.7")
    assert 50 <= throttled.value.retry_after_s <= 60
    age_login_attempts(settings, 1.1)
    assert users.authenticate(settings, "alice", PASSWORD, "198.51.100.7")["name"] == "alice"


def test_failed_logins_from_an_address_throttle_it_for_every_name(env):
    settings = settings_for({**env, "BLOODCELL_LOGIN_ATTEMPTS": "3"})
    client = Client(settings)
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    for name in ["x1", "x2", "x3"]:
        fail_logins(settings, name, 1)
    with pytest.raises(users.LoginThrottled) as throttled:
        users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    assert 0 < throttled.value.retry_after_s <= 15 * 60
    assert users.authenticate(settings, "alice", PASSWORD, "192.0.2.99")["name"] == "alice"  # another address
    age_login_attempts(settings, 15.1)
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS)["name"] == "alice"


def test_a_success_restarts_the_count_and_a_short_window_passes(env):
    settings = settings_for({**env, "BLOODCELL_LOGIN_ATTEMPTS": "2", "BLOODCELL_LOGIN_LOCKOUT_MINUTES": "0.02"})
    client = Client(settings)
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    fail_logins(settings, "alice", 1)
    users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    fail_logins(settings, "alice", 1)  # one failure since the success: under the limit
    users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    fail_logins(settings, "alice", 2)
    with pytest.raises(users.LoginThrottled) as throttled:
        users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    assert 1 <= throttled.value.retry_after_s <= 2
    time.sleep(1.3)
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS)["name"] == "alice"


def test_sessions_start_identify_and_end(settings, client):
    client.create_user("alice", "supervisor", PASSWORD, "cli:test")
    token, csrf = client.start_session("alice")
    other, other_csrf = client.start_session("alice")
    assert len({token, csrf, other, other_csrf}) == 4 and min(map(len, [token, csrf])) >= 43
    with db.session_scope(settings.database_url) as session:
        stored = [s.token_sha256 for s in session.scalars(select(WebSession))]
    assert len(stored) == 2 and token not in stored and all(len(s) == 64 for s in stored)

    live = client.session_user(token)
    assert live is not None and (live["name"], live["role"], live["csrf_token"]) == ("alice", "supervisor", csrf)
    expires = datetime.fromisoformat(live["expires_at"])
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(hours=8))) < timedelta(minutes=1)
    assert client.session_user("not a token") is None and client.session_user("") is None

    client.end_session(token)
    client.end_session(token)  # again: nothing
    assert client.session_user(token) is None
    assert client.session_user(other) is not None
    with pytest.raises(NotFound):
        client.start_session("nobody")
    logouts = [e for e in audit(settings) if e.action == "user.logout"]
    assert [(e.actor, e.subject) for e in logouts] == [("user:alice", "alice")]


def test_expired_sessions_are_refused_and_deleted(env):
    settings = settings_for({**env, "BLOODCELL_SESSION_HOURS": "0.0002"})  # 0.72 s
    client = Client(settings)
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    token, _ = client.start_session("alice")
    assert client.session_user(token) is not None
    time.sleep(1.0)
    assert client.session_user(token) is None
    with db.session_scope(settings.database_url) as session:
        assert list(session.scalars(select(WebSession))) == []


def test_disabling_a_user_or_setting_its_password_ends_its_sessions(settings, client):
    client.create_user("alice", "technologist", PASSWORD, "cli:test")
    client.create_user("bob", "technologist", PASSWORD, "cli:test")
    alice, _ = client.start_session("alice")
    bob, _ = client.start_session("bob")
    client.set_user_password("bob", "another long password", "cli:test")
    assert client.session_user(bob) is None and client.session_user(alice) is not None
    client.disable_user("alice", "cli:test")
    assert client.session_user(alice) is None
    with pytest.raises(users.LoginRefused):
        client.start_session("alice")
    with db.session_scope(settings.database_url) as session:
        assert list(session.scalars(select(WebSession))) == []


@pytest.mark.parametrize(
    "blast_role, allowed_with_blasts",
    [("technologist", {"technologist", "supervisor", "admin"}), ("supervisor", {"supervisor", "admin"}), ("admin", {"admin"})],
)
def test_who_may_sign_off(blast_role, allowed_with_blasts):
    settings = settings_for({"BLOODCELL_SIGNOFF_BLAST_ROLE": blast_role})
    for role in Role:
        assert signoff.may_sign_off(settings, role, blast_flag=False)
        assert signoff.may_sign_off(settings, role.value, blast_flag=True) == (role in allowed_with_blasts)
    assert not signoff.may_sign_off(settings, "root", blast_flag=False)
    assert users.has_role("admin", "technologist") and users.has_role("supervisor", "supervisor")
    assert not users.has_role("technologist", "supervisor") and not users.has_role("root", "technologist")


def test_the_last_active_admin_cannot_be_disabled(client):
    client.create_user("root", "admin", PASSWORD, "cli:root")
    with pytest.raises(Conflict, match="last active admin"):
        client.disable_user("root", "cli:root")
    client.create_user("root2", "admin", PASSWORD, "cli:root")
    client.disable_user("root", "cli:root")
    assert [u["disabled"] for u in client.list_users() if u["name"] == "root"] == [True]


def test_a_user_is_re_enabled_and_changes_role_with_audit_events_and_the_last_admin_kept(env, settings, client):
    client.create_user("root", "admin", PASSWORD, "cli:root")
    client.create_user("alice", "technologist", PASSWORD, "cli:root")
    token, _ = client.start_session("alice")
    client.disable_user("alice", "cli:root")
    client.enable_user("alice", "cli:root")
    client.enable_user("alice", "cli:root")  # again: nothing more happens
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS) == {"name": "alice", "role": "technologist"}
    token, _ = client.start_session("alice")
    client.set_user_role("alice", "supervisor", "cli:root")
    assert client.session_user(token) is None  # no page keeps the old role
    assert [u["role"] for u in client.list_users() if u["name"] == "alice"] == ["supervisor"]
    with pytest.raises(ServiceError, match="role must be one of"):
        client.set_user_role("alice", "root", "cli:root")
    with pytest.raises(Conflict, match="last active admin"):
        client.set_user_role("root", "supervisor", "cli:root")
    events = [(e.action, e.details) for e in reversed(audit(settings, subject="alice"))]
    assert ("user.enabled", {}) in events and ("user.role_changed", {"old": "technologist", "new": "supervisor"}) in events
    assert [action for action, _ in events].count("user.enabled") == 1

    assert "enabled alice" in run_cli("users", "enable", "alice", env=env).stdout
    assert "alice is now admin" in run_cli("users", "set-role", "alice", "admin", env=env).stdout
    assert bloodcell("users", "set-role", "alice", "root", env=env).returncode == 2


def test_the_audit_log_records_accounts_and_logins_never_passwords(settings, client):
    client.create_user("alice", "supervisor", PASSWORD, "cli:root")
    client.set_user_password("alice", "second password!", "cli:root")
    users.authenticate(settings, "alice", "second password!", ADDRESS)
    with pytest.raises(users.LoginRefused):
        users.authenticate(settings, "alice", PASSWORD, ADDRESS)
    token, _ = client.start_session("alice")
    client.end_session(token)
    client.disable_user("alice", "cli:root")
    events = list(reversed(audit(settings)))
    assert [(e.actor, e.action, e.subject) for e in events] == [
        ("cli:root", "user.created", "alice"),
        ("cli:root", "user.password_set", "alice"),
        ("user:alice", "user.login", "alice"),
        ("web", "user.login_failed", "alice"),
        ("user:alice", "user.logout", "alice"),
        ("cli:root", "user.disabled", "alice"),
    ]
    assert events[0].details == {"role": "supervisor"} and events[2].details == {"address": ADDRESS}
    dumped = json.dumps([e.model_dump(mode="json") for e in events])
    assert PASSWORD not in dumped and "second password!" not in dumped and "$argon2" not in dumped and token not in dumped


def bloodcell(*args: str, env: dict[str, str], input: str | None = None, **options) -> subprocess.CompletedProcess:
    """`bloodcell ARGS` in a fresh process with text on its standard input (run_cli takes none)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "bloodcell"), *args],
        input=input,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=PROJECT,
        **options,
    )


def test_the_users_command(env, settings):
    help_text = run_cli("users", "--help", env=env).stdout
    assert all(command in help_text for command in ["create", "list", "disable", "set-password"])
    assert "--password-stdin" in run_cli("users", "create", "--help", env=env).stdout

    created = bloodcell("users", "create", "alice", "--role", "supervisor", "--password-stdin", env=env, input=PASSWORD + "\n")
    assert created.returncode == 0 and "created user alice (supervisor)" in created.stdout, created.stderr
    assert PASSWORD not in created.stdout + created.stderr
    assert users.authenticate(settings, "alice", PASSWORD, ADDRESS) == {"name": "alice", "role": "supervisor"}
    assert [e.actor for e in audit(settings, subject="alice") if e.action == "user.created"][0].startswith("cli:")

    again = bloodcell("users", "create", "alice", "--role", "admin", "--password-stdin", env=env, input=PASSWORD + "\n")
    assert again.returncode == 1 and "exists already" in again.stderr and "Traceback" not in again.stderr
    short = bloodcell("users", "create", "bob", "--role", "admin", "--password-stdin", env=env, input="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    bad_role = bloodcell("users", "create", "bob", "--role", "root", "--password-stdin", env=env, input=PASSWORD + "\n")
    assert bad_role.returncode == 2

    # Without --password-stdin the password is typed twice, unechoed (read from stdin here: no terminal).
    prompted = bloodcell(
        "users", "create", "bob", "--role", "technologist", env=env, input=f"{PASSWORD}\n{PASSWORD}\n", start_new_session=True
    )
    assert prompted.returncode == 0, prompted.stderr
    assert PASSWORD not in prompted.stdout
    assert users.authenticate(settings, "bob", PASSWORD, ADDRESS)["role"] == "technologist"

    listed = json.loads(run_cli("users", "list", "--json", env=env).stdout)
    assert [(r["name"], r["role"], r["disabled"]) for r in listed] == [("alice", "supervisor", False), ("bob", "technologist", False)]
    assert "alice" in run_cli("users", "list", env=env).stdout

    reset = bloodcell("users", "set-password", "alice", "--password-stdin", env=env, input="a new long password\n")
    assert reset.returncode == 0, reset.stderr
    assert users.authenticate(settings, "alice", "a new long password", ADDRESS)["name"] == "alice"

    assert "disabled alice" in run_cli("users", "disable", "alice", env=env).stdout
    assert json.loads(run_cli("users", "list", "--json", env=env).stdout)[0]["disabled"] is True
    missing = run_cli("users", "disable", "nobody", env=env, check=False)
    assert missing.returncode == 1 and "no user named 'nobody'" in missing.stderr


def test_the_users_command_refuses_an_unmigrated_database(tmp_path):
    env = {"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = run_cli("users", "list", env=env, check=False)
    assert result.returncode == 1 and "bloodcell db upgrade" in result.stderr and "Traceback" not in result.stderr
