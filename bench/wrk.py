"""Closed-loop load from `wrk` (a C load generator), posting the bench's own signed bodies.

The Python driver (bench/driver.py) shares the machine's two cores with what it
measures; against the ceiling it tops out at ~7,000 POSTs/s where wrk (Debian
package `wrk`, LuaJIT scripting) reaches 17,000 for 0.2–0.3 cores, so the Python
driver, not the server, would set the figure. Its script gets the bodies
pre-built and pre-signed from a file, one per line (`path TAB signature TAB events
TAB json`), each wrk thread sending its own share; it counts the 200s and the
other statuses itself (`response()`), and prints one JSON line in `done()` with
the ACK latency percentiles (request written → response read, per connection).

`unique=True` (Pagewire, which deduplicates) stops a thread when its bodies run
out instead of sending one twice; `unique=False` (the ceiling, which stores every
body as it comes) cycles through them.

wrk has no open loop (fixed schedule); the open-loop steps stay with the Python
driver, whose schedule at a few thousand POSTs/s costs far less.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bodies import Body

_SCRIPT = r"""
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  unique = args[3] == "1"
  requests, events = {}, {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then
      local path, sig, n, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", path,
        {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
      events[#events + 1] = tonumber(n)
    end
    i = i + 1
  end
  spare = wrk.format("GET", "/healthz")
  nxt, sent, sent_events, exhausted = 0, 0, 0, 0
  statuses = {}
end

function request()
  if nxt >= #requests then
    if unique then
      exhausted = 1
      wrk.thread:stop()
      return spare
    end
    nxt = 0
  end
  nxt = nxt + 1
  sent = sent + 1
  sent_events = sent_events + events[nxt]
  return requests[nxt]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local out = {sent = 0, sent_events = 0, exhausted = 0, statuses = {}}
  for _, thread in ipairs(threads) do
    out.sent = out.sent + thread:get("sent")
    out.sent_events = out.sent_events + thread:get("sent_events")
    out.exhausted = out.exhausted + thread:get("exhausted")
    for status, n in pairs(thread:get("statuses")) do
      local key = tostring(status)
      out.statuses[key] = (out.statuses[key] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(out.statuses) do
    parts[#parts + 1] = string.format('"%s": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    '\nWRKJSON {"duration_us": %d, "requests": %d, "bytes": %d, "sent": %d, "sent_events": %d,'
    .. ' "exhausted_threads": %d, "statuses": {%s}, "errors": {"connect": %d, "read": %d,'
    .. ' "write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p95": %d,'
    .. ' "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.duration, summary.requests, summary.bytes, out.sent, out.sent_events,
    out.exhausted, table.concat(parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def binary() -> str | None:
    """The wrk on PATH, or None (then the bench uses its Python driver for everything)."""
    return shutil.which("wrk")


def closed_loop(
    target: str,
    bodies: Sequence[Body],
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    unique: bool = True,
) -> dict[str, Any]:
    """`connections` keep-alive connections POSTing `bodies` to `target` (http://host:port)
    for `duration_s`; what wrk saw, with the ACK latency in ms and its statuses."""
    wrk = binary()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="pagewire-wrk-") as tmp:
        script, data = Path(tmp) / "post.lua", Path(tmp) / "bodies.tsv"
        script.write_text(_SCRIPT)
        with data.open("wb") as out:
            for body in bodies:
                out.write(
                    b"%s\t%s\t%d\t%s\n"
                    % (body.path.encode(), body.signature.encode(), body.events, body.data)
                )
        proc = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{max(connections, threads)}",
                f"-d{max(1, round(duration_s))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                target.rstrip("/"),
                "--",
                str(data),
                str(threads),
                "1" if unique else "0",
            ],
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds = raw["duration_us"] / 1e6
    statuses = dict(sorted(raw["statuses"].items()))
    socket_errors = sum(raw["errors"][k] for k in ("connect", "read", "write", "timeout"))
    if socket_errors:
        statuses["socket error"] = socket_errors
    ok = statuses.get("200", 0)
    lat = raw["latency_us"]
    return {
        "generator": f"wrk, {threads} thread(s), {connections} connections",
        "seconds": round(seconds, 3),
        "posts_answered": raw["requests"],
        "posts_sent": raw["sent"],
        "events_sent": raw["sent_events"],
        # wrk cannot tie an answer to its body: events in the 200s, at the mean per POST sent.
        "events_acked_estimate": round(ok * raw["sent_events"] / raw["sent"]) if raw["sent"] else 0,
        "posts_acked": ok,
        "acked_posts_per_s": round(ok / seconds, 1) if seconds else 0.0,
        "bodies_exhausted": raw["exhausted_threads"] > 0,
        # Of the POSTs sent, those whose answer was read before wrk stopped: the rest were
        # in flight, and what they commit belongs after the window.
        "answered_fraction": min(1.0, raw["requests"] / raw["sent"]) if raw["sent"] else 1.0,
        "statuses": statuses,
        "ack_ms": {
            "p50": round(lat["p50"] / 1000, 3),
            "p95": round(lat["p95"] / 1000, 3),
            "p99": round(lat["p99"] / 1000, 3),
            "max": round(lat["max"] / 1000, 3),
            "mean": round(lat["mean"] / 1000, 3),
        },
    }
