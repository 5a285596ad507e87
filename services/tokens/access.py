"""Who may call which TokensService RPC, by the identity in the caller's certificate."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagewire.kit.errors import PermissionDenied

if TYPE_CHECKING:
    from pagewire.kit.tls import Caller

DEFAULT_DECRYPT = ("router", "subscriptions")
DEFAULT_WRITE = ("router", "subscriptions")
DEFAULT_ADMIN = ("cli",)

DECRYPT = "decrypt"  # DecryptToken
WRITE = "write"  # PutToken, DeleteToken, MarkTokenInvalid
READ = "read"  # GetTokenStatus: anyone on any list
ADMIN = "admin"  # RotateKeys, ListKeys, RemoveKey, ListAudit


@dataclass(frozen=True)
class Access:
    """Allow-lists of certificate identities per kind of RPC.

    A caller on a plaintext connection has no identity. That only happens when
    the server itself runs without TLS (`PAGEWIRE_INSECURE_GRPC=1`, or an
    in-process test server); `allow_unauthenticated` says whether such callers
    get everything (debugging) or nothing. The composition root sets it from
    the transport; a TLS server never sees an unauthenticated call at all.
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

    def allowed(self, kind: str) -> frozenset[str]:
        if kind == READ:
            return self.decrypt | self.write | self.admin
        return {DECRYPT: self.decrypt, WRITE: self.write, ADMIN: self.admin}[kind]

    def check(self, caller: Caller, kind: str, rpc: str) -> str:
        """The name to audit the caller under; PermissionDenied when it may not call `rpc`."""
        if not caller.authenticated:
            if self.allow_unauthenticated:
                return caller.name
            raise PermissionDenied(f"{rpc} requires a client certificate")
        name = caller.matching(self.allowed(kind))
        if name is None:
            raise PermissionDenied(f"{caller.name!r} may not call {rpc}")
        return name
