"""The services as real processes on free ports, as an operator would run them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire.kit.tls import DevPki
from pagewire.localsuite import REPO, local_suite
from tests.support.waiting import wait_for

APP_SECRET = "test_app_secret_0123456789abcdef"  # the secret the Meta fixtures are signed with
VERIFY_TOKEN = "e2e-verify-token-4b1d"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int


@dataclass
class Stack:
    """Starts, stops and kills service processes sharing one environment."""

    workdir: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    # Mutual TLS as `make run` sets it up: a CA and a certificate per service in var/tls/
    # (the CLI finds var/tls/cli.* there); None runs with PAGEWIRE_INSECURE_GRPC=1.
    pki: DevPki | None = None
    _counter: int = 0

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
        tls: bool = False,
    ) -> Stack:
        """The environment of a stack in `workdir`; with `tls`, mutual TLS like `make run`
        (off by default for stacks mixed with plaintext in-process fakes)."""
        suite = local_suite(
            workdir,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            graph_url=graph_url,
            keyring=keyring,
            app_secret=APP_SECRET,
            verify_token=VERIFY_TOKEN,
            log_level="DEBUG",
            tls=tls,
        )
        return cls(workdir, suite.env, suite.ports, pki=suite.pki)

    def channel(
        self, service: str, *, port: int | None = None, identity: str = "cli"
    ) -> grpc.aio.Channel:
        """A channel to a service of this stack, with `identity`'s certificate when mTLS is on."""
        target = f"127.0.0.1:{port or self.ports[service]}"
        if self.pki is None:
            return grpc.aio.insecure_channel(target)
        return self.pki.security(identity).channel(target, service)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    async def start(self, service: str, *, name: str | None = None, **overrides: str) -> Proc:
        """Starts `python -m services.<service>` and waits until it reports healthy."""
        name = name or service
        self._counter += 1
        log = self.workdir / f"{name}.{self._counter}.log"
        # Each service runs with its own certificate: its identity is what the others check.
        env = {**self.env, **(self.pki.env(service) if self.pki else {}), **overrides}
        port = int(overrides.get(f"PAGEWIRE_{service.upper()}_PORT", self.ports.get(service, 0)))
        with log.open("wb") as out:
            # Popen returns once the child is forked; nothing here waits on it.
            popen = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", f"services.{service}"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log, port)
        self.procs[name] = proc
        try:
            await wait_for(
                lambda: self._healthy(service, proc), timeout=20, what=f"{name} to be healthy"
            )
        except TimeoutError:
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}") from None
        return proc

    async def _healthy(self, service: str, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
        if service == "gateway":
            async with httpx.AsyncClient(timeout=1) as client:
                return (
                    await client.get(f"http://127.0.0.1:{proc.port}/healthz")
                ).status_code == 200
        async with self.channel(service, port=proc.port) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Signals a process and waits for it to exit; returns its exit code."""
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
        return await asyncio.to_thread(proc.popen.wait, 20)

    async def kill(self, name: str) -> int:
        return await self.stop(name, signal.SIGKILL)

    async def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                await self.stop(name)
            except subprocess.TimeoutExpired:
                await self.kill(name)

    def logs(self) -> str:
        """Everything every process printed during the test."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))
