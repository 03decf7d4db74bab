"""Real Redis and PostgreSQL servers for the tests, on free ports in temporary folders.

The Debian packages are installed by scripts/install-services; nothing here is a mock.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select

from bloodcell_core.config import Settings
from bloodcell_core.service import db


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
