"""Who may call which TokensService RPC, by the identity in the caller's certificate.

The table is enforced by the kit's authorization interceptor before any handler
runs; a refusal is also written to the vault's audit log, with the page the
request named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pagewire.kit.authz import (
    ROUTER,
    SUBSCRIPTIONS,
    AccessSettings,
    AccessTable,
    AuditHook,
    Group,
    Policy,
    allow,
)
from pagewire.kit.principal import AccountAccess
from pagewire.proto import tokens_pb2

SERVICE_NAME = tokens_pb2.DESCRIPTOR.services_by_name["TokensService"].full_name

DEFAULT_DECRYPT = (ROUTER, SUBSCRIPTIONS)
DEFAULT_WRITE = (ROUTER, SUBSCRIPTIONS)
DEFAULT_ADMIN = ("cli",)

# The three lists operators set (PAGEWIRE_TOKENS_*_ALLOWED, read by TokensSettings).
DECRYPTERS = Group("decrypters", "TOKENS_DECRYPT_ALLOWED", DEFAULT_DECRYPT)
WRITERS = Group("writers", "TOKENS_WRITE_ALLOWED", DEFAULT_WRITE)
ADMINS = Group("admins", "TOKENS_ADMIN_ALLOWED", DEFAULT_ADMIN)

TOKENS_ACCESS = AccessTable(
    SERVICE_NAME,
    {
        # Plaintext tokens: the services that call Graph with them, nobody else.
        "DecryptToken": allow(DECRYPTERS),
        # Storing, deleting and flagging tokens: the page lifecycle and the sender.
        "PutToken": allow(WRITERS),
        "DeleteToken": allow(WRITERS),
        "MarkTokenInvalid": allow(WRITERS),
        # Whether a token is usable (never the token): anyone on any list.
        "GetTokenStatus": allow(DECRYPTERS, WRITERS, ADMINS),
        # Key management and the audit: operators.
        "RotateKeys": allow(ADMINS),
        "ListKeys": allow(ADMINS),
        "RemoveKey": allow(ADMINS),
        "ListAudit": allow(ADMINS),
    },
)


@dataclass(frozen=True)
class Access:
    """The members of the three lists, and whether callers without a certificate pass.

    A caller on a plaintext connection has no identity. That only happens when the
    server itself runs without TLS (`PAGEWIRE_INSECURE_GRPC=1` on loopback, or an
    in-process test server); `allow_unauthenticated` says whether such callers get
    everything (debugging) or nothing.
    """

    decrypt: frozenset[str] = frozenset(DEFAULT_DECRYPT)
    write: frozenset[str] = frozenset(DEFAULT_WRITE)
    admin: frozenset[str] = frozenset(DEFAULT_ADMIN)
    allow_unauthenticated: bool = True

    @classmethod
    def of(
        cls,
        decrypt: Iterable[str] = DEFAULT_DECRYPT,
        write: Iterable[str] = DEFAULT_WRITE,
        admin: Iterable[str] = DEFAULT_ADMIN,
        *,
        allow_unauthenticated: bool,
    ) -> Access:
        return cls(frozenset(decrypt), frozenset(write), frozenset(admin), allow_unauthenticated)

    def policy(self, audit: AuditHook | None = None) -> Policy:
        """The server's policy: the table with these lists, refusals sent to `audit`."""
        settings = AccessSettings(
            {
                DECRYPTERS: tuple(sorted(self.decrypt)),
                WRITERS: tuple(sorted(self.write)),
                ADMINS: tuple(sorted(self.admin)),
            },
            AccountAccess({}),
        )
        return Policy.build(
            [TOKENS_ACCESS],
            settings,
            allow_unauthenticated=self.allow_unauthenticated,
            audit=audit,
        )
