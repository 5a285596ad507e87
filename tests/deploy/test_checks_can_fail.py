"""Each step of `make k8s-check` besides the policy can fail: lint, schema validation, drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy.conftest import render


def test_schema_validation_rejects_an_unknown_field_on_every_version() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "clusterIp": "None"},  # clusterIP misspelt
    }
    errors = render.validate([service])
    assert len(errors) == len(render.KUBERNETES_VERSIONS)
    assert all("clusterIp" in e for e in errors)


def test_schema_validation_rejects_a_kind_it_has_no_schema_for() -> None:
    typo = {"apiVersion": "app/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}
    assert render.validate([typo], ["1.30.0"]) == [
        "Deployment/x (Kubernetes 1.30.0): no schema for app/v1"
    ]


def test_drift_is_reported_as_a_diff(helm: str, tmp_path: Path) -> None:
    render.write_manifests(helm, tmp_path)
    assert render.drift(helm, tmp_path) == ""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens.read_text().replace("replicas: 2", "replicas: 1"))
    (tmp_path / "stray.yaml").write_text("kind: ConfigMap\n")
    diff = render.drift(helm, tmp_path)
    assert "-  replicas: 1" in diff and "+  replicas: 2" in diff
    assert "committed/stray.yaml" in diff


def test_helm_lint_strict_fails_on_a_broken_template(helm: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(render.CHART, chart)
    (chart / "templates/broken.yaml").write_text(
        "kind: ConfigMap\nmetadata: {{ .Values.nope.x }}\n"
    )
    with pytest.raises(render.CheckFailed, match="nil pointer|broken.yaml"):
        render.helm(helm, "lint", "--strict", str(chart))
