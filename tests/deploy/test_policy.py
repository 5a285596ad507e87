"""The rendered chart, for every value set, against the deploy policy and against the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy import policy
from tests.deploy.conftest import REPO, by_kind, render

SETS = sorted(render.value_sets())
PREFIX = "PAGEWIRE_"

# Settings the chart sets ahead of the code that reads them, each with the issue
# that adds it. Once the code reads one, it is found in the source like the rest.
PENDING: dict[str, str] = {}
# Calls the chart wires ahead of the code; none at the moment.
PLANNED_CALLS: set[tuple[str, str]] = set()


def test_the_value_sets_the_issue_names_are_checked() -> None:
    assert {"defaults", "ha", "existing-secrets", "no-ingress", "cert-manager"} <= set(SETS)


@pytest.mark.parametrize("name", SETS)
def test_every_value_set_meets_the_policy(rendered: dict[str, list[dict]], name: str) -> None:
    assert policy.violations(rendered[name]) == []


def _containers(objs: list[dict]) -> dict[str, dict]:
    """component → its (single) container."""
    return {policy.component(w): t["spec"]["containers"][0] for w, t in policy.pod_specs(objs)}


def test_one_deployment_per_service_each_with_its_own_entry_module(
    rendered: dict[str, list[dict]],
) -> None:
    for objs in rendered.values():
        deployments = by_kind(objs, "Deployment")
        assert {policy.component(d) for d in deployments.values()} == set(policy.SERVICES)
        for dep in deployments.values():
            (container,) = dep["spec"]["template"]["spec"]["containers"]
            name = policy.component(dep)
            assert container["command"] == ["python", "-m", f"services.{name}"]
            assert (REPO / "services" / name / "__main__.py").is_file()


def test_servers_listen_on_every_interface(rendered: dict[str, list[dict]]) -> None:
    for objs in rendered.values():
        containers = _containers(objs)
        for name in policy.GRPC_SERVICES:
            env = policy.env_of(containers[name])
            assert env["PAGEWIRE_GRPC_HOST"]["value"] == "0.0.0.0"
            port = next(p for p in containers[name]["ports"] if p["name"] == "grpc")
            assert env[f"PAGEWIRE_{name.upper()}_PORT"]["value"] == str(port["containerPort"])
        assert policy.env_of(containers["gateway"])["PAGEWIRE_GATEWAY_HOST"]["value"] == "0.0.0.0"


def _sources(component: str) -> str:
    """The code a component runs: its own package and the shared one (the Job: the CLI)."""
    files = [f for f in (REPO / "pagewire").rglob("*.py") if "proto" not in f.parts]
    if component != "migrate":
        files += (REPO / "services" / component).rglob("*.py")
    return "\n".join(f.read_text() for f in files)


def _read_by_code(var: str, source: str) -> bool:
    name = var.removeprefix(PREFIX)
    if f'"{name}"' in source or f'"{var}"' in source:
        return True
    if name.endswith("_FILE") and "_FILE" in source and f'"{name.removesuffix("_FILE")}"' in source:
        return True  # env_secret(environ, "KEYRING") also reads PAGEWIRE_KEYRING_FILE
    m = re.fullmatch(r"(ROUTER|TOKENS|SUBSCRIPTIONS)_(ADDR|DATABASE_URL|PORT)", name)
    if m and m[2] == "ADDR":
        return f'grpc_target(environ, "{m[1].lower()}"' in source
    if m and m[2] == "DATABASE_URL":
        return (
            '_DATABASE_URL"' in source
        )  # database_url(): f"{PREFIX}{service.upper()}_DATABASE_URL"
    return False


@pytest.mark.parametrize("name", SETS)
def test_every_pagewire_variable_the_chart_sets_is_read_by_that_service(
    rendered: dict[str, list[dict]], name: str
) -> None:
    unread = []
    for workload, template in policy.pod_specs(rendered[name]):
        component = policy.component(workload)
        source = _sources(component)
        for c in template["spec"]["containers"]:
            for var in policy.env_of(c):
                if not var.startswith(PREFIX) or var.removeprefix(PREFIX) in PENDING:
                    continue
                if (
                    component,
                    var.removeprefix(PREFIX).removesuffix("_ADDR").lower(),
                ) in PLANNED_CALLS:
                    continue
                if not _read_by_code(var, source):
                    unread.append(f"{component}: {var}")
    assert unread == []


def test_the_services_each_deployment_calls_are_the_ones_its_code_calls(
    rendered: dict[str, list[dict]],
) -> None:
    for objs in rendered.values():
        for dep in by_kind(objs, "Deployment").values():
            name = policy.component(dep)
            config = (REPO / "services" / name / "config.py").read_text()
            in_code = set(re.findall(r'grpc_target\(environ, "([a-z]+)"', config))
            in_chart = policy.calls(dep)
            assert in_code <= in_chart, (
                f"{name}: the code calls {in_code}, the chart wires {in_chart}"
            )
            assert in_chart - in_code <= {t for s, t in PLANNED_CALLS if s == name}
    assert "tokens" not in policy.calls(
        by_kind(rendered["defaults"], "Deployment")["pagewire-gateway"]
    )


def test_outside_egress_is_dns_postgresql_redis_and_https_where_the_code_needs_it(
    rendered: dict[str, list[dict]],
) -> None:
    expected = {
        "gateway": {53},
        "router": {53, 5432, 6379, 443},
        "tokens": {53, 5432},
        "subscriptions": {53, 5432, 443},
        "migrate": {53, 5432},
    }
    for name, objs in rendered.items():
        for _, template in policy.pod_specs(objs):
            labels = template["metadata"]["labels"]
            who = labels[policy.COMPONENT]
            env = policy.env_of(template["spec"]["containers"][0])
            want = set(expected[who])
            if "PAGEWIRE_REDIS_URL" not in env:
                want.discard(6379)
            if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
                want.add(4317)
            got = policy.egress_ports(objs, labels)
            assert got == want, f"[{name}] {who}: egress to {sorted(got)}, wanted {sorted(want)}"


def test_gateway_and_router_autoscale_by_default(rendered: dict[str, list[dict]]) -> None:
    hpas = by_kind(rendered["defaults"], "HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert targets == {"pagewire-gateway", "pagewire-router"}
    for name in targets:
        assert "replicas" not in by_kind(rendered["defaults"], "Deployment")[name]["spec"]


def test_secret_files_are_mounted_where_the_settings_point(rendered: dict[str, list[dict]]) -> None:
    for objs in rendered.values():
        for _, template in policy.pod_specs(objs):
            for c in template["spec"]["containers"]:
                mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
                for var, entry in policy.env_of(c).items():
                    if var.endswith("_FILE"):
                        path = entry["value"]
                        assert any(path.startswith(m + "/") for m in mounts), (var, path)


def test_existing_secrets_are_used_by_name_and_none_is_rendered(
    rendered: dict[str, list[dict]],
) -> None:
    objs = rendered["existing-secrets"]
    assert by_kind(objs, "Secret") == {}
    text = yaml.safe_dump(objs)
    for name in (
        "pagewire-postgres",
        "pagewire-vault-postgres",
        "pagewire-redis-auth",
        "meta-app-webhooks",
        "pagewire-vault-keyring",
        "gateway-mtls",
        "router-mtls",
        "tokens-mtls",
        "subscriptions-mtls",
    ):
        assert name in text
    tokens_env = policy.env_of(_containers(objs)["tokens"])
    assert tokens_env["PAGEWIRE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "pagewire-vault-postgres",
        "key": "DATABASE_URL",
    }
    assert "PAGEWIRE_INSTAGRAM_APP_SECRET_FILE" in policy.env_of(_containers(objs)["gateway"])


def _secret_refs(objs: list[dict]) -> set[str]:
    refs = set()
    for _, template in policy.pod_specs(objs):
        for v in template["spec"].get("volumes", []):
            if "secret" in v:
                refs.add(v["secret"]["secretName"])
        for c in template["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
    return refs


def test_inline_values_make_every_secret_the_pods_read(rendered: dict[str, list[dict]]) -> None:
    objs = rendered["inline-secrets"]
    secrets = by_kind(objs, "Secret")
    assert _secret_refs(objs) <= set(secrets)
    assert (
        secrets["pagewire-keyring"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    )
    # The Job runs before the release's own Secrets exist: its URLs are in a hook Secret.
    hook = secrets["pagewire-migrate"]["metadata"]["annotations"]["helm.sh/hook"]
    assert hook == "pre-install,pre-upgrade"


def test_no_secret_material_in_defaults_or_the_plain_manifests(
    rendered: dict[str, list[dict]],
) -> None:
    assert by_kind(rendered["defaults"], "Secret") == {}
    for path in (REPO / "deploy/k8s/manifests").glob("*.yaml"):
        for obj in yaml.safe_load_all(path.read_text()):
            assert obj is None or obj["kind"] != "Secret", path


def test_the_migration_job_upgrades_every_schema_before_install_and_upgrade(
    rendered: dict[str, list[dict]],
) -> None:
    from pagewire.kit import migrate

    job = by_kind(rendered["defaults"], "Job")["pagewire-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["pagewire", "db", "upgrade"]
    urls = {v for v in policy.env_of(container) if v.endswith("_DATABASE_URL")}
    assert urls == {f"PAGEWIRE_{s.upper()}_DATABASE_URL" for s in migrate.SERVICES_WITH_SCHEMA}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pagewire"] == "pagewire.cli:main"
    assert '"upgrade"' in (REPO / "pagewire/cli.py").read_text()


def test_mtls_settings_follow_tls_enabled(rendered: dict[str, list[dict]]) -> None:
    for name, objs in rendered.items():
        for who, c in _containers(objs).items():
            if who == "migrate":
                continue
            env = policy.env_of(c)
            if name == "no-ingress":  # tls.enabled=false with unsafeInsecureGrpc=true
                assert env["PAGEWIRE_INSECURE_GRPC"]["value"] == "1"
                assert "PAGEWIRE_TLS_CERT_FILE" not in env
                if who in policy.GRPC_SERVICES:  # they bind 0.0.0.0, not loopback
                    assert env["PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE"]["value"] == "1"
            else:
                assert "PAGEWIRE_INSECURE_GRPC" not in env
                assert "PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE" not in env
                assert env["PAGEWIRE_TLS_CERT_FILE"]["value"].endswith("/tls.crt")
    tokens = policy.env_of(_containers(rendered["defaults"])["tokens"])
    assert tokens["PAGEWIRE_TOKENS_DECRYPT_ALLOWED"]["value"] == "router,subscriptions"


def test_metrics_ports_are_named_and_admitted_from_monitoring(
    rendered: dict[str, list[dict]],
) -> None:
    objs = rendered["defaults"]
    for who, c in _containers(objs).items():
        if who not in policy.GRPC_SERVICES:
            continue
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert policy.env_of(c)["PAGEWIRE_METRICS_PORT"]["value"] == str(port)
        labels = by_kind(objs, "Deployment")[f"pagewire-{who}"]["spec"]["template"]["metadata"]
        _, outside = policy.ingress_sources(objs, labels["labels"], port)
        assert outside, f"{who}: metrics port {port} not admitted from the monitoring namespace"
        assert labels["annotations"]["prometheus.io/port"] == str(port)
    monitors = by_kind(rendered["ha"], "ServiceMonitor")
    assert len(monitors) == 4


def test_only_the_webhooks_are_exposed_by_the_ingress(rendered: dict[str, list[dict]]) -> None:
    assert by_kind(rendered["no-ingress"], "Ingress") == {}
    (ingress,) = by_kind(rendered["ha"], "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "hooks.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/webhooks/"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["hooks.example.com"]


def test_the_plain_manifests_are_listed_in_their_kustomization() -> None:
    manifests = REPO / "deploy/k8s/manifests"
    kustomization = yaml.safe_load((manifests / "kustomization.yaml").read_text())
    files = {p.name for p in manifests.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert Path(manifests / "namespace.yaml").is_file()
