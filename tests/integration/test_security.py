"""Security guarantees: pickle refused by the worker, Flower behind a login, secrets only from the environment,
and a dependency vulnerability audit (pip-audit) wherever its database can be reached.

The API's token checks on every route are in tests/integration/test_api.py; `bloodcell up`'s one-off Flower password in
tests/integration/test_service.py::test_local_stack_up_submit_flower_down.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import DEFAULT_MODEL, PROJECT, run_cli, unseen_images
from servers import RedisServer, Stack, free_port, settings_for, wait_port

pytestmark = [pytest.mark.security, pytest.mark.real_data]


# --- the worker refuses pickle ------------------------------------------------------------------------------


class CreatesFile:
    """Unpickling this object creates a file: a stand-in for arbitrary code run by pickle.loads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    """A redis-server of this module's own: no queue or database number shared with other modules."""
    server = RedisServer(tmp_path_factory.mktemp("redis-security")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker_stack(redis, tmp_path_factory):
    home = tmp_path_factory.mktemp("home-security")
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis.url}/0",
        "BLOODCELL_RESULT_BACKEND": f"{redis.url}/1",
        "BLOODCELL_DATABASE_URL": f"sqlite:///{home / 'bloodcell.db'}",
        "BLOODCELL_IMAGE_STORE": "file",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
    }
    run_cli("db", "upgrade", env=env)
    stack = Stack(env=env, settings=settings_for(env))
    stack.start_worker("sec-w1")
    yield stack
    stack.stop_workers()


def test_worker_refuses_a_pickled_task_sent_straight_to_redis(worker_stack: Stack, tmp_path: Path):
    from celery import Celery

    from bloodcell_core.service.queues import CLASSIFY_QUEUE, task_queues

    control, marker = tmp_path / "control", tmp_path / "pwned"
    pickle.loads(pickle.dumps(CreatesFile(control)))
    assert control.exists()  # the payload works: unpickling it is enough to run code

    attacker = Celery("attacker", broker=worker_stack.settings.broker_url)
    attacker.conf.update(task_serializer="pickle", accept_content=["pickle", "json"], task_queues=task_queues())
    try:
        attacker.send_task(
            "bloodcell.classify_sample",
            args=[CreatesFile(marker)],
            kwargs={},
            queue=CLASSIFY_QUEUE,
            serializer="pickle",
            task_id="pickle-attack-1",
        )
    finally:
        attacker.close()

    log = Path(worker_stack.env["BLOODCELL_HOME"]) / "sec-w1.log"
    refusal = "Refusing to deserialize untrusted content of type pickle"
    deadline = time.monotonic() + 60
    while refusal not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    assert "discarded" in log.read_text(errors="replace")

    # still alive, still serving JSON tasks; the payload never ran
    worker = worker_stack.workers[0]
    assert worker.poll() is None
    image = unseen_images("monocyte", 1)[0].read_bytes()
    result = worker_stack.client().classify_image(image, timeout=120)
    assert result["label"] and 0 <= result["confidence"] <= 1
    assert worker.poll() is None and not marker.exists()


# --- Flower requires a login --------------------------------------------------------------------------------


def _flower_status(url: str, credentials: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()} if credentials else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def test_flower_uses_the_configured_logins_and_refuses_malformed_ones(redis, tmp_path: Path, monkeypatch):
    from bloodcell_core.cli.stack import StackError, down, flower_credentials, start_flower

    for malformed in ("ops", "ops:", ":pass", "ops:good,auditor"):
        with pytest.raises(StackError, match="user:password"):
            flower_credentials(settings_for({"BLOODCELL_FLOWER_BASIC_AUTH": malformed}))
    logins = "ops:flower-test-only-1,auditor:flower-test-only-2"  # throwaway values for this test
    env = {
        "BLOODCELL_HOME": str(tmp_path),
        "BLOODCELL_BROKER_URL": f"{redis.url}/2",
        "BLOODCELL_FLOWER_PORT": str(free_port()),
        "BLOODCELL_FLOWER_BASIC_AUTH": logins,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_for(env)
    try:
        assert start_flower(settings) == "from BLOODCELL_FLOWER_BASIC_AUTH"
        wait_port(settings.flower_port, timeout=60)
        url = f"http://127.0.0.1:{settings.flower_port}"
        # /metrics too: Flower itself leaves it open, workers/flower.py adds the login
        for page in ("/", "/api/workers", "/api/tasks", "/metrics"):
            assert _flower_status(url + page) == 401, page
            assert _flower_status(url + page, "ops:wrong") == 401, page
        assert _flower_status(url + "/", "ops:flower-test-only-1") == 200
        assert _flower_status(url + "/metrics", "ops:flower-test-only-1") == 200
        assert _flower_status(url + "/healthcheck") == 200  # says only "OK": compose's health check
        assert _flower_status(url + "/api/workers", "auditor:flower-test-only-2") == 200
        pid = (tmp_path / "run" / "flower.pid").read_text().strip()
        assert "flower-test-only" not in Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        # Flower is this process's child here: reap it, or `down` waits 30 s for a zombie
        if (pid_file := tmp_path / "run" / "flower.pid").exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
        down(settings)


# --- secrets come only from the environment -----------------------------------------------------------------

SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|api_?key|basic_auth|credential")


def test_compose_takes_every_secret_from_the_environment_without_default():
    text = (PROJECT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    required = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}$")
    secrets_seen, url_passwords = [], 0
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                secrets_seen.append(key)
                assert required.match(value), f"{name}.{key} must be ${{VAR:?message}}, not {value!r}"
            for password in re.findall(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@\s]*)@", value):
                assert required.match(password), f"{name}.{key}: the password in the URL must be ${{VAR:?message}}"
                url_passwords += 1
    assert {"POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"} <= set(secrets_seen) and url_passwords  # BLOODCELL_DATABASE_URL
    # no secret variable anywhere in the file with a fallback (${VAR:-x}, ${VAR-x}) or a plain ${VAR}
    for variable, operator in re.findall(r"\$\{(\w+)(:?[-?+]|\})", text):
        if SECRET_NAME.search(variable):
            assert operator == ":?", f"${{{variable}}} must be required (:?) with no default"


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        (
            "postgresql+psycopg://bloodcell:not-shown-0451@postgres:5432/bloodcell",
            "postgresql+psycopg://bloodcell:***@postgres:5432/bloodcell",
        ),
        ("redis://:not-shown-0451@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://default:p%40ss@[::1]:6379/1", "redis://default:***@[::1]:6379/1"),
        ("postgresql+psycopg://bloodcell@postgres/bloodcell", "postgresql+psycopg://bloodcell@postgres/bloodcell"),
        ("sqlite:////var/lib/bloodcell/bloodcell.db", "sqlite:////var/lib/bloodcell/bloodcell.db"),
    ],
)
def test_masked_url_hides_only_the_password(url: str, printed: str):
    from bloodcell_core.config import masked_url

    assert masked_url(url) == printed


def test_database_urls_are_printed_without_their_password(postgres_server):
    """`bloodcell db upgrade` (compose's migrate service) says which database it migrated, and an unmigrated database
    is named in the refusal: the password in neither (the test server trusts every login, so any password connects)."""
    from bloodcell_core.service.db import DatabaseNotMigrated, require_migrated

    migrated = postgres_server.create_database("bloodcell_masked").replace("postgres@", "postgres:not-shown-0451@")
    printed = run_cli("db", "upgrade", env={"BLOODCELL_DATABASE_URL": migrated}).stdout
    assert printed == f"database migrated: {migrated.replace('not-shown-0451', '***')}\n"
    empty = postgres_server.create_database("bloodcell_masked_empty").replace("postgres@", "postgres:not-shown-0451@")
    with pytest.raises(DatabaseNotMigrated) as refused:
        require_migrated(empty)
    assert "not-shown-0451" not in str(refused.value) and "postgres:***@" in str(refused.value)


def test_settings_have_no_secret_defaults(monkeypatch):
    from bloodcell_core.config import Settings

    for name in [n for n in os.environ if n.startswith("BLOODCELL_")]:
        monkeypatch.delenv(name)
    defaults = Settings.from_env()
    secret_fields = [name for name in Settings.model_fields if SECRET_NAME.search(name)]
    assert "flower_basic_auth" in secret_fields
    assert all(getattr(defaults, name) == "" for name in secret_fields)
    for name, value in vars(defaults).items():
        assert not re.search(r"://[^/\s:@]+:[^@\s]+@", str(value)), f"{name} has a password in its default"


PLACEHOLDERS = {"password", "<password>", "...", "***", "ops:...", "user:password", "your-password"}  # ***: a masked URL
PRIVATE_KEY = re.compile("-----BEGIN [A-Z ]*PRIVATE KEY" + "-----")
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:([^\s/@'\"]+)@")
# NAME = "literal" / "name": "literal" in code; NAME=value / NAME: value in shell, compose, .env and docs
QUOTED = re.compile(r"""(?i)\b\w*(?:password|passwd|secret|token|api_?key|basic_auth)\w*["']?\s*[:=]\s*(["'])([^"'\s]{6,})\1""")
UNQUOTED = re.compile(
    r"""(?i)\b\w*(?:password|passwd|secret|api_?key|basic_auth)\w*\s*[:=][ \t]*"""
    r"""([^\s"'`(),\[\]{}?$-][^\s"'`(),\[\]{}]{2,})"""
)  # not ${VAR:?...} nor :?message
NOT_VALUES = {"str", "bytes", "None"}  # type annotations in the README's Python examples


def literal_secrets(path: str, text: str) -> list[str]:
    """Lines of one file that look like a hard-coded secret."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        hits = [m[1] for m in URL_PASSWORD.finditer(line)] + [m[2] for m in QUOTED.finditer(line)]
        if not path.endswith(".py"):  # in code an unquoted value is an expression, not a literal
            hits += [m[1] for m in UNQUOTED.finditer(line)]
        hits = [h for h in hits if not h.startswith(("$", "<")) and h not in PLACEHOLDERS | NOT_VALUES]
        if hits or PRIVATE_KEY.search(line):
            found.append(f"{path}:{number}: {line.strip()[:120]}")
    return found


def test_secret_scanner_finds_what_it_looks_for():
    assert literal_secrets("a.py", 'DATABASE = "postgresql://bloodcell:hunter22@db/bloodcell"')
    assert literal_secrets("a.py", 'webhook_secret = "0123456789abcdef"')
    assert literal_secrets("a.py", '{"api_key": "sk_live_abcdef"}')
    assert literal_secrets(".env", "POSTGRES_PASSWORD=hunter22")
    assert literal_secrets("compose.yml", "      BLOODCELL_FLOWER_BASIC_AUTH: ops:hunter22")
    assert literal_secrets("key.pem", "-----BEGIN RSA PRIVATE KEY" + "-----")
    assert not literal_secrets("a.py", "secret = secrets.token_hex(32) if webhook_url else None")
    assert not literal_secrets("a.yml", "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}")
    assert not literal_secrets("README.md", "`BLOODCELL_DATABASE_URL=postgresql+psycopg://user:password@host/db`")


def test_no_literal_secrets_in_the_repository():
    """Code, compose, scripts and docs: tracked files and new ones not ignored. Tests keep throwaway values of
    their own (test servers, fake tokens), so tests/ is scanned for private keys only."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    found = []
    for path in filter(None, listed):
        file = PROJECT / path
        if not file.is_file():
            continue
        try:
            text = file.read_text()
        except UnicodeDecodeError:
            continue  # binary (images, model weights)
        if path.startswith("tests/"):
            found += [f"{path}: private key" for line in text.splitlines() if PRIVATE_KEY.search(line)]
        else:
            found += literal_secrets(path, text)
    assert not found, "hard-coded secrets (take them from the environment):\n" + "\n".join(found)
    assert ".env" in (PROJECT / ".gitignore").read_text().split()  # compose reads secrets from an .env file


# --- dependency vulnerabilities -----------------------------------------------------------------------------

# Vulnerability ID -> why it is accepted. Only for a vulnerability that has no fixed release yet.
IGNORED_VULNERABILITIES: dict[str, str] = {}
UNREACHABLE = re.compile(
    r"ConnectionError|NameResolutionError|Failed to resolve|Max retries exceeded|timed out|"
    r"Temporary failure in name resolution|Network is unreachable|Connection refused|"
    r"ConnectTimeout|ReadTimeout|SSLError|ProxyError|HTTPError|ServiceError"
)


def test_dependencies_have_no_known_vulnerabilities():
    """pip-audit over this environment: OSV first, then PyPI's JSON API. Skipped, saying why, when neither
    database answers for the installed packages; fails on any known vulnerability."""
    import pip_audit  # noqa: F401  (installed with the test extras: a missing audit is a setup error)

    reasons = []
    for source in ("osv", "pypi"):
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--local",
            "--skip-editable",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--timeout",
            "30",
            "--vulnerability-service",
            source,
            *[arg for vuln in IGNORED_VULNERABILITIES for arg in ("--ignore-vuln", vuln)],
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            reasons.append(f"{source}: no answer within 900 s")
            continue
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            error = (result.stderr.strip().splitlines() or ["no output"])[-1]
            assert UNREACHABLE.search(result.stderr), f"pip-audit ({source}) failed:\n{result.stderr[-3000:]}"
            reasons.append(f"{source}: {error[:300]}")
            continue
        dependencies = [d for d in report["dependencies"] if d["name"] != "bloodcell"]  # the project: not on PyPI
        vulnerable = [
            f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or 'no release yet'})"
            for d in dependencies
            for v in d.get("vulns", [])
        ]
        assert not vulnerable, f"pip-audit ({source}) found known vulnerabilities:\n" + "\n".join(vulnerable)
        skipped = [d for d in dependencies if "skip_reason" in d]
        if not skipped:
            return  # every installed package audited, none vulnerable
        reasons.append(
            f"{source}: audited {len(dependencies) - len(skipped)} of {len(dependencies)} packages (e.g. {skipped[0]['skip_reason']})"
        )
    pytest.skip("pip-audit could not reach its vulnerability database for the installed packages: " + "; ".join(reasons))
