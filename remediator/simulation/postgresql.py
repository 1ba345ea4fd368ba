"""Runs a real PostgreSQL server (Debian's ``postgresql`` package) for tests and ``demo --ha``.

The server gets a fresh data directory in a work directory, listens on 127.0.0.1 on a free port
with its socket in that directory (not /var/run), and is stopped with SIGTERM (a fast shutdown)
on every way out. PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
user the package creates. It can be stopped and started again on the same port and data, to
test what replicas do while their database is away.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from remediator.simulation.monitoring import pick_free_port

BINARIES = pathlib.Path("/usr/lib/postgresql")
READY_TIMEOUT = 30.0
# Durability is not what these servers are for, speed is: a test database per test.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresError(Exception):
    """PostgreSQL is not installed, or the server did not start."""


def find_binaries() -> pathlib.Path | None:
    """The newest installed server's bin directory, or None."""
    versions = sorted(
        (p for p in BINARIES.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def available() -> bool:
    return find_binaries() is not None


@dataclass(kw_only=True)
class PostgresServer:
    """A running server; ``admin_url`` connects as the superuser, ``url`` as the app's role."""

    workdir: pathlib.Path
    port: int
    role: str = "remediator"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    process: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "remediator") -> str:
        """The application's URL; the password goes separately (``password``)."""
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> pathlib.Path:
        return self.workdir / "data"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        bin_dir = _require_binaries()
        # Again on a restart: a directory above may have lost its traverse bit meanwhile (a new
        # pytest session makes /tmp/pytest-of-<user> 0700 again).
        _hand_over(self.workdir)
        log = (self.workdir / "postgres.log").open("ab")
        command = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.workdir),
            *(arg for setting in FAST_SETTINGS for arg in ("-c", setting)),
        ]
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our arguments
            _as_server_user(command), stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # To the whole group: as root the child is runuser, which does not pass signals on.
        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, nothing is lost.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def create_database(self, name: str) -> str:
        """A fresh database owned by the app's role; returns its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        return self.url(name)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if self.process is None or self.process.poll() is not None:
                    raise PostgresError(f"postgres exited: {self._log_tail()}") from e
                if time.monotonic() > deadline:
                    raise PostgresError(f"postgres not ready: {self._log_tail()}") from e
                time.sleep(0.05)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "postgres.log").read_text(errors="replace")[-2000:]
        return "(no log)"


@contextlib.contextmanager
def run_postgres(workdir: pathlib.Path) -> Iterator[PostgresServer]:
    """initdb, start, create the app's role; stop on every way out."""
    bin_dir = _require_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(workdir=workdir, port=pick_free_port())
    _hand_over(workdir)
    subprocess.run(  # noqa: S603
        _as_server_user(
            [str(bin_dir / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres", "-N"]
        ),
        check=True,
        capture_output=True,
    )
    # Password authentication for the app's role over TCP, as in production; trust for the
    # superuser the tests use to create databases.
    (server.data / "pg_hba.conf").write_text(
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "local all all trust\n"
    )
    try:
        server.start()
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE \"{server.role}\" LOGIN PASSWORD '{server.password}'")
            conn.execute(f'CREATE DATABASE "remediator" OWNER "{server.role}"')
        yield server
    finally:
        server.stop()


def _require_binaries() -> pathlib.Path:
    found = find_binaries()
    if found is None:
        raise PostgresError(
            "PostgreSQL is not installed (Debian package postgresql; `make setup` installs it)"
        )
    return found


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--", *command]


def _hand_over(workdir: pathlib.Path) -> None:
    """As root, the server's user must own its directory and reach it."""
    if os.geteuid() != 0:
        return
    shutil.chown(workdir, user="postgres")
    for parent in workdir.parents:
        if parent == pathlib.Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)  # traverse only, not list
