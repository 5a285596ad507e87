"""Where the CPU goes under load: py-spy on the gateway and both routers, summarised.

`python -m bench --profile` records each process for a few seconds of
saturating load (`py-spy record --nonblocking --function -f raw`, so the
processes are not paused) and keeps the collapsed stacks next to the results.
The summary is what docs/PERFORMANCE.md quotes: the functions with the most
samples of their own, and the share of samples that pass through each library.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.procs import Suite
    from bench.run import Bench

PROFILED = ("gateway", "router1", "router2")
RATE_HZ = 50


# Library → a pattern on a frame's file; a sample "passes through" it when any frame matches.
def _under(*directories: str) -> str:
    """A frame in one of these packages: py-spy writes `func (psycopg/_cursor_base.py:416)`
    for site-packages and the standard library, an absolute path elsewhere."""
    return r"[(/](?:" + "|".join(directories) + r")/"


# Library → a pattern on a frame; a sample "passes through" it when any frame matches,
# and belongs to it (`self_by_library_pct`) when its innermost frame does (first match).
LIBRARIES = {
    "pagewire: gateway app (signature, HTTP)": r"services/gateway/(app|signature|protocol)\.py",
    "pagewire: normalize": r"(pagewire|services/gateway)/normalize\.py",
    "pagewire: router server (servicer)": r"services/router/server\.py",
    "pagewire: router ingest (validate, rows, group commit)": r"services/router/ingest\.py",
    "pagewire: router apply stage": r"services/router/(apply|parking|keys)\.py",
    "pagewire: router apply planning": r"services/router/planner\.py",
    "pagewire: router store (statements)": r"services/router/store/",
    "pagewire: router locks": r"services/router/mutex\.py",
    "pagewire: router profiles (Graph fetch)": r"services/router/profiles\.py|pagewire/graph/",
    "pagewire: kit (authz, telemetry, errors)": r"pagewire/kit/(?!runner)",
    "sqlalchemy": _under("sqlalchemy"),
    "psycopg": _under("psycopg", "psycopg_pool"),
    "grpc (python side)": _under("grpc"),
    "protobuf": _under("google/protobuf"),
    "redis-py": _under("redis"),
    "httpx/httpcore": _under("httpx", "httpcore", "h11", "anyio"),
    "starlette/uvicorn": _under("starlette", "uvicorn"),
    "json": _under("json"),
    "opentelemetry/prometheus": _under("opentelemetry", "prometheus_client"),
    "logging": _under("logging"),
    "asyncio event loop": _under("asyncio") + r"|selectors\.py",
    "threads (metrics server, to_thread)": r"threading\.py",
}


# What a sample was doing, judged on its whole stack (first match): the router's stages
# and the gateway's. Each sample counts once (`by_stage_pct`).
STAGES = {
    "router apply stage (claim, plan, write, locks)": r"services/router/(apply|parking)\.py",
    "router profile fetches (Graph, tokens, store)": r"services/router/profiles\.py",
    "router backlog monitor, readiness": r"LogMonitor|services/router/readiness\.py",
    "router Ingest (servicer, validate, group commit)": r"services/router/(ingest|server)\.py",
    "gateway webhook (HTTP, signature, parse, normalize)": r"services/gateway/|pagewire/normalize",
    "gRPC (calls, interceptors)": _under("grpc") + r"|pagewire/kit/(grpcserver|authz)\.py",
    # C code run as an event-loop callback (gRPC core's Cython, psycopg's wait), and a
    # thread in C (gRPC's poller): no Python frame of its own below these.
    "event-loop callbacks in C (gRPC core, driver waits)": r"Handle\._run \([^;]*\)$",
    "threads in C (gRPC poller)": r"Thread\.run \([^;]*\)$",
    # SQLAlchemy's async layer runs the driver in a greenlet, whose stack py-spy shows
    # from the greenlet's start: whose statement it is does not show.
    "SQLAlchemy/psycopg in a greenlet (caller not visible)": (
        r"^(?!_run_module_as_main|Thread).*" + _under("sqlalchemy", "psycopg")
    ),
}

# Samples py-spy took as running that are waiting: the loop in its selector, a thread
# blocked in C (gRPC's poller). `busy_by_stage_pct` leaves them out.
WAITING = re.compile(r"(EpollSelector\.select \([^;]*\)|^[^;]*Thread\.run \([^;]*\))$")

# A frame of Pagewire's own code (not the bench's).
OURS = re.compile(r"(?:^|[/(])(?:services|pagewire)/[^;]*\.py")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self samples per function; the share of samples through each library; each sample
    once by what it was doing (`by_stage_pct`, STAGES); each
    sample once by the library of its innermost frame (`self_by_library_pct`, which adds
    up to 100: a C call's time counts where Python called it); and each sample by its
    innermost frame of Pagewire's own code (`by_pagewire_frame`): which function of ours
    the time under a library was spent for."""
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    stage_patterns = {name: re.compile(p) for name, p in STAGES.items()}
    total = 0
    patterns = {name: re.compile(p) for name, p in LIBRARIES.items()}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[_short(frames[-1])] += count
        for name, pattern in patterns.items():
            if any(pattern.search(f) for f in frames):
                through[name] += count
        leaf[next((n for n, p in patterns.items() if p.search(frames[-1])), "other")] += count
        stage = next((n for n, p in stage_patterns.items() if p.search(stack)), "event loop, other")
        stages[stage] += count
        if not WAITING.search(stack) and not stack.endswith("Thread.run (threading.py:971)"):
            busy[stage] += count
        mine = next((f for f in reversed(frames) if OURS.search(f)), None)
        ours[_short(mine) if mine else "(no Pagewire frame: loop, library callbacks)"] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "top_self": [
            {"function": name, "pct": round(100 * n / total, 1)} for name, n in own.most_common(top)
        ],
        "through_library_pct": {
            name: round(100 * n / total, 1) for name, n in through.most_common() if n
        },
        "self_by_library_pct": {name: round(100 * n / total, 1) for name, n in leaf.most_common()},
        "by_stage_pct": {name: round(100 * n / total, 1) for name, n in stages.most_common()},
        "waiting_pct": round(100 * (total - sum(busy.values())) / total, 1),
        "busy_by_stage_pct": {
            name: round(100 * n / max(1, sum(busy.values())), 1) for name, n in busy.most_common()
        },
        "by_pagewire_frame": [
            {"function": name, "pct": round(100 * n / total, 1)}
            for name, n in ours.most_common(top)
        ],
    }


def _short(frame: str) -> str:
    """`func (path/to/site-packages/lib/mod.py)` → `func (lib/mod.py)`."""
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    for marker in ("site-packages/", "/lib/python3.11/", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


async def under_load(suite: Suite, bench: Bench, seconds: float, prefix: Path) -> dict[str, Any]:
    """Saturating closed-loop load while py-spy samples each profiled process."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    recorders = {}
    for name in PROFILED:
        out = Path(f"{prefix}-{name}.txt")
        recorders[name] = (
            out,
            subprocess.Popen(  # noqa: ASYNC220 - returns at once; awaited in a thread below
                [
                    spy,
                    "record",
                    "--pid",
                    str(suite.procs[name].pid),
                    "--duration",
                    str(max(1, round(seconds))),
                    "--rate",
                    str(RATE_HZ),
                    "--format",
                    "raw",
                    "--function",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
        )
    load = await bench.load(
        bench.generator.bodies(int(seconds * 1500)),
        concurrency=bench.plan.probe_concurrency,
        duration_s=seconds + 1,
    )
    summary: dict[str, Any] = {"seconds": seconds, "rate_hz": RATE_HZ, "load": load}
    for name, (out, popen) in recorders.items():
        _, err = await asyncio.to_thread(popen.communicate, None, seconds + 30)
        if popen.returncode != 0 or not out.exists():
            summary[name] = {"error": err.decode(errors="replace").strip()[-500:]}
            continue
        summary[name] = {"raw": str(out), **summarise(out)}
    return summary
