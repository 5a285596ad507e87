"""Mutual TLS between the services: settings, credentials, the caller's identity, a dev PKI.

Every process has its own certificate (CN and SAN DNS = its service name) issued
by one CA. Servers require a client certificate; clients verify the server's
certificate against the CA and expect the *service name* in it whatever address
they dial (`dns:///<release>-tokens-headless…` on Kubernetes), so a certificate
needs only the service name. `PAGEWIRE_INSECURE_GRPC=1` turns all of it off, for
debugging, and says so at every start.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pagewire.kit.channels import open_channel
from pagewire.kit.settings import PREFIX, SettingsError, env_bool, env_int

# Every identity `make run` and the test stack issue a certificate for: the services,
# the operators' `cli`, and `app`, the default identity of a reader and sender (a help
# desk or bot reading conversations and replying) limited to its accounts.
IDENTITIES = ("gateway", "router", "tokens", "subscriptions", "cli", "app")
# Servers whose certificate must carry their name: clients verify exactly that name.
SERVERS = ("router", "tokens", "subscriptions")
UNAUTHENTICATED = "unauthenticated"
_FILES = ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE")
_EXPIRY_WARNING = datetime.timedelta(days=14)

log = logging.getLogger("pagewire.tls")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _names(cert: x509.Certificate) -> list[str]:
    """CN first, then the SAN DNS names: the names a certificate vouches for."""
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names += [n for n in san.get_values_for_type(x509.DNSName) if n not in names]
    return names


@dataclass(frozen=True)
class GrpcSecurity:
    """How one process speaks gRPC: mutual TLS with its own certificate, or explicitly not.

    `repr` shows the identity and files, never key material.
    """

    identity: str
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    files: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    not_after: datetime.datetime | None = None
    # PAGEWIRE_HEALTH_PORT: a plaintext port answering grpc.health.v1 only, for the
    # kubelet's gRPC probes (they cannot present a client certificate). None: no such port.
    health_port: int | None = None
    # PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE=1: plaintext gRPC may bind beyond loopback.
    allow_remote_insecure: bool = False

    @property
    def insecure(self) -> bool:
        return self.cert_pem is None

    @classmethod
    def insecure_for(cls, identity: str) -> GrpcSecurity:
        """Plaintext gRPC: no encryption, no caller identity. Debugging and in-process tests."""
        return cls(identity)

    @classmethod
    def from_files(cls, identity: str, ca: Path, cert: Path, key: Path) -> GrpcSecurity:
        """Mutual TLS from PEM files; problems raise SettingsError naming the file's variable."""
        ca_pem = _read(ca, "CA_FILE")
        cert_pem = _read(cert, "CERT_FILE")
        key_pem = _read(key, "KEY_FILE")
        try:
            authorities = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise SettingsError(f"{PREFIX}TLS_CA_FILE: {ca} holds no PEM certificate") from None
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise SettingsError(f"{PREFIX}TLS_CERT_FILE: {cert} is not a PEM certificate") from None
        try:
            private_key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            # Never quote the file: it is key material.
            raise SettingsError(
                f"{PREFIX}TLS_KEY_FILE: {key} is not an unencrypted PEM private key"
            ) from None
        if private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise SettingsError(
                f"{PREFIX}TLS_KEY_FILE: {key} is not the key of the certificate in {cert}"
            )
        if not any(_issued_by(certificate, authority) for authority in authorities):
            raise SettingsError(
                f"{PREFIX}TLS_CERT_FILE: {cert} is not issued by the CA in {ca}"
                f" ({PREFIX}TLS_CA_FILE)"
            )
        now = _utcnow()
        if certificate.not_valid_after_utc <= now:
            raise SettingsError(
                f"{PREFIX}TLS_CERT_FILE: {cert} expired at"
                f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if certificate.not_valid_before_utc > now:
            raise SettingsError(f"{PREFIX}TLS_CERT_FILE: {cert} is not valid yet")
        names = tuple(_names(certificate))
        if identity in SERVERS and identity not in names:
            raise SettingsError(
                f"{PREFIX}TLS_CERT_FILE: {cert} names {list(names)} but not {identity!r};"
                f" clients of the {identity} service verify that name"
            )
        return cls(
            identity,
            ca_pem,
            cert_pem,
            key_pem,
            files=(str(ca), str(cert), str(key)),
            names=names,
            not_after=certificate.not_valid_after_utc,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], identity: str, *, default_dir: Path | None = None
    ) -> GrpcSecurity:
        """`PAGEWIRE_TLS_CA_FILE`, `_CERT_FILE`, `_KEY_FILE`, or `PAGEWIRE_INSECURE_GRPC=1`.

        With `default_dir` (the CLI: var/tls/), `<identity>.pem`/`.key` and `ca.pem`
        there are used when no variable is set.
        """
        values = {name: environ.get(PREFIX + name) or "" for name in _FILES}
        insecure = env_bool(environ, "INSECURE_GRPC", False)
        allow_remote = env_bool(environ, "INSECURE_GRPC_ALLOW_REMOTE", False)
        health_port = None
        if environ.get(f"{PREFIX}HEALTH_PORT"):
            health_port = env_int(environ, "HEALTH_PORT", 0, minimum=0, maximum=65535)
        if insecure:
            if any(values.values()):
                raise SettingsError(
                    f"{PREFIX}INSECURE_GRPC=1 and {PREFIX}TLS_* are both set; choose one"
                )
            return replace(
                cls.insecure_for(identity),
                health_port=health_port,
                allow_remote_insecure=allow_remote,
            )
        if not any(values.values()) and default_dir is not None:
            ca, cert, key = default_files(default_dir, identity)
            if ca.exists() and cert.exists() and key.exists():
                return replace(cls.from_files(identity, ca, cert, key), health_port=health_port)
        for name in _FILES:
            if not values[name]:
                raise SettingsError(
                    f"{PREFIX}{name} is required: gRPC between the services uses mutual TLS"
                    f" (set {PREFIX}INSECURE_GRPC=1 to run without it, for debugging only)"
                )
        security = cls.from_files(
            identity,
            Path(values["TLS_CA_FILE"]),
            Path(values["TLS_CERT_FILE"]),
            Path(values["TLS_KEY_FILE"]),
        )
        return replace(security, health_port=health_port)

    def require_safe_bind(self, host: str) -> None:
        """Refuses plaintext gRPC on anything but loopback unless explicitly allowed.

        Without TLS no caller has an identity and every caller may call every RPC
        (DecryptToken included), so such a port must not be reachable from the network
        by accident: `PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE=1` says it is on purpose.
        """
        if not self.insecure or self.allow_remote_insecure or _loopback(host):
            return
        raise SettingsError(
            f"{PREFIX}INSECURE_GRPC=1 with {PREFIX}GRPC_HOST={host}: plaintext gRPC lets every"
            " caller call every RPC, so it only binds to loopback (127.0.0.1); set"
            f" {PREFIX}INSECURE_GRPC_ALLOW_REMOTE=1 to expose it anyway"
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials that require and verify a client certificate; None when insecure."""
        if self.insecure:
            return None
        assert self.key_pem is not None and self.cert_pem is not None
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """This process's certificate, and the CA to check servers with; None when insecure."""
        if self.insecure:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def channel(self, target: str, service: str) -> grpc.aio.Channel:
        """A channel to `service` at `target`, expecting `service`'s name in its certificate."""
        return open_channel(target, self.channel_credentials(), server_name=service)

    def announce(self, logger: logging.Logger) -> None:
        """One line at start: a warning when insecure, the identity and expiry otherwise."""
        if self.insecure:
            logger.warning(
                f"{PREFIX}INSECURE_GRPC=1: gRPC without TLS — no encryption and no caller"
                " identity; every caller may call every RPC. For debugging only."
            )
            return
        expires = self.not_after
        extra = {"identity": self.identity, "names": list(self.names), "cert_expires": expires}
        if expires is not None and expires - _utcnow() < _EXPIRY_WARNING:
            logger.warning("TLS certificate expires soon", extra=extra)
        else:
            logger.info("mutual TLS", extra=extra)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: Path, variable: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{PREFIX}TLS_{variable}: cannot read {path}: {exc.strerror}") from None
    if not data.strip():
        raise SettingsError(f"{PREFIX}TLS_{variable}: {path} is empty")
    return data


def _issued_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(authority)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# --- the caller's identity ------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who made a call: the names in its verified certificate, or unauthenticated (no TLS)."""

    name: str
    names: frozenset[str]
    authenticated: bool

    def matching(self, allowed: Iterable[str]) -> str | None:
        """The caller's name that is in `allowed`, or None."""
        allowed = set(allowed)
        if self.name in allowed:
            return self.name
        return next((n for n in sorted(self.names) if n in allowed), None)


def _decoded(values: Iterable[bytes]) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values]


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    """The peer's identity from its certificate (CN, else the first SAN DNS name).

    gRPC has already verified the certificate against the CA during the handshake;
    a call on a plaintext port has no identity.
    """
    auth = context.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", []):
        return Caller(UNAUTHENTICATED, frozenset(), False)
    common = _decoded(auth.get("x509_common_name", []))
    # peer_dns holds the SAN DNS names only (x509_subject_alternative_name mixes in IPs).
    dns = _decoded(auth.get("peer_dns", auth.get("x509_subject_alternative_name", [])))
    names = [*common, *dns]
    name = names[0] if names else "unnamed-certificate"
    return Caller(name[:128], frozenset(n[:128] for n in names), True)


# --- a development PKI ---------------------------------------------------------------------


def default_files(directory: Path, identity: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) of `identity` in a directory written by `generate_pki`."""
    return directory / "ca.pem", directory / f"{identity}.pem", directory / f"{identity}.key"


@dataclass(frozen=True)
class DevPki:
    """A CA and one certificate per identity, as files (keys mode 0600)."""

    directory: Path

    def files(self, identity: str) -> tuple[Path, Path, Path]:
        return default_files(self.directory, identity)

    def env(self, identity: str) -> dict[str, str]:
        """The `PAGEWIRE_TLS_*` variables of a process running as `identity`."""
        ca, cert, key = self.files(identity)
        return {
            f"{PREFIX}TLS_CA_FILE": str(ca),
            f"{PREFIX}TLS_CERT_FILE": str(cert),
            f"{PREFIX}TLS_KEY_FILE": str(key),
        }

    def security(self, identity: str) -> GrpcSecurity:
        return GrpcSecurity.from_files(identity, *self.files(identity))


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    """Writes `data` with mode 0600 from the first byte (never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _usable(path: Path, now: datetime.datetime, margin: datetime.timedelta) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - now > margin


def generate_pki(
    directory: Path,
    identities: Iterable[str] = IDENTITIES,
    *,
    ca_name: str = "Pagewire development CA",
    days: int = 90,
    hosts: Iterable[str] = ("localhost",),
    ips: Iterable[str] = ("127.0.0.1",),
) -> DevPki:
    """A CA and a certificate per identity in `directory`, reused while valid.

    Each certificate: CN and SAN DNS = the identity, plus `hosts` and `ips` for
    local use; server and client usage, because every service is both. Files
    still valid for a week are kept, so restarting `make run` changes nothing.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = _utcnow()
    margin = datetime.timedelta(days=7)
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    fresh_ca = not (
        ca_key_path.exists() and _usable(ca_cert_path, now, datetime.timedelta(days=days) + margin)
    )
    if fresh_ca:
        ca_key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=4 * days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, _key_pem(ca_key))
        ca_cert_path.write_bytes(_cert_pem(ca_cert))
    else:
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    hosts, ips = list(hosts), [ipaddress.ip_address(ip) for ip in ips]
    for identity in identities:
        cert_path, key_path = directory / f"{identity}.pem", directory / f"{identity}.key"
        if not fresh_ca and key_path.exists() and _usable(cert_path, now, margin):
            continue
        key = _new_key()
        dns = [identity, *(h for h in hosts if h != identity)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [*(x509.DNSName(n) for n in dns), *(x509.IPAddress(ip) for ip in ips)]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(_cert_pem(cert))
    return DevPki(directory)
