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
LIBRARIES = {
    "sqlalchemy": r"/sqlalchemy/",
    "psycopg": r"/psycopg/",
    "grpc (python side)": r"/grpc/",
    "protobuf": r"/google/protobuf/",
    "redis-py": r"/redis/",
    "starlette/uvicorn": r"/(starlette|uvicorn)/",
    "json": r"/json/",
    "asyncio event loop": r"/asyncio/",
    "logging": r"/logging/",
    "pagewire: normalize": r"services/gateway/normalize\.py",
    "pagewire: router apply/store": r"services/router/(apply|store|routing|feed|fencing)\.py",
}


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self samples per function and the share of samples through each library."""
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
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
