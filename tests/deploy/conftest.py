"""Renders the Helm chart once per value set for the deploy tests (needs helm: `make k8s-tools`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pagewire_k8s_render", REPO / "deploy/k8s/render.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


def helm_binary() -> str:
    """PAGEWIRE_HELM, else the one `make k8s-tools` fetched, else helm on PATH."""
    for candidate in (os.environ.get("PAGEWIRE_HELM"), str(REPO / ".tools/helm/helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail("helm not found: run `make k8s-tools` (or make k8s-check)", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> str:
    return helm_binary()


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, list[dict]]:
    """Value-set name → the objects `helm template` renders with it."""
    return {
        name: render.objects(render.render(helm, values))
        for name, values in render.value_sets().items()
    }


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}
