"""`python -m bench --quick` runs end to end and writes a well-formed results file.

Only the shape of the results is checked (and that the one-conversation burst
lost, doubled and reordered nothing): speeds depend on the machine and are
never asserted here; `make bench` and docs/PERFORMANCE.md are where they live.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import problems
from tests.conftest import ADMIN_PG, REPO, TEST_REDIS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _written(directory: Path) -> dict:  # type: ignore[type-arg]
    (path,) = directory.glob("*.json")
    return json.loads(path.read_text())


async def test_quick_bench_writes_well_formed_results(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
            "--postgres",
            ADMIN_PG,
            "--redis",
            TEST_REDIS,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = _written(tmp_path)
    assert problems(results) == []
    assert results["mode"] == "quick"
    assert "| throughput / floor |" in result.stdout
