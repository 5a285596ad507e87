"""The policy check can fail: each deliberately broken object is caught, with a message."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from tests.deploy import policy
from tests.deploy.conftest import by_kind


def _container(objs: list[dict], deployment: str) -> dict:
    return by_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]


def _remove_readiness_probe(objs: list[dict]) -> None:
    del _container(objs, "pagewire-router")["readinessProbe"]


def _remove_startup_probe(objs: list[dict]) -> None:
    del _container(objs, "pagewire-gateway")["startupProbe"]


def _run_as_root(objs: list[dict]) -> None:
    _container(objs, "pagewire-tokens")["securityContext"]["runAsUser"] = 0


def _allow_privilege_escalation(objs: list[dict]) -> None:
    _container(objs, "pagewire-subscriptions")["securityContext"]["allowPrivilegeEscalation"] = True


def _writable_root_filesystem(objs: list[dict]) -> None:
    job = by_kind(objs, "Job")["pagewire-migrate"]
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"
    ] = False


def _no_memory_limit(objs: list[dict]) -> None:
    del _container(objs, "pagewire-router")["resources"]["limits"]["memory"]


def _open_tokens_to_the_gateway(objs: list[dict]) -> None:
    peers = by_kind(objs, "NetworkPolicy")["pagewire-tokens"]["spec"]["ingress"][0]["from"]
    peers.append({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}})


def _open_tokens_to_everyone(objs: list[dict]) -> None:
    del by_kind(objs, "NetworkPolicy")["pagewire-tokens"]["spec"]["ingress"][0]["from"]


def _drop_the_default_deny(objs: list[dict]) -> None:
    objs.remove(by_kind(objs, "NetworkPolicy")["pagewire-default-deny"])


def _cut_gateway_egress_to_router(objs: list[dict]) -> None:
    egress = by_kind(objs, "NetworkPolicy")["pagewire-gateway"]["spec"]["egress"]
    egress[:] = [rule for rule in egress if 50051 not in [p["port"] for p in rule["ports"]]]


def _drop_a_headless_service(objs: list[dict]) -> None:
    objs.remove(by_kind(objs, "Service")["pagewire-tokens-headless"])


def _point_a_client_at_the_clusterip_service(objs: list[dict]) -> None:
    env = policy.env_of(_container(objs, "pagewire-gateway"))
    env["PAGEWIRE_ROUTER_ADDR"]["value"] = "dns:///pagewire-router.pagewire.svc.cluster.local:50051"


def _short_termination_grace(objs: list[dict]) -> None:
    dep = by_kind(objs, "Deployment")["pagewire-router"]
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5


def _service_links(objs: list[dict]) -> None:
    by_kind(objs, "Deployment")["pagewire-router"]["spec"]["template"]["spec"].pop(
        "enableServiceLinks"
    )


def _drop_a_pdb(objs: list[dict]) -> None:
    objs.remove(by_kind(objs, "PodDisruptionBudget")["pagewire-subscriptions"])


def _liveness_on_the_service_name(objs: list[dict]) -> None:
    probe = _container(objs, "pagewire-router")["livenessProbe"]
    probe["grpc"]["service"] = "pagewire.router.v1.RouterService"


def _startup_on_the_service_name(objs: list[dict]) -> None:
    probe = _container(objs, "pagewire-tokens")["startupProbe"]
    probe["grpc"]["service"] = "pagewire.tokens.v1.TokensService"


BREAKS: dict[str, tuple[Callable[[list[dict]], None], str]] = {
    "no readiness probe": (_remove_readiness_probe, "container router: no readinessProbe"),
    "no startup probe": (_remove_startup_probe, "container gateway: no startupProbe"),
    "runs as root": (_run_as_root, "container tokens: runs as root"),
    "privilege escalation": (
        _allow_privilege_escalation,
        "container subscriptions: allowPrivilegeEscalation is not false",
    ),
    "writable root filesystem": (_writable_root_filesystem, "readOnlyRootFilesystem is not true"),
    "no memory limit": (_no_memory_limit, "container router: no memory limit"),
    "tokens open to the gateway": (
        _open_tokens_to_the_gateway,
        "tokens must admit only router and subscriptions",
    ),
    "tokens open to everyone": (_open_tokens_to_everyone, "tokens admits everyone"),
    "no default deny": (_drop_the_default_deny, "no default-deny NetworkPolicy"),
    "gateway cannot reach router": (
        _cut_gateway_egress_to_router,
        "gateway calls router but its egress to port 50051 is not allowed",
    ),
    "no headless twin": (_drop_a_headless_service, "Service/pagewire-tokens: gRPC Service without"),
    "client on the ClusterIP": (
        _point_a_client_at_the_clusterip_service,
        "PAGEWIRE_ROUTER_ADDR=dns:///pagewire-router.pagewire",
    ),
    "short termination grace": (_short_termination_grace, "terminationGracePeriodSeconds 5"),
    "service links": (_service_links, "Deployment/pagewire-router: enableServiceLinks"),
    "no PDB": (_drop_a_pdb, "Deployment/pagewire-subscriptions: no PodDisruptionBudget"),
    "liveness on the service name": (
        _liveness_on_the_service_name,
        "container router: livenessProbe asks for 'pagewire.router.v1.RouterService'",
    ),
    "startup on the service name": (
        _startup_on_the_service_name,
        "container tokens: startupProbe asks for 'pagewire.tokens.v1.TokensService'",
    ),
}


def test_the_unbroken_render_passes(rendered: dict[str, list[dict]]) -> None:
    assert policy.violations(rendered["defaults"]) == []


@pytest.mark.parametrize("what", sorted(BREAKS))
def test_a_broken_object_fails_the_policy(rendered: dict[str, list[dict]], what: str) -> None:
    objs = copy.deepcopy(rendered["defaults"])
    breaker, expected = BREAKS[what]
    breaker(objs)
    found = policy.violations(objs)
    assert any(expected in v for v in found), found


# ---------------------------------------------------------------- cert-manager Certificates


def _certificate(objs: list[dict], name: str) -> dict:
    return by_kind(objs, "Certificate")[name]["spec"]


def _cn_is_not_the_dns_name(objs: list[dict]) -> None:
    _certificate(objs, "pagewire-client-helpdesk")["dnsNames"] = ["helpdesk", "app"]


def _misspelt_field(objs: list[dict]) -> None:
    spec = _certificate(objs, "pagewire-client-app")
    spec["dnsName"] = spec.pop("dnsNames")


def _router_without_server_auth(objs: list[dict]) -> None:
    _certificate(objs, "pagewire-router")["usages"] = ["digital signature", "client auth"]


def _gateway_certificate_names_the_router(objs: list[dict]) -> None:
    spec = _certificate(objs, "pagewire-gateway")
    spec["commonName"], spec["dnsNames"] = "router", ["router"]


def _two_certificates_one_secret(objs: list[dict]) -> None:
    _certificate(objs, "pagewire-client-app")["secretName"] = "pagewire-client-cli-tls"


def _client_without_client_auth(objs: list[dict]) -> None:
    _certificate(objs, "pagewire-client-cli")["usages"] = ["digital signature", "server auth"]


def _unknown_usage(objs: list[dict]) -> None:
    _certificate(objs, "pagewire-subscriptions")["usages"].append("serverauth")


def _no_issuer(objs: list[dict]) -> None:
    del _certificate(objs, "pagewire-client-helpdesk")["issuerRef"]


CERTIFICATE_BREAKS: dict[str, tuple[Callable[[list[dict]], None], str]] = {
    "CN is not the only DNS name": (
        _cn_is_not_the_dns_name,
        "Certificate/pagewire-client-helpdesk: commonName 'helpdesk' and dnsNames",
    ),
    "misspelt field": (_misspelt_field, "Certificate/pagewire-client-app: unknown fields"),
    "server without server auth": (
        _router_without_server_auth,
        "Certificate/pagewire-router: router serves gRPC but its usages lack server auth",
    ),
    "another service's name": (
        _gateway_certificate_names_the_router,
        "gateway pods mount Secret pagewire-gateway-tls, but it names 'router'",
    ),
    "two certificates, one Secret": (
        _two_certificates_one_secret,
        "writes Secret pagewire-client-cli-tls, as Certificate/pagewire-client-",
    ),
    "client without client auth": (
        _client_without_client_auth,
        "Certificate/pagewire-client-cli: usages ['digital signature', 'server auth'] lack",
    ),
    "unknown usage": (_unknown_usage, "unknown usages ['serverauth']"),
    "no issuer": (_no_issuer, "Certificate/pagewire-client-helpdesk: no issuerRef.name"),
}


def test_the_unbroken_cert_manager_render_passes(rendered: dict[str, list[dict]]) -> None:
    assert by_kind(rendered["cert-manager"], "Certificate")
    assert policy.violations(rendered["cert-manager"]) == []


@pytest.mark.parametrize("what", sorted(CERTIFICATE_BREAKS))
def test_a_broken_certificate_fails_the_policy(rendered: dict[str, list[dict]], what: str) -> None:
    objs = copy.deepcopy(rendered["cert-manager"])
    breaker, expected = CERTIFICATE_BREAKS[what]
    breaker(objs)
    found = policy.violations(objs)
    assert any(expected in v for v in found), found
