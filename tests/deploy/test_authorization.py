"""The chart's side of authorization (issue 12): certificates per identity, allow-lists, TLS off.

Each service authorizes every RPC by the caller's certificate identity; the chart
issues or holds those certificates, renders who may read, send and operate into
the services' environment, refuses plaintext gRPC unless asked for in so many
words, and opens the NetworkPolicies to the readers it is told about.
"""

from __future__ import annotations

import json
import re

from tests.deploy import policy
from tests.deploy.conftest import REPO, by_kind, render

ISSUER = ("--set", "tls.certManager.issuerRef.name=pagewire-ca")


def _objects(helm: str, *args: str) -> list[dict]:
    return render.objects(render.render(helm, (), *args))


def _env(objs: list[dict], who: str) -> dict[str, str]:
    dep = by_kind(objs, "Deployment")[f"pagewire-{who}"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {name: e.get("value", "") for name, e in policy.env_of(container).items()}


def _certificates(objs: list[dict]) -> dict[str, dict]:
    return {
        o["metadata"]["name"]: o
        for o in objs
        if (o["apiVersion"], o["kind"]) == ("cert-manager.io/v1", "Certificate")
    }


# ---------------------------------------------------------------- TLS off


def test_tls_off_with_unsafe_insecure_grpc_renders_plaintext_on_every_interface(
    helm: str,
) -> None:
    objs = _objects(helm, "--set", "tls.enabled=false", "--set", "unsafeInsecureGrpc=true")
    assert policy.violations(objs) == []
    for who in policy.GRPC_SERVICES:
        env = _env(objs, who)
        assert env["PAGEWIRE_GRPC_HOST"] == "0.0.0.0"
        assert env["PAGEWIRE_INSECURE_GRPC"] == "1"
        assert env["PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE"] == "1"
        assert not any(name.startswith("PAGEWIRE_TLS_") for name in env)
    assert _env(objs, "gateway")["PAGEWIRE_INSECURE_GRPC"] == "1"
    assert not _certificates(objs) and not by_kind(objs, "Secret")


def test_notes_warn_when_grpc_is_plaintext(helm: str) -> None:
    def notes(*args: str) -> str:
        out = render.helm(helm, "install", "pagewire", str(render.CHART), "--dry-run=client", *args)
        return out.split("NOTES:", 1)[1]

    warned = notes("--set", "tls.enabled=false", "--set", "unsafeInsecureGrpc=true")
    assert "WARNING: unsafeInsecureGrpc=true, tls.enabled=false" in warned
    assert "PLAINTEXT" in warned
    assert "WARNING" not in notes()


def test_unsafe_insecure_grpc_alone_changes_nothing(helm: str) -> None:
    assert render.render(helm, (), "--set", "unsafeInsecureGrpc=true") == render.render(helm)


# ---------------------------------------------------------------- a certificate per identity


def test_cert_manager_issues_each_identity_a_certificate_named_exactly_for_it(
    helm: str,
) -> None:
    objs = _objects(helm, *ISSUER, "--set-json", 'tls.clients={"cli": {}, "helpdesk": {}}')
    assert policy.violations(objs) == []
    certs = _certificates(objs)
    by_identity = {c["spec"]["commonName"]: c for c in certs.values()}
    assert set(by_identity) == {"gateway", "router", "tokens", "subscriptions", "cli", "helpdesk"}
    for identity, cert in by_identity.items():
        spec = cert["spec"]
        assert spec["dnsNames"] == [identity]
        assert spec["issuerRef"] == {
            "name": "pagewire-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        server = identity in policy.GRPC_SERVICES
        assert ("server auth" in spec["usages"]) is server, identity
        assert "client auth" in spec["usages"]
    # Each service's pods mount the Secret its Certificate writes.
    for who in policy.SERVICES:
        dep = by_kind(objs, "Deployment")[f"pagewire-{who}"]
        (tls,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == by_identity[who]["spec"]["secretName"]
    assert by_identity["helpdesk"]["spec"]["secretName"] == "pagewire-client-helpdesk-tls"
    assert by_identity["cli"]["metadata"]["name"] == "pagewire-client-cli"


def test_an_existing_or_inline_certificate_is_not_issued_again(helm: str) -> None:
    objs = _objects(
        helm,
        *ISSUER,
        "--set",
        "tls.services.tokens.existingSecret=tokens-mtls",
        "--set-json",
        'tls.clients={"app": {"existingSecret": "app-mtls"}, "cli": {}}',
    )
    names = {c["spec"]["commonName"] for c in _certificates(objs).values()}
    assert names == {"gateway", "router", "subscriptions", "cli"}
    assert policy.violations(objs) == []


def test_without_cert_manager_a_client_is_a_secret_only_when_given_inline(
    rendered: dict[str, list[dict]], helm: str
) -> None:
    assert not _certificates(_objects(helm, "--set-json", 'tls.clients={"helpdesk": {}}'))
    secrets = by_kind(rendered["inline-secrets"], "Secret")
    cli = secrets["pagewire-client-cli-tls"]
    assert cli["type"] == "kubernetes.io/tls"
    assert set(cli["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    # No pod of the chart runs as a client identity.
    for _, template in policy.pod_specs(rendered["inline-secrets"]):
        for volume in template["spec"].get("volumes", []):
            assert "client" not in volume.get("secret", {}).get("secretName", "")


def test_the_cert_manager_value_set_issues_every_certificate_but_the_existing_one(
    rendered: dict[str, list[dict]],
) -> None:
    certs = _certificates(rendered["cert-manager"])
    names = {c["spec"]["commonName"] for c in certs.values()}
    assert names == {"gateway", "router", "subscriptions", "cli", "app", "helpdesk"}
    assert all(c["spec"]["issuerRef"]["kind"] == "ClusterIssuer" for c in certs.values())


# ---------------------------------------------------------------- allow-lists


def test_defaults_give_app_reads_and_sends_and_cli_operations(
    rendered: dict[str, list[dict]],
) -> None:
    objs = rendered["defaults"]
    router, tokens, subscriptions = (_env(objs, w) for w in policy.GRPC_SERVICES)
    assert router["PAGEWIRE_ROUTER_READERS"] == "app"
    assert router["PAGEWIRE_ROUTER_SENDERS"] == "app"
    assert subscriptions["PAGEWIRE_SUBSCRIPTIONS_READERS"] == "app"
    for env in (router, subscriptions):
        assert env["PAGEWIRE_OPERATORS"] == "cli"
    assert tokens["PAGEWIRE_TOKENS_ADMIN_ALLOWED"] == "cli"
    # No accounts configured: the services' built-in defaults (cli=*, router=*) alone.
    assert "PAGEWIRE_ROUTER_ACCOUNT_ACCESS" not in router
    assert "PAGEWIRE_SUBSCRIPTIONS_ACCOUNT_ACCESS" not in subscriptions
    assert not any("READERS" in v or "SENDERS" in v for v in _env(objs, "gateway"))


def test_readers_senders_and_accounts_are_rendered_exactly_as_configured(helm: str) -> None:
    objs = _objects(
        helm,
        "--set-json",
        'router.readers=["app", "helpdesk"]',
        "--set-json",
        'router.senders=["helpdesk"]',
        "--set-json",
        'router.accountAccess={"app": ["acme"], "helpdesk": ["*"]}',
        "--set-json",
        'subscriptions.readers=["helpdesk", "app"]',
        "--set-json",
        'subscriptions.accountAccess={"helpdesk": ["acme", "globex"], "oncall": ["*"]}',
        "--set-json",
        'auth.operators=["cli", "oncall"]',
    )
    router, tokens, subscriptions = (_env(objs, w) for w in policy.GRPC_SERVICES)
    assert router["PAGEWIRE_ROUTER_READERS"] == "app,helpdesk"
    assert router["PAGEWIRE_ROUTER_SENDERS"] == "helpdesk"
    assert router["PAGEWIRE_ROUTER_ACCOUNT_ACCESS"] == "app=acme;helpdesk=*"
    assert subscriptions["PAGEWIRE_SUBSCRIPTIONS_READERS"] == "helpdesk,app"
    assert subscriptions["PAGEWIRE_SUBSCRIPTIONS_ACCOUNT_ACCESS"] == "helpdesk=acme,globex;oncall=*"
    assert "PAGEWIRE_ROUTER_SENDERS" not in subscriptions
    for env in (router, subscriptions):
        assert env["PAGEWIRE_OPERATORS"] == "cli,oncall"
    # The vault's operator list has its own name (services/tokens/access.py).
    assert tokens["PAGEWIRE_TOKENS_ADMIN_ALLOWED"] == "cli,oncall"


def test_the_account_access_format_is_the_one_the_services_parse() -> None:
    """`identity=acct,acct;other=*`, as pagewire.kit.principal documents it."""
    source = (REPO / "pagewire/kit/principal.py").read_text()
    assert "app=acme,globex;helpdesk=*" in source
    assert 'value.split(";")' in source and 'partition("=")' in source


# ---------------------------------------------------------------- probes


def _proto_services() -> dict[str, str]:
    """area → full name of the service its proto declares (pagewire.router.v1.RouterService)."""
    out = {}
    for proto in (REPO / "protos/pagewire").glob("*/v1/*.proto"):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        for service in re.findall(r"^service (\w+)", text, re.M):
            assert package
            out[proto.parent.parent.name] = f"{package[1]}.{service}"
    return out


def test_readiness_asks_for_the_service_name_and_liveness_for_the_overall_status(
    rendered: dict[str, list[dict]],
) -> None:
    names = _proto_services()
    for set_name, objs in rendered.items():
        for who in policy.GRPC_SERVICES:
            dep = by_kind(objs, "Deployment")[f"pagewire-{who}"]
            (c,) = dep["spec"]["template"]["spec"]["containers"]
            assert c["readinessProbe"]["grpc"]["service"] == names[who], set_name
            assert "service" not in c["livenessProbe"]["grpc"], set_name
            assert "service" not in c["startupProbe"]["grpc"], set_name


# ---------------------------------------------------------------- NetworkPolicy


def _admitted(objs: list[dict], who: str) -> list[dict]:
    dep = by_kind(objs, "Deployment")[f"pagewire-{who}"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    port = next(
        p["containerPort"]
        for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "grpc"
    )
    return policy.ingress_sources(objs, labels, port)[1]


def test_readers_outside_the_release_reach_router_and_subscriptions_never_tokens(
    helm: str, rendered: dict[str, list[dict]]
) -> None:
    helpdesk = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "helpdesk"}}}
    bot = {"ipBlock": {"cidr": "203.0.113.7/32"}}
    objs = _objects(
        helm,
        "--set-json",
        f"networkPolicy.extraFrom.router={json.dumps([helpdesk, bot])}",
        "--set-json",
        f"networkPolicy.extraFrom.subscriptions={json.dumps([helpdesk])}",
    )
    assert policy.violations(objs) == []
    assert _admitted(objs, "router") == [helpdesk, bot]
    assert _admitted(objs, "subscriptions") == [helpdesk]
    assert _admitted(objs, "tokens") == []
    assert _admitted(rendered["defaults"], "router") == []
    assert _admitted(rendered["cert-manager"], "router") != []
