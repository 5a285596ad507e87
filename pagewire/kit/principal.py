"""Who a call is for, and which accounts it may see or act for; no gRPC here.

The authorization interceptor (pagewire.kit.authz) decides whether an identity may
call a method at all and, for methods that touch an account's data, hands the
handler a `Principal` naming the accounts that identity may reach. Domain code
asks the principal, so a help desk certificate limited to `acme` gets
PERMISSION_DENIED for `globex`'s conversations rather than an empty list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from pagewire.kit.errors import PermissionDenied
from pagewire.kit.settings import PREFIX, SettingsError

ALL = "*"
# Account ids as subscriptions accepts them; identities as certificate names are written.
_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class AccountDenied(PermissionDenied):
    """The caller may call the method, but not for this account or page."""


@dataclass(frozen=True)
class Principal:
    """The identity a call runs as, and the accounts it may reach (None: every account)."""

    identity: str
    accounts: frozenset[str] | None
    method: str = ""
    authenticated: bool = True

    @property
    def every_account(self) -> bool:
        return self.accounts is None

    def may(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts

    def require(self, account_id: str) -> None:
        """AccountDenied unless this principal may reach `account_id`."""
        if not self.may(account_id):
            raise AccountDenied(
                f"{self.identity!r} may not call {self.method} for account {account_id!r}"
            )

    def require_every_account(self, what: str) -> None:
        """AccountDenied unless this principal may reach every account (e.g. 'all pages')."""
        if self.accounts is not None:
            raise AccountDenied(f"{self.identity!r} may not call {self.method} for {what}")

    def deny_page(self, page_id: str) -> AccountDenied:
        """The refusal for a page outside this principal's accounts (or not known at all):
        it names the page, not the account that owns it."""
        return AccountDenied(f"{self.identity!r} may not call {self.method} for page {page_id}")


# Work a service does for itself (reconcile loop, background fetches, tests of the domain).
SYSTEM = Principal("internal", None, "internal", authenticated=False)

_current: ContextVar[Principal] = ContextVar("pagewire_principal")


def current() -> Principal:
    """The principal of the RPC being handled; set by the authorization interceptor."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "no principal: this code runs only inside an RPC that passed authorization"
        ) from None


def bind(principal: Principal) -> object:
    """Makes `principal` current for the rest of this task; returns the reset token."""
    return _current.set(principal)


@dataclass(frozen=True)
class AccountAccess:
    """Identity → the accounts it may see or act for (`None`: every account).

    Read from `PAGEWIRE_<SERVICE>_ACCOUNT_ACCESS`, written `app=acme,globex;helpdesk=*`.
    Built-in defaults (operators, the services that need every page) apply unless the
    value names that identity; an identity named nowhere reaches no account.
    """

    grants: Mapping[str, frozenset[str] | None]

    @classmethod
    def parse(
        cls, value: str, variable: str, defaults: Mapping[str, Iterable[str]] = {}
    ) -> AccountAccess:
        grants: dict[str, frozenset[str] | None] = {
            identity: _accounts(list(accounts)) for identity, accounts in defaults.items()
        }
        named: set[str] = set()
        for part in (p.strip() for p in value.split(";")):
            if not part:
                continue
            identity, sep, accounts = part.partition("=")
            identity = identity.strip()
            if not sep or not IDENTITY.fullmatch(identity):
                raise SettingsError(
                    f"{PREFIX}{variable}: {part!r} is not identity=account[,account...]"
                    " (or identity=*)"
                )
            if identity in named:
                raise SettingsError(f"{PREFIX}{variable}: {identity!r} is named twice")
            named.add(identity)
            listed = [a.strip() for a in accounts.split(",") if a.strip()]
            bad = [a for a in listed if a != ALL and not _ACCOUNT.fullmatch(a)]
            if bad or not listed:
                raise SettingsError(
                    f"{PREFIX}{variable}: {identity}= needs account ids (letters, digits,"
                    " '_', '.', '-') or *"
                )
            grants[identity] = _accounts(listed)
        return cls(grants)

    def of(self, identity: str) -> frozenset[str] | None:
        """The accounts of `identity`; an identity not listed reaches none."""
        return self.grants.get(identity, frozenset())

    def describe(self) -> dict[str, str]:
        """For the start-up log line: identity → "*" or the account list."""
        return {
            identity: ALL if accounts is None else ",".join(sorted(accounts))
            for identity, accounts in sorted(self.grants.items())
        }


def _accounts(listed: list[str]) -> frozenset[str] | None:
    return None if ALL in listed else frozenset(listed)
