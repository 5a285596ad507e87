"""Who may call which SubscriptionsService RPC, and which accounts' pages they reach.

The table is enforced by the kit's authorization interceptor before a handler
runs. Every page operation also checks, in the handler, that the page — or the
account the request names — belongs to one of the caller's accounts
(`PAGEWIRE_SUBSCRIPTIONS_ACCOUNT_ACCESS`); the router, which looks pages up for
every webhook, reaches every account.
"""

from __future__ import annotations

from collections.abc import Mapping

from pagewire.kit.authz import OPERATORS, ROUTER, AccessSettings, AccessTable, Group, allow
from pagewire.kit.principal import Principal
from pagewire.proto import subscriptions_pb2
from services.subscriptions.connections import Connections

SERVICE_NAME = subscriptions_pb2.DESCRIPTOR.services_by_name["SubscriptionsService"].full_name

# Help desks and inboxes that show their accounts' pages.
READERS = Group("readers", "SUBSCRIPTIONS_READERS", ("app",))

SUBSCRIPTIONS_ACCESS = AccessTable(
    SERVICE_NAME,
    {
        # The router asks which account a page belongs to, for every webhook.
        "GetPage": allow(ROUTER, OPERATORS, READERS, accounts=True),
        "ListPages": allow(OPERATORS, READERS, accounts=True),
        # Changing connections (and the tokens they store): operators.
        "ConnectPage": allow(OPERATORS, accounts=True),
        "DisconnectPage": allow(OPERATORS, accounts=True),
        "Resubscribe": allow(OPERATORS, accounts=True),
        "ImportPages": allow(OPERATORS, accounts=True),
        "Reconcile": allow(OPERATORS, accounts=True),
        # Past conversations read from Graph into the router's log: operators.
        "ImportHistory": allow(OPERATORS, accounts=True),
        "RepairGaps": allow(OPERATORS, accounts=True),
    },
)

ACCOUNTS_VARIABLE = "SUBSCRIPTIONS_ACCOUNT_ACCESS"
ACCOUNT_DEFAULTS: Mapping[str, tuple[str, ...]] = {"cli": ("*",), ROUTER: ("*",)}


def access_settings(environ: Mapping[str, str]) -> AccessSettings:
    """The subscriptions service's groups and account access, from the environment."""
    return AccessSettings.from_env(
        environ,
        [SUBSCRIPTIONS_ACCESS],
        accounts_variable=ACCOUNTS_VARIABLE,
        account_defaults=ACCOUNT_DEFAULTS,
    )


async def require_page(
    principal: Principal, connections: Connections, platform: str, page_id: str
) -> None:
    """AccountDenied unless the page is connected to one of the principal's accounts.

    A limited principal is refused a page that is not connected too, so it cannot
    tell another account's page from no page.
    """
    if principal.every_account:
        return
    page = await connections.find(platform, page_id)
    if page is None or not principal.may(page.account_id):
        raise principal.deny_page(page_id)
