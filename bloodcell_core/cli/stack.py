"""`bloodcell up` / `bloodcell down`: the local stack on embedded defaults, in the background.

A redis-server process (AOF on), the SQLite database migrated, the shipped model registered as
production, Celery worker(s), Celery beat (the periodic sweep), Flower and the HTTP API. Process ids and logs
live in BLOODCELL_HOME/run and /log, beat's schedule file in /run.
Flower never runs without a login: BLOODCELL_FLOWER_BASIC_AUTH, or a one-off password made for each start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bloodcell_core.config import Settings, masked_url
from bloodcell_core.service.db import upgrade
from bloodcell_core.service.queues import worker_queues
from bloodcell_core.service.versions import ensure_production_model


class StackError(RuntimeError):
    pass


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for(check, what: str, timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
    raise StackError(f"{what} did not come up within {timeout:.0f} s{tail}")


def _running(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if _exited(pid):
        return None
    return pid


def _exited(pid: int) -> bool:
    """A process that has ended but was not yet reaped (a zombie: `up` ran in this process) has exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    if state != "Z":
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
    except ChildProcessError:
        pass
    return True


def _spawn(name: str, command: list[str], settings: Settings, env: dict[str, str] | None = None) -> int:
    run_dir, log_dir = settings.home / "run", settings.home / "log"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / f"{name}.pid"
    if (pid := _running(pid_file)) is not None:
        return pid
    with open(log_dir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "BLOODCELL_HOME": str(settings.home), **(env or {})},
        )
    pid_file.write_text(str(process.pid))
    return process.pid


def start_redis(settings: Settings) -> None:
    if _port_open(settings.redis_port):
        return  # a Redis is already serving this port
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is not installed: run scripts/install-services (Debian package redis-server)")
    data = settings.home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    _spawn(
        "redis",
        [binary, "--port", str(settings.redis_port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes", "--save", ""],
        settings,
    )
    _wait_for(lambda: _port_open(settings.redis_port), "redis-server", 20, settings.home / "log" / "redis.log")


def _celery(*args: str, app: str = "workers.app") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, *args]


def worker_command(settings: Settings, concurrency: int = 1, name: str = "worker") -> list[str]:
    queues = ",".join(worker_queues(settings.worker_device))
    return _celery(
        "worker",
        "--loglevel",
        "INFO",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--pool",
        "prefork",
    )


def beat_command(settings: Settings) -> list[str]:
    """Celery beat, which sends the sweep every BLOODCELL_SWEEP_INTERVAL_S; its schedule file in BLOODCELL_HOME/run."""
    run_dir = settings.home / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return _celery("beat", "--loglevel", "INFO", "--schedule", str(run_dir / "beat-schedule"))


def api_command(settings: Settings, host: str | None = None, port: int | None = None) -> list[str]:
    """uvicorn for the API. Forwarded headers (X-Forwarded-For, -Proto) are believed only from
    BLOODCELL_TRUSTED_PROXIES: uvicorn's own default trusts 127.0.0.1, so anything on the machine could
    pose as any address (and dodge the per-address login throttle)."""
    proxies = (
        ["--proxy-headers", "--forwarded-allow-ips", ",".join(settings.trusted_proxies)]
        if settings.trusted_proxies
        else ["--no-proxy-headers"]
    )
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host or settings.api_host,
        "--port",
        str(port or settings.api_port),
        "--no-server-header",
        *proxies,
    ]


FLOWER_USER = "ops"  # the user of the one-off login when BLOODCELL_FLOWER_BASIC_AUTH is empty


def flower_credentials(settings: Settings) -> tuple[str, bool]:
    """Flower's ``user:password[,user:password...]`` and whether it was generated for this start."""
    if not settings.flower_basic_auth:
        return f"{FLOWER_USER}:{secrets.token_urlsafe(18)}", True
    for entry in settings.flower_basic_auth.split(","):  # Flower splits on commas too
        user, _, password = entry.partition(":")
        if not user.strip() or not password:
            raise StackError("BLOODCELL_FLOWER_BASIC_AUTH must be user:password (several separated by commas)")
    return settings.flower_basic_auth, False


def start_flower(settings: Settings) -> str:
    """Start Flower behind HTTP basic auth; returns what `up` prints about its login.

    The credentials reach Flower in its environment (FLOWER_BASIC_AUTH), never on its command line, which
    every local user can read in `ps`. A generated password is printed once by `up` and stored nowhere.
    """
    if _running(settings.home / "run" / "flower.pid") is not None:
        return "unchanged (Flower was already running)"
    credentials, generated = flower_credentials(settings)
    # Flower parses its own options with tornado: --name=value only
    _spawn(
        "flower",
        # workers.flower: the same app, with Flower's /metrics behind its login too
        _celery("flower", f"--port={settings.flower_port}", "--address=127.0.0.1", app="workers.flower"),
        settings,
        env={"FLOWER_BASIC_AUTH": credentials},
    )
    if generated:
        user, _, password = credentials.partition(":")
        return (
            f"user {user}, password {password} (made for this start, stored nowhere; "
            "set BLOODCELL_FLOWER_BASIC_AUTH=user:password to choose one)"
        )
    return "from BLOODCELL_FLOWER_BASIC_AUTH"


def up(settings: Settings, workers: int = 1, flower: bool = True, api: bool = True) -> dict[str, str]:
    settings.validate()
    if flower:
        flower_credentials(settings)  # refuse a malformed BLOODCELL_FLOWER_BASIC_AUTH before starting anything
    settings.home.mkdir(parents=True, exist_ok=True)
    start_redis(settings)
    upgrade(settings.database_url)
    version = ensure_production_model(settings)
    for k in range(1, workers + 1):
        _spawn(f"worker{k}", worker_command(settings, name=f"worker{k}"), settings)
    _spawn("beat", beat_command(settings), settings)
    login = start_flower(settings) if flower else ""
    _wait_for(lambda: _workers_answer(settings, workers), f"{workers} worker(s)", 120, settings.home / "log" / "worker1.log")
    if api:
        _spawn("api", api_command(settings), settings)
    if flower:
        _wait_for(lambda: _port_open(settings.flower_port), "Flower", 30, settings.home / "log" / "flower.log")
    if api:
        _wait_for(lambda: _port_open(settings.api_port, settings.api_host), "HTTP API", 60, settings.home / "log" / "api.log")
    return {
        "redis": masked_url(settings.broker_url),
        "database": masked_url(settings.database_url),
        "model": version,
        "sweep": f"every {settings.sweep_interval_s:g} s (Celery beat)",
        "flower": f"http://127.0.0.1:{settings.flower_port}" if flower else "off",
        **({"flower login": login} if flower else {}),
        "api": f"http://{settings.api_host}:{settings.api_port}" if api else "off",
        "logs": str(settings.home / "log"),
    }


def _workers_answer(settings: Settings, count: int) -> bool:
    from celery import Celery

    app = Celery(broker=settings.broker_url)
    try:
        return len(app.control.ping(timeout=0.5) or []) >= count
    finally:
        app.close()


def down(settings: Settings) -> list[str]:
    """Stop what `up` started: workers first (they finish their task), Redis last."""
    run_dir = settings.home / "run"
    stopped = []
    names = sorted(p.stem for p in run_dir.glob("*.pid")) if run_dir.exists() else []
    for name in sorted(names, key=lambda n: n == "redis"):
        pid = _running(run_dir / f"{name}.pid")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _running(run_dir / f"{name}.pid"):
                time.sleep(0.2)
            stopped.append(name)
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
    return stopped
