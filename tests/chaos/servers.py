"""PostgreSQL and Redis of the chaos run's own, from the installed binaries, in a temp dir.

The machine's shared servers are never touched: these listen on free ports and
are stopped, crashed and restarted at will. PostgreSQL refuses to run as root,
so as root its commands run as the `postgres` user (`runuser`), which owns the
data directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from pagewire.localsuite import free_port

PG_USER = "postgres"


def pg_bin(name: str) -> str:
    """`initdb` / `pg_ctl` of the newest installed PostgreSQL (Debian keeps them off PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"{name} not found (install postgresql)")
    return on_path


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class OwnPostgres:
    """A throw-away cluster: `start`, `stop(mode)`, `url(database)`."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "pgdata"

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(PG_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, WAL replayed at the next start."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            _as_postgres(list(argv)), capture_output=True, text=True, timeout=60, cwd=self.root
        )
        if result.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:1])} failed: {result.stderr.strip() or result.stdout}\n{tail}"
            )


@dataclass
class OwnRedis:
    """A Redis with nothing on disk: a restart starts empty, like the production setup.

    `stop` kills it; `freeze` and `thaw` stop and resume it in place (SIGSTOP/SIGCONT).
    """

    root: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found (install redis-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.05)  # polling a fresh process's port; there is nothing to wait on

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kills the server: every key and every blocked client is gone."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            if self.frozen:
                self.popen.send_signal(signal.SIGCONT)  # a stopped process must run to exit
            self.popen.wait(10)
        self.popen = None
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and every command hangs unanswered (a stalled
        host, a long GC pause of a proxy) rather than failing fast as a dead server does."""
        if self.popen is None or self.popen.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self.popen.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: the keys are all still there and the queued commands are answered."""
        if self.popen is not None and self.frozen:
            self.popen.send_signal(signal.SIGCONT)
        self.frozen = False
