"""Mutual TLS and least privilege: who may decrypt, who is refused, and what the audit shows."""

from __future__ import annotations

import datetime
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire.kit.authz import Policy
from pagewire.kit.settings import SettingsError
from pagewire.kit.tls import IDENTITIES, DevPki, GrpcSecurity, generate_pki
from pagewire.proto import tokens_pb2
from services.tokens.access import Access
from tests.support.tokens import RING_A, Tokens, ref, tokens_server

PAGE = "109384756201938"
TOKEN = "EAAGmtlsTOKENsecretVALUE0123456789abcdefXYZ"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate_pki(tmp_path_factory.mktemp("pki"), (*IDENTITIES, "intruder"))


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """Another CA, issuing certificates with the very same names."""
    return generate_pki(tmp_path_factory.mktemp("foreign"), ("router", "cli"))


@pytest.fixture
async def tokens(database_url: str, pki: DevPki) -> AsyncIterator[Tokens]:
    async with tokens_server(
        database_url,
        RING_A,
        security=pki.security("tokens"),
        client=pki.security("subscriptions"),
        access=Access(allow_unauthenticated=False),
    ) as server:
        await server.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(PAGE), token=TOKEN))
        yield server


async def rpc_error(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def decrypt_request() -> tokens_pb2.DecryptTokenRequest:
    return tokens_pb2.DecryptTokenRequest(page=ref(PAGE))


async def test_router_may_decrypt(tokens: Tokens, pki: DevPki) -> None:
    async with tokens.client(pki.security("router")) as router:
        reply = await router.DecryptToken(decrypt_request(), timeout=5)
    assert reply.token == TOKEN
    last = (await tokens.audit())[-1]
    assert (last.caller, last.action, last.page_id, last.outcome) == (
        "router",
        "DECRYPT",
        PAGE,
        "OK",
    )


async def test_subscriptions_may_decrypt_and_write(tokens: Tokens) -> None:
    reply = await tokens.stub.DecryptToken(decrypt_request(), timeout=5)
    assert reply.token == TOKEN
    rows = await tokens.audit()
    assert [(r.caller, r.action, r.outcome) for r in rows] == [
        ("subscriptions", "PUT", "OK"),
        ("subscriptions", "DECRYPT", "OK"),
    ]


@pytest.mark.parametrize("identity", ["gateway", "cli", "intruder"])
async def test_others_are_denied_decrypt_and_audited(
    tokens: Tokens, pki: DevPki, identity: str
) -> None:
    async with tokens.client(pki.security(identity)) as stub:
        error = await rpc_error(stub.DecryptToken(decrypt_request(), timeout=5))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert identity in error.details() and TOKEN not in error.details()
    last = (await tokens.audit())[-1]
    assert (last.caller, last.action, last.platform, last.page_id, last.outcome) == (
        identity,
        "DECRYPT",
        "FACEBOOK",
        PAGE,
        "PERMISSION_DENIED",
    )


async def test_gateway_may_do_nothing_with_tokens(tokens: Tokens, pki: DevPki) -> None:
    async with tokens.client(pki.security("gateway")) as gateway:
        for call in (
            gateway.PutToken(tokens_pb2.PutTokenRequest(page=ref(PAGE), token="EAAGevil")),
            gateway.DeleteToken(tokens_pb2.DeleteTokenRequest(page=ref(PAGE))),
            gateway.MarkTokenInvalid(tokens_pb2.MarkTokenInvalidRequest(page=ref(PAGE))),
            gateway.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref(PAGE))),
            gateway.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-a")),
            gateway.ListAudit(tokens_pb2.ListAuditRequest()),
        ):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # Refused before anything was read or written: the token is the original one.
    assert (await tokens.stub.DecryptToken(decrypt_request())).token == TOKEN
    denied = [r.action for r in await tokens.audit() if r.outcome == "PERMISSION_DENIED"]
    # (The calls above all started at once, so their records come in any order.)
    assert sorted(denied) == ["DELETE", "LIST_AUDIT", "MARK_INVALID", "PUT", "ROTATE", "STATUS"]


async def test_operators_administer_services_do_not(tokens: Tokens, pki: DevPki) -> None:
    async with tokens.client(pki.security("cli")) as cli:
        keys = await cli.ListKeys(tokens_pb2.ListKeysRequest(), timeout=5)
        audit = await cli.ListAudit(tokens_pb2.ListAuditRequest(page_id=PAGE), timeout=5)
        status = await cli.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref(PAGE)))
    assert keys.primary_key_id == "key-a"
    assert [e.caller for e in audit.entries] == ["subscriptions"]
    assert status.key_id == "key-a"
    async with tokens.client(pki.security("router")) as router:
        error = await rpc_error(router.ListAudit(tokens_pb2.ListAuditRequest()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_foreign_ca_is_rejected_before_reaching_the_service(
    tokens: Tokens, foreign: DevPki
) -> None:
    before = len(await tokens.audit())
    async with tokens.client(foreign.security("router")) as impostor:
        error = await rpc_error(impostor.DecryptToken(decrypt_request(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # The TLS handshake failed, so no call reached the servicer: nothing to audit, nothing read.
    assert len(await tokens.audit()) == before


async def test_plaintext_client_is_rejected(tokens: Tokens) -> None:
    async with tokens.client(None) as plaintext:
        error = await rpc_error(plaintext.DecryptToken(decrypt_request(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_checks_the_server_name(database_url: str, pki: DevPki) -> None:
    """A server with another service's certificate is not the tokens service."""
    async with tokens_server(
        database_url,
        security=pki.security("router"),
        client=pki.security("subscriptions"),
    ) as wrong:
        error = await rpc_error(wrong.stub.DecryptToken(decrypt_request(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_needs_a_certificate_too(tokens: Tokens, pki: DevPki) -> None:
    channel = pki.security("cli").channel(f"127.0.0.1:{tokens.port}", "tokens")
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_allow_list_is_configurable(database_url: str, pki: DevPki) -> None:
    access = Access.of(decrypt=["subscriptions"], allow_unauthenticated=False)
    async with tokens_server(
        database_url,
        security=pki.security("tokens"),
        client=pki.security("subscriptions"),
        access=access,
    ) as tokens:
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(PAGE), token=TOKEN))
        async with tokens.client(pki.security("router")) as router:
            error = await rpc_error(router.DecryptToken(decrypt_request(), timeout=5))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_identity_from_subject_alternative_name_alone(
    tokens: Tokens, pki: DevPki, tmp_path: Path
) -> None:
    """A certificate without a CN (as cert-manager issues them) is named by its SAN."""
    ca_key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki.directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pagewire")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("router"), x509.DNSName("router.pagewire.svc")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "router.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "router.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    identity = GrpcSecurity.from_files(
        "router", pki.directory / "ca.pem", tmp_path / "router.pem", tmp_path / "router.key"
    )
    async with tokens.client(identity) as router:
        reply = await router.DecryptToken(decrypt_request(), timeout=5)
    assert reply.token == TOKEN
    assert (await tokens.audit())[-1].caller == "router"


# --- settings and the development PKI ---------------------------------------------------------


def test_generated_pki_files_names_and_modes(pki: DevPki) -> None:
    for identity in IDENTITIES:
        ca, cert, key = pki.files(identity)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        security = pki.security(identity)
        assert security.names[0] == identity and "localhost" in security.names
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert stat.S_IMODE((pki.directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700 or pki.directory.exists()
    env = pki.env("router")
    assert env["PAGEWIRE_TLS_CERT_FILE"].endswith("router.pem")


def test_generate_pki_reuses_valid_files_and_renews_expiring_ones(tmp_path: Path) -> None:
    first = generate_pki(tmp_path, ("router",))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    generate_pki(tmp_path, ("router",))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    generate_pki(tmp_path / "short", ("router",), days=3)
    short_ca = (tmp_path / "short" / "ca.pem").read_bytes()
    short_cert = (tmp_path / "short" / "router.pem").read_bytes()
    generate_pki(tmp_path / "short", ("router",), days=3)  # 3 days left < a week: renewed
    assert (tmp_path / "short" / "router.pem").read_bytes() != short_cert
    assert (tmp_path / "short" / "ca.pem").read_bytes() == short_ca
    assert first.security("router").identity == "router"


def _env(pki: DevPki, identity: str, **overrides: str) -> dict[str, str]:
    return {**pki.env(identity), **overrides}


def test_security_from_env_names_every_problem(pki: DevPki, foreign: DevPki) -> None:
    def problem(environ: dict[str, str], identity: str = "router") -> str:
        with pytest.raises(SettingsError) as caught:
            GrpcSecurity.from_env(environ, identity)
        return str(caught.value)

    missing = problem({})
    assert "PAGEWIRE_TLS_CA_FILE is required" in missing and "PAGEWIRE_INSECURE_GRPC=1" in missing
    partial = {k: v for k, v in pki.env("router").items() if "KEY" not in k}
    assert "PAGEWIRE_TLS_KEY_FILE is required" in problem(partial)
    assert "both" in problem(_env(pki, "router", PAGEWIRE_INSECURE_GRPC="1"))
    unreadable = problem(_env(pki, "router", PAGEWIRE_TLS_CERT_FILE="/nonexistent/router.pem"))
    assert "PAGEWIRE_TLS_CERT_FILE" in unreadable and "/nonexistent/router.pem" in unreadable
    other_key = problem(_env(pki, "router", PAGEWIRE_TLS_KEY_FILE=str(pki.files("gateway")[2])))
    assert "PAGEWIRE_TLS_KEY_FILE" in other_key and "not the key" in other_key
    wrong_ca = problem(_env(pki, "router", PAGEWIRE_TLS_CA_FILE=str(foreign.files("router")[0])))
    assert "not issued by the CA" in wrong_ca
    # A server's certificate must carry its name: clients verify exactly that.
    assert "'tokens'" in problem(pki.env("router"), identity="tokens")
    not_pem = problem(_env(pki, "router", PAGEWIRE_TLS_KEY_FILE=str(pki.files("router")[1])))
    assert "PAGEWIRE_TLS_KEY_FILE" in not_pem and "BEGIN" not in not_pem
    assert "true or false" in problem({"PAGEWIRE_INSECURE_GRPC": "maybe"})


def test_insecure_is_explicit_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    security = GrpcSecurity.from_env({"PAGEWIRE_INSECURE_GRPC": "1"}, "tokens")
    assert security.insecure and security.server_credentials() is None
    with caplog.at_level(logging.INFO):
        security.announce(logging.getLogger("test"))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "PAGEWIRE_INSECURE_GRPC=1" in caplog.text


def test_the_cli_finds_its_certificate_in_var(pki: DevPki) -> None:
    security = GrpcSecurity.from_env({}, "cli", default_dir=pki.directory)
    assert security.identity == "cli" and not security.insecure
    assert "cli" in security.names
    assert "key_pem" not in repr(security) and "PRIVATE" not in repr(security)


async def test_plaintext_health_port_for_kubelet_probes(pki: DevPki) -> None:
    """PAGEWIRE_HEALTH_PORT: health alone in plaintext; everything else needs a certificate."""
    from pagewire.kit.grpcserver import start_server
    from pagewire.proto import router_pb2, router_pb2_grpc
    from tests.support.waiting import free_port

    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    security = GrpcSecurity.from_env(
        {**pki.env("router"), "PAGEWIRE_HEALTH_PORT": str(free_port())}, "router"
    )
    service = await start_server(
        names=[name],
        register=lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(
            router_pb2_grpc.RouterServiceServicer(), s
        ),
        access=Policy.open([name]),
        credentials=security.server_credentials(),
        health_port=security.health_port,
    )
    assert service.health_port == security.health_port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.health_port}") as plain:
            health = health_pb2_grpc.HealthStub(plain)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await router_pb2_grpc.RouterServiceStub(plain).Ingest(
                    router_pb2.IngestRequest(), timeout=5
                )
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as main:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await health_pb2_grpc.HealthStub(main).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await service.stop(grace=0)
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        await service.stop(grace=0)
