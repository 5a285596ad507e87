"""Who may call which RPC: one allow-list of certificate identities per method.

Each service declares an `AccessTable` next to its servicer (services/<name>/access.py):
every RPC of its proto service and the identities — or configurable groups of
identities, such as the router's readers — allowed to call it. `start_server`
installs an `AuthorizationInterceptor` built from the tables; it runs before the
handler, so a caller outside the list gets PERMISSION_DENIED naming the method
(never the allowed identities), counted in `pagewire_rpc_denied_total` and
written to the audit log with the caller. A method missing from the table is
refused (fail closed), and a table missing a method of its proto service stops
the server at start. Health and reflection stay open: probes have no certificate.

A caller that passed carries a `Principal` (pagewire.kit.principal) into the
handler: its identity and the accounts `PAGEWIRE_<SERVICE>_ACCOUNT_ACCESS` gives
it, which the handlers of account-scoped RPCs check.

Without TLS (`PAGEWIRE_INSECURE_GRPC=1`, loopback only, or in-process tests) no
caller has an identity; the policy then lets every caller do everything, as the
start-up warning says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import Counter

from pagewire.kit import telemetry
from pagewire.kit.errors import PermissionDenied
from pagewire.kit.principal import AccountAccess, Principal, bind
from pagewire.kit.settings import PREFIX, SettingsError
from pagewire.kit.tls import Caller, caller_of

log = logging.getLogger("pagewire.audit")

# The services' own certificate names (pagewire.kit.tls issues one each).
GATEWAY, ROUTER, TOKENS, SUBSCRIPTIONS = "gateway", "router", "tokens", "subscriptions"
# Services every server answers without a certificate check.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

DENIED = Counter(
    "pagewire_rpc_denied_total",
    "gRPC calls refused by authorization (identity or account), by method and caller",
    ["service", "method", "caller"],
)


@dataclass(frozen=True)
class Group:
    """A set of identities an operator configures with `PAGEWIRE_<variable>` (comma list)."""

    name: str
    variable: str
    default: tuple[str, ...]

    def __str__(self) -> str:
        return f"@{self.name}"


# Operators: the `pagewire` CLI's certificate, on every service.
OPERATORS = Group("operators", "OPERATORS", ("cli",))


@dataclass(frozen=True)
class Rule:
    """Who may call one method, and whether the handler checks the caller's accounts."""

    allowed: tuple[str | Group, ...]
    per_account: bool = False


def allow(*allowed: str | Group, accounts: bool = False) -> Rule:
    """`allow(GATEWAY)`, `allow(OPERATORS, READERS, accounts=True)`: a table row."""
    return Rule(tuple(allowed), accounts)


@dataclass(frozen=True)
class AccessTable:
    """Every RPC of one proto service and who may call it."""

    service: str
    rules: Mapping[str, Rule]

    def groups(self) -> set[Group]:
        return {a for rule in self.rules.values() for a in rule.allowed if isinstance(a, Group)}

    def check_complete(self) -> None:
        """Raises when the table and the proto service disagree on the methods."""
        try:
            described = descriptor_pool.Default().FindServiceByName(self.service)
        except KeyError:
            raise ValueError(f"access table for unknown service {self.service}") from None
        methods = {m.name for m in described.methods}
        missing, extra = methods - set(self.rules), set(self.rules) - methods
        if missing or extra:
            raise ValueError(
                f"access table of {self.service}: no rule for {sorted(missing)},"
                f" rules for unknown methods {sorted(extra)}"
            )


def group_members(environ: Mapping[str, str], group: Group) -> tuple[str, ...]:
    """The identities of `group` from its variable, else its default."""
    raw = environ.get(PREFIX + group.variable)
    if raw is None or not raw.strip():
        return group.default
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    for name in names:
        if name in (GATEWAY, "*") or not name.replace("-", "").replace(".", "").isalnum():
            # The internet-facing gateway never joins a group: it may only append webhooks.
            raise SettingsError(f"{PREFIX}{group.variable}: {name!r} cannot be in this list")
    return names


@dataclass(frozen=True)
class AccessSettings:
    """The configurable part of a server's policy: group members and account access."""

    groups: Mapping[Group, tuple[str, ...]]
    accounts: AccountAccess

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        tables: Sequence[AccessTable],
        *,
        accounts_variable: str,
        account_defaults: Mapping[str, Iterable[str]],
    ) -> AccessSettings:
        groups = {g: group_members(environ, g) for t in tables for g in t.groups()}
        accounts = AccountAccess.parse(
            environ.get(PREFIX + accounts_variable, ""), accounts_variable, account_defaults
        )
        return cls(groups, accounts)

    def describe(self) -> dict[str, object]:
        """For the start-up log line."""
        return {
            "groups": {str(g): list(m) for g, m in sorted(self.groups.items(), key=str)},
            "account_access": self.accounts.describe(),
        }


@dataclass(frozen=True)
class _Method:
    service: str
    name: str
    identities: frozenset[str]
    anyone: bool
    per_account: bool


AuditHook = Callable[[str, str, str, object], Awaitable[None]]
"""(caller, method name, reason, request) → recorded; a service's own audit store."""


@dataclass
class Policy:
    """The resolved tables of one server: method path → who, plus account access."""

    methods: dict[str, _Method]
    accounts: AccountAccess
    allow_unauthenticated: bool
    audit: AuditHook | None = None
    services: frozenset[str] = field(default_factory=frozenset)
    # Policy.open: every method of `services` to every caller (in-process test fakes).
    everything: bool = False

    @classmethod
    def build(
        cls,
        tables: Sequence[AccessTable],
        settings: AccessSettings | None = None,
        *,
        allow_unauthenticated: bool,
        audit: AuditHook | None = None,
    ) -> Policy:
        """Checks every table against its proto service and resolves the groups."""
        settings = settings or AccessSettings(
            {g: g.default for t in tables for g in t.groups()}, AccountAccess({})
        )
        methods: dict[str, _Method] = {}
        for table in tables:
            table.check_complete()
            for name, rule in table.rules.items():
                identities: set[str] = set()
                for who in rule.allowed:
                    if isinstance(who, Group):
                        identities.update(settings.groups.get(who, who.default))
                    else:
                        identities.add(who)
                methods[f"/{table.service}/{name}"] = _Method(
                    table.service,
                    name,
                    frozenset(identities - {"*"}),
                    "*" in identities,
                    rule.per_account,
                )
        return cls(
            methods,
            settings.accounts,
            allow_unauthenticated,
            audit,
            frozenset(t.service for t in tables),
        )

    @classmethod
    def open(cls, services: Iterable[str]) -> Policy:
        """Everything allowed to everyone: in-process fakes of other services in tests."""
        return cls({}, AccountAccess({}), True, None, frozenset(services), everything=True)

    def decide(self, caller: Caller, path: str) -> Principal | str:
        """The principal the call runs as, or the reason it is refused."""
        method = self.methods.get(path)
        short = path.rsplit("/", 1)[-1]
        if self.everything:
            return Principal(caller.name, None, short, authenticated=caller.authenticated)
        if method is None:
            return f"{caller.name!r} may not call {short}"
        if not caller.authenticated:
            if self.allow_unauthenticated:
                return Principal(caller.name, None, short, authenticated=False)
            return f"{short} requires a client certificate"
        if method.anyone:
            name = caller.name
        else:
            matched = caller.matching(method.identities)
            if matched is None:
                return f"{caller.name!r} may not call {short}"
            name = matched
        return Principal(name, self.accounts.of(name), short)


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call against the policy before its handler runs; audits refusals.

    A refusal raised later by the handler itself (an account the caller may not reach)
    is audited and counted the same way.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        service = path.lstrip("/").rsplit("/", 1)[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        policy = self._policy

        async def admit(request, context) -> Principal:  # type: ignore[no-untyped-def]
            caller = caller_of(context)
            decision = policy.decide(caller, path)
            if isinstance(decision, str):
                await self._refused(caller.name, service, path, decision, request, context)
                raise PermissionDenied(decision)
            telemetry.annotate(caller=decision.identity)
            bind(decision)
            return decision

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):  # type: ignore[no-untyped-def]
                principal = await admit(request, context)
                try:
                    return await inner(request, context)
                except PermissionDenied as exc:
                    await self._refused(
                        principal.identity, service, path, str(exc), request, context
                    )
                    raise

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):  # type: ignore[no-untyped-def]
                principal = await admit(request, context)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except PermissionDenied as exc:
                    await self._refused(
                        principal.identity, service, path, str(exc), request, context
                    )
                    raise

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # No streaming-request RPC exists; refuse rather than let one pass unchecked.
        return _refuse_all(handler)

    async def _refused(
        self,
        caller: str,
        service: str,
        path: str,
        reason: str,
        request: object,
        context: grpc.aio.ServicerContext,
    ) -> None:
        method = path.rsplit("/", 1)[-1]
        DENIED.labels(service.rsplit(".", 1)[-1], method, caller[:64]).inc()
        log.warning(
            "call refused",
            extra={"caller": caller, "rpc": method, "service": service, "reason": reason},
        )
        if self._policy.audit is not None:
            try:
                await self._policy.audit(caller, method, reason, request)
            except Exception:
                # The refusal stands whatever happens to its record; the log line above has it.
                log.exception("could not record a refused call", extra={"rpc": method})


def _refuse_all(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(request_iterator, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming requests are refused")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
