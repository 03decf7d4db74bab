"""Real Redis and PostgreSQL servers for the tests, on free ports in temporary folders.

The Debian packages are installed by scripts/install-services; nothing here is a mock.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import httpx
from helpers import run_cli
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select

from bloodcell_core.config import Settings
from bloodcell_core.service import db, webhooks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: run scripts/install-services"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=open(self.directory / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final write; what survives is what the append-only file had."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, "PostgreSQL is missing: run scripts/install-services"
    return found[-1]


class PostgresServer:
    """initdb + pg_ctl as the `postgres` system user when running as root (postgres refuses root)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        data = self.directory / "data"
        self._run(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self.resume()

    def resume(self) -> "PostgresServer":
        """Start the server on its existing data directory (after ``stop``)."""
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}",
        )
        return self

    def create_database(self, name: str) -> str:
        self._run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")


def settings_for(env: dict[str, str]) -> Settings:
    with mock.patch.dict(os.environ, env):
        return Settings.from_env()


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(Path(self.env["BLOODCELL_HOME"]) / f"{name}.log", "ab")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "bloodcell"), "worker", "--name", name],
            env={**os.environ, **self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        self.wait_for_workers(len(self.workers))
        return process

    def wait_for_workers(self, count: int, timeout: float = 90) -> None:
        from celery import Celery

        app = Celery(broker=self.settings.broker_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if len(app.control.ping(timeout=0.5) or []) >= count:
                        return
                except (RedisConnectionError, OperationalError):  # a pooled connection to a Redis that restarted
                    time.sleep(0.2)
                assert all(p.poll() is None for p in self.workers), "a worker exited during start-up"
            raise TimeoutError(f"{count} workers did not answer within {timeout} s")
        finally:
            app.close()

    def stop_workers(self) -> None:
        for process in self.workers:
            process.send_signal(signal.SIGTERM)
        for process in self.workers:
            process.wait(timeout=60)
        self.workers.clear()

    def client(self):
        from bloodcell_core.clients.local import Client

        return Client(self.settings)

    def count(self, model) -> int:
        with db.session_scope(self.settings.database_url) as session:
            return session.scalar(select(func.count()).select_from(model))


# --- the HTTP API under test: limits, a webhook receiver, a handle on the running server ---------------

LIMITS = {
    "BLOODCELL_MAX_IMAGE_BYTES": "300000",
    "BLOODCELL_MAX_IMAGES_PER_SAMPLE": "20",
    "BLOODCELL_MAX_IMAGE_PIXELS": "1000000",
    "BLOODCELL_MAX_REQUEST_BYTES": "4000000",
}


class WebhookReceiver:
    """A LIMS endpoint on localhost: records every request; answers the first attempt of each delivery with 500."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                delivery = self.headers[webhooks.DELIVERY_HEADER]
                first = all(h[webhooks.DELIVERY_HEADER] != delivery for h, _ in receiver.requests)
                receiver.requests.append((dict(self.headers), body))
                self.send_response(500 if first else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]


@dataclass
class Api:
    url: str
    stack: Stack
    tokens: dict[str, str]
    webhook_secret: str
    receiver: WebhookReceiver

    def call(self, method: str, path: str, token: str | None = "lims", **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def wait_for(self, sample_id: str, timeout: float = 120) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while (report := self.call("GET", f"/v1/samples/{sample_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, report
            time.sleep(0.3)
        return report


def create_token(env: dict[str, str], name: str, *scopes: str, webhook_url: str | None = None) -> dict:
    args = ["tokens", "create", name, *[a for s in scopes for a in ("--scope", s)]]
    return json.loads(run_cli(*args, *(["--webhook-url", webhook_url] if webhook_url else []), env=env).stdout)


def start_api_server(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`bloodcell api` in its own process on BLOODCELL_API_PORT, as an operator starts it; returns once it listens."""
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "bloodcell"), "api"],
        env={**os.environ, **env},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(int(env["BLOODCELL_API_PORT"]), timeout=60)
    return server
