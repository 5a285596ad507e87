"""The example Grafana dashboard shows every Pagewire metric, and only metrics that exist."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

# Every module that declares metrics; importing one registers its metrics.
METRIC_MODULES = (
    "pagewire.graph.metrics",
    "pagewire.kit.authz",
    "services.gateway.metrics",
    "services.router.metrics",
    "services.subscriptions.metrics",
    "services.tokens.metrics",
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "pagewire.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _ours() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {m.name for m in REGISTRY.collect() if m.name.startswith("pagewire_")}


def _queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = set()
    for name in re.findall(r"pagewire_[a-z_]+", "\n".join(exprs)):
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_every_metric_is_on_the_dashboard() -> None:
    assert _ours() - _queried() == set()


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    assert _queried() - _ours() == set()


def test_panels_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        assert pos["x"] + pos["w"] <= 24


def test_every_module_declaring_metrics_is_checked() -> None:
    repo = DASHBOARD.parents[2]
    declaring = {
        ".".join(path.relative_to(repo).with_suffix("").parts)
        for root in ("pagewire", "services")
        for path in (repo / root).rglob("*.py")
        if re.search(r"^\s*\w+ = (Counter|Gauge|Histogram|Summary)\(", path.read_text(), re.M)
    }
    assert declaring == set(METRIC_MODULES)
