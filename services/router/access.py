"""Who may call which RouterService RPC, and which accounts a reader or sender reaches.

The table is enforced by the kit's authorization interceptor before a handler runs.
RPCs marked `accounts=True` also check, in the handler, that the account the
request names — or the account that owns the page or conversation it names — is
one the caller's `PAGEWIRE_ROUTER_ACCOUNT_ACCESS` entry lists. `Ingest` checks,
in the handler, that each of its events has an origin its caller may append.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pagewire.contract import Origin, Platform
from pagewire.kit.authz import (
    GATEWAY,
    OPERATORS,
    SUBSCRIPTIONS,
    AccessSettings,
    AccessTable,
    Group,
    allow,
)
from pagewire.kit.errors import PermissionDenied
from pagewire.kit.principal import Principal
from pagewire.proto import events_pb2, router_pb2
from services.router.parking import Pages

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name

# Help desks, inboxes and bots: read conversations, send replies, each for its accounts.
READERS = Group("readers", "ROUTER_READERS", ("app",))
SENDERS = Group("senders", "ROUTER_SENDERS", ("app",))

ROUTER_ACCESS = AccessTable(
    SERVICE_NAME,
    {
        # The internet-facing gateway appends webhooks and may do nothing else; subscriptions
        # appends what it reads back from Graph (history import, gap repair). INGEST_ORIGINS
        # below says which origins each may append.
        "Ingest": allow(GATEWAY, SUBSCRIPTIONS),
        # The page lifecycle: after connect, in `pages list`, on disconnect --purge.
        "RouteParked": allow(SUBSCRIPTIONS),
        "PageDisconnected": allow(SUBSCRIPTIONS),
        "GetPageActivity": allow(SUBSCRIPTIONS),
        "PurgePage": allow(SUBSCRIPTIONS),
        # Stored conversations: operators (every account) and readers (their accounts).
        "ListConversations": allow(OPERATORS, READERS, accounts=True),
        "ListMessages": allow(OPERATORS, READERS, accounts=True),
        "ListEvents": allow(OPERATORS, READERS, accounts=True),
        "StreamEvents": allow(OPERATORS, READERS, accounts=True),
        # Acting as the Page through Graph: operators and senders, for their accounts.
        "SendMessage": allow(OPERATORS, SENDERS, accounts=True),
        "SendAction": allow(OPERATORS, SENDERS, accounts=True),
        # Comments: read like conversations, answered and moderated like sends.
        "ListComments": allow(OPERATORS, READERS, accounts=True),
        "ReplyToComment": allow(OPERATORS, SENDERS, accounts=True),
        "ModerateComment": allow(OPERATORS, SENDERS, accounts=True),
        # The apply stage's backlog (`pagewire router status`) and reprocessing: operators.
        "GetLogStatus": allow(OPERATORS),
        "ReprocessEvents": allow(OPERATORS),
    },
)

# What each caller of Ingest may append: the gateway only what Meta delivered, never a
# history marker (it would announce an import that never ran); subscriptions only what
# it read from the Conversations API, markers with the import's origin alone. Any other
# identity (the table above lets none through) may append nothing.
INGEST_ORIGINS: Mapping[str, frozenset[Origin]] = {
    GATEWAY: frozenset({Origin.WEBHOOK}),
    SUBSCRIPTIONS: frozenset({Origin.HISTORY, Origin.GAP_REPAIR}),
}
MARKER_ORIGINS: Mapping[str, frozenset[Origin]] = {SUBSCRIPTIONS: frozenset({Origin.HISTORY})}


def require_origins(principal: Principal, events: Iterable[events_pb2.Event]) -> None:
    """PermissionDenied, naming the first event and its origin, unless the caller may
    append every event's origin; checked before anything of the call is appended.

    A caller without a certificate (plaintext, loopback only) passed authorization as
    everyone, and may append every origin here too; the structure of each event (an
    origin that exists, a marker's) is Ingest's validation."""
    if not principal.authenticated:
        return
    allowed = INGEST_ORIGINS.get(principal.identity, frozenset())
    markers = MARKER_ORIGINS.get(principal.identity, frozenset())
    for i, event in enumerate(events):
        marker = event.WhichOneof("kind") == "history"
        try:
            origin = Origin.from_proto(event.origin)
        except ValueError:
            origin = None
        if origin in (markers if marker else allowed):
            continue
        name = _origin_name(event.origin)
        what = f"history markers of {name}" if marker else f"{name} events"
        raise PermissionDenied(
            f"{principal.identity!r} may not call {principal.method} with {what} (events[{i}])"
        )


def _origin_name(value: int) -> str:
    try:
        return events_pb2.Origin.Name(value)
    except ValueError:
        return f"origin {value}"


ACCOUNTS_VARIABLE = "ROUTER_ACCOUNT_ACCESS"
# Operators see every account unless the variable says otherwise.
ACCOUNT_DEFAULTS: Mapping[str, tuple[str, ...]] = {"cli": ("*",)}


def access_settings(environ: Mapping[str, str]) -> AccessSettings:
    """The router's groups and account access, from the environment."""
    return AccessSettings.from_env(
        environ,
        [ROUTER_ACCESS],
        accounts_variable=ACCOUNTS_VARIABLE,
        account_defaults=ACCOUNT_DEFAULTS,
    )


class PageOwners:
    """Answers "may this principal reach this page?" from the page's current account."""

    def __init__(self, pages: Pages) -> None:
        self._pages = pages

    async def require(self, principal: Principal, platform: int, page_id: str) -> None:
        """AccountDenied unless every platform's connection of the page is the principal's.

        A page no account owns (not connected), or one nobody can vouch for right now, is
        refused to a limited principal: it would otherwise learn which pages exist.
        """
        if principal.every_account:
            return
        platforms = (
            [Platform.from_proto(platform)]
            if platform != events_pb2.PLATFORM_UNSPECIFIED
            else list(Platform)
        )
        owners, unresolved = await self._pages.resolve((p.value, page_id) for p in platforms)
        known = [o for o in owners.values() if o is not None]
        if unresolved or not known or not all(principal.may(o) for o in known):
            raise principal.deny_page(page_id)
