"""The services as real processes on free ports, started the way `make run` starts them.

Same approach as tests/support/stack.py and pagewire/devrun.py: one shared
environment, each child with its own mutual-TLS identity from a throw-away dev
PKI (or `PAGEWIRE_INSECURE_GRPC=1` when asked), health probed over gRPC as the
CLI identity. On top of that it records what the benchmark reports: the time
from `Popen` to SERVING and each process's resident memory, and it can start
a service from another module (the lock-ablation router in bench.router_variant,
the ceiling app in bench.ceiling).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire.kit.tls import IDENTITIES, DevPki, GrpcSecurity
from pagewire.localsuite import REPO, free_port, local_suite

APP_SECRET = "test_app_secret_0123456789abcdef"  # the secret the Meta fixtures are signed with
VERIFY_TOKEN = "bench-verify-token-7c1e"
START_TIMEOUT_S = 30.0
# Processes probed with GET /healthz rather than the gRPC health service.
HTTP_SERVICES = frozenset({"gateway", "ceiling"})


async def wait_until(condition, *, timeout: float, interval: float = 0.01, what: str) -> None:  # type: ignore[no-untyped-def]
    """Polls an async condition until it is true; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if await condition():
                return
        except Exception as exc:  # not up yet
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last
        await asyncio.sleep(interval)


@dataclass
class Proc:
    """One started process and what was measured about its start."""

    name: str
    service: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int
    serving_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def memory_mb(self) -> dict[str, float]:
        """Resident set size now (VmRSS) and its peak (VmHWM), in MiB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


@dataclass
class Suite:
    """Starts, stops, kills and freezes service processes sharing one environment."""

    workdir: Path
    env: dict[str, str]
    pki: DevPki | None
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    _counter: int = 0
    _reserved: set[int] = field(default_factory=set)

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        database_url: str,
        redis_url: str | None,
        redis_prefix: str,
        graph_url: str,
        keyring: str,
        log_level: str = "INFO",
        tls: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> Suite:
        suite = local_suite(
            workdir,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            graph_url=graph_url,
            keyring=keyring,
            app_secret=APP_SECRET,
            verify_token=VERIFY_TOKEN,
            log_level=log_level,
            tls=tls,
        )
        env, pki, ports = suite.env, suite.pki, suite.ports
        env.update(extra_env or {})
        return cls(workdir, env, pki, ports)

    def free_port(self) -> int:
        """A free port that no other process of this suite was given: `free_port` alone
        can hand out a port chosen for a process that is not listening yet."""
        while True:
            port = free_port()
            if port not in self._reserved and port not in self.ports.values():
                self._reserved.add(port)
                return port

    @property
    def gateway_url(self) -> str:
        return self.url("gateway")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.procs[name].port}"

    def identity_env(self, identity: str) -> dict[str, str]:
        """The shared environment plus `identity`'s certificate (when TLS is on and the
        process is one of the suite's identities: the ceiling app has none)."""
        tls = self.pki.env(identity) if self.pki and identity in IDENTITIES else {}
        return {**self.env, **tls}

    def security(self, identity: str = "cli") -> GrpcSecurity:
        return self.pki.security(identity) if self.pki else GrpcSecurity.insecure_for(identity)

    def channel(self, service: str, port: int | None = None) -> grpc.aio.Channel:
        """A channel to a gRPC service of this suite, as the CLI identity."""
        target = f"127.0.0.1:{port or self.ports[service]}"
        return self.security().channel(target, service)

    async def start(
        self, service: str, *, name: str | None = None, module: str | None = None, **overrides: str
    ) -> Proc:
        """Starts `python -m services.<service>` (or `module`) and waits until it is SERVING."""
        name = name or service
        self._counter += 1
        log = self.workdir / f"{name}.{self._counter}.log"
        env = {**self.identity_env(service), **overrides}
        port = int(overrides.get(f"PAGEWIRE_{service.upper()}_PORT", self.ports.get(service, 0)))
        started = time.monotonic()
        with log.open("wb") as out:
            # Popen returns once the child is forked; nothing here waits on it.
            popen = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", module or f"services.{service}"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, service, popen, log, port)
        self.procs[name] = proc
        try:
            await wait_until(
                lambda: self._healthy(proc), timeout=START_TIMEOUT_S, what=f"{name} to serve"
            )
        except (TimeoutError, RuntimeError):
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}") from None
        proc.serving_s = time.monotonic() - started
        return proc

    async def _healthy(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
        if proc.service in HTTP_SERVICES:
            async with httpx.AsyncClient(timeout=1) as client:
                return (
                    await client.get(f"http://127.0.0.1:{proc.port}/healthz")
                ).status_code == 200
        async with self.channel(proc.service, proc.port) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Signals a process and waits for it to exit; returns its exit code."""
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
            if sig != signal.SIGKILL:
                proc.popen.send_signal(signal.SIGCONT)  # a frozen process must run to stop
        try:
            return await asyncio.to_thread(proc.popen.wait, 20)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return await asyncio.to_thread(proc.popen.wait, 20)

    async def kill(self, name: str) -> int:
        return await self.stop(name, signal.SIGKILL)

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process holds whatever it holds, and its lock renewals stop too."""
        self.procs[name].popen.send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.procs[name].popen.send_signal(signal.SIGCONT)

    async def stop_all(self) -> None:
        for name in list(self.procs):
            await self.stop(name)

    def logs(self) -> str:
        """Everything every process printed."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    async def cli(self, *args: str) -> str:
        """Runs `pagewire …` as an operator would, in a thread (an in-process fake Graph
        keeps answering meanwhile); returns its stdout or raises with its stderr."""
        env = {
            **os.environ,
            **self.identity_env("cli"),
            "PAGEWIRE_GATEWAY_URL": self.gateway_url if "gateway" in self.procs else "",
        }
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pagewire.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pagewire {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout
