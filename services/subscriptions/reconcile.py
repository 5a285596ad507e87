"""Reconcile: notice and repair what happened to a page while nobody was watching.

Meta unsubscribes a page whose webhook kept failing, tokens die when an admin
changes a password, and Instagram Login tokens lapse after 60 days. Each run
checks every due page with `GET subscribed_apps`, subscribes again what is
missing (and records the repair), marks refused tokens REAUTH_REQUIRED, and
refreshes Instagram Login tokens well before they expire. Replicas share the
work: a page is claimed by compare-and-set on `last_checked_at_ms`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.graph import INSTAGRAM, GraphError
from pagewire.kit import telemetry
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import DataLoss, FailedPrecondition, NotFound, PagewireError
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.subscriptions import metrics, store
from services.subscriptions.connections import outcome_of
from services.subscriptions.ports import Graph, TokenState, Vault
from services.subscriptions.store import Outcome, PageConnection
from services.subscriptions.subscribing import Subscriber

log = logging.getLogger("pagewire.subscriptions.reconcile")
tracer = telemetry.tracer("pagewire.subscriptions.reconcile")

OK = "OK"
REPAIRED = "REPAIRED"
REAUTH = "REAUTH_REQUIRED"
FAILED = "FAILED"
SKIPPED = "SKIPPED"
DAY_MS = 86_400_000
CLAIM_BATCH = 500


@dataclass(frozen=True)
class ReconcileSettings:
    """How often and how widely to check, and when Instagram tokens are refreshed."""

    interval_s: float = 600.0
    jitter: float = 0.2
    concurrency: int = 4
    # Refresh an Instagram Login token when fewer days than this remain (tokens live 60).
    ig_refresh_before_days: float = 20.0
    # A refresh that fails with fewer days than this left marks the page REAUTH_REQUIRED
    # now, while a person can still act, instead of letting a quiet inbox lapse.
    ig_reauth_before_days: float = 7.0
    # Meta refreshes only tokens at least a day old; one of unknown expiry is refreshed then.
    ig_min_age_days: float = 1.0


@dataclass(frozen=True)
class Check:
    """One page's check result."""

    platform: str
    page_id: str
    outcome: str
    detail: str = ""
    token_refreshed: bool = False


def _iso_day(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


class Reconciler:
    """Checks pages against Graph and repairs them; the loop and the RPC both use it."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        vault: Vault,
        graph: Graph,
        subscriber: Subscriber,
        settings: ReconcileSettings,
        clock_ms: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._graph = graph
        self._subscriber = subscriber
        self.settings = settings
        self._now = clock_ms
        self._rng = rng

    async def run(
        self, *, platform: str = "", page_id: str = "", account_id: str = ""
    ) -> list[Check]:
        """Checks every matching page now (the Reconcile RPC), in ListPages order."""
        try:
            async with self._sessions() as session:
                pages = await store.list_pages(session, account_id, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return await self._check_all([(p.platform, p.page_id) for p in pages])

    async def run_due(self) -> list[Check]:
        """Checks the pages no replica has checked within half a period (the loop)."""
        checked_before = self._now() - int(self.settings.interval_s * 500)
        results: list[Check] = []
        while True:
            claimed = await self._claim(checked_before)
            if not claimed:
                return results
            results += await self._check_all(claimed)

    async def loop(self, stop: asyncio.Event) -> None:
        """Runs `run_due` every period (jittered) until `stop` is set."""
        period, jitter = self.settings.interval_s, self.settings.jitter
        log.info("reconcile loop started", extra={"interval_s": period})
        while not stop.is_set():
            wait = period * (1 - jitter + 2 * jitter * self._rng())
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return
            except TimeoutError:
                pass  # the period elapsed: time for a run
            try:
                # One trace per run, rather than a root span per statement and call.
                with tracer.start_as_current_span("reconcile run"):
                    results = await self.run_due()
                    telemetry.annotate(checked=len(results))
            except Exception:
                log.exception("reconcile run failed")
                continue
            if results:
                counts = {name: 0 for name in (OK, REPAIRED, REAUTH, FAILED, SKIPPED)}
                for result in results:
                    counts[result.outcome] += 1
                log.info("reconcile run", extra={"checked": len(results), **counts})

    async def _claim(self, checked_before: int) -> list[tuple[str, str]]:
        now = self._now()
        claimed = []
        try:
            async with self._sessions() as session:
                due = await store.due_for_check(session, checked_before, CLAIM_BATCH)
            for platform, page_id, seen in due:
                async with self._sessions() as session, session.begin():
                    if await store.claim_check(session, platform, page_id, seen, now):
                        claimed.append((platform, page_id))
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return claimed

    async def _check_all(self, pages: list[tuple[str, str]]) -> list[Check]:
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(platform: str, page_id: str) -> Check:
            async with gate:
                attributes = {"pagewire.platform": platform.lower(), "pagewire.page_id": page_id}
                with tracer.start_as_current_span("reconcile check", attributes=attributes):
                    try:
                        check = await self.check(platform, page_id)
                    except PagewireError as exc:
                        check = Check(platform, page_id, FAILED, str(exc))
                    telemetry.annotate(outcome=check.outcome)
                    return check

        checks = list(await asyncio.gather(*(one(p, i) for p, i in pages)))
        for check in checks:
            metrics.RECONCILE_CHECKS.labels(check.outcome).inc()
            if check.outcome == REPAIRED:
                metrics.RECONCILE_REPAIRS.labels(check.platform.lower()).inc()
        return checks

    async def check(self, platform: str, page_id: str) -> Check:
        """Checks one page and stores the result on its connection."""
        page = await self._load(platform, page_id)
        if page is None:
            return Check(platform, page_id, SKIPPED, "disconnected meanwhile")
        if page.status == store.REAUTH_REQUIRED:
            await self._record(page, None)
            return Check(platform, page_id, SKIPPED, "waiting for re-authorization")
        try:
            token, token_status = await self._vault.decrypt(platform, page_id)
        except (NotFound, DataLoss, FailedPrecondition) as exc:
            reason = f"no usable token stored ({exc}); connect the page again"
            await self._record(page, Outcome(store.REAUTH_REQUIRED, reason))
            return Check(platform, page_id, REAUTH, reason)
        if token_status == "REAUTH_REQUIRED":
            state = await self._vault.status(platform, page_id)
            reason = state.reason if state and state.reason else "token marked invalid"
            code, subcode = (state.graph_code, state.graph_subcode) if state else (0, 0)
            await self._record(page, Outcome(store.REAUTH_REQUIRED, reason, code, subcode))
            return Check(platform, page_id, REAUTH, reason)

        refreshed = False
        if platform == INSTAGRAM:
            result = await self._refresh_if_due(page, token)
            if isinstance(result, Check):
                return result
            token, refreshed = result

        try:
            gap = await self._subscriber.gap(platform, page_id, token, page.fields)
        except GraphError as exc:
            return await self._graph_failed(page, exc, refreshed)
        if gap.ok:
            await self._record(page, Outcome(store.SUBSCRIBED))
            return Check(platform, page_id, OK, "subscribed", refreshed)

        error = await self._subscriber.subscribe(platform, page_id, token, page.fields)
        if error is not None:
            return await self._graph_failed(page, error, refreshed, found=gap.describe())
        repair = f"{gap.describe()}; subscribed again"
        await self._record(page, Outcome(store.SUBSCRIBED), repair=repair)
        log.warning(
            "page subscription repaired",
            extra={"platform": platform, "page_id": page_id, "repair": repair},
        )
        return Check(platform, page_id, REPAIRED, repair, refreshed)

    async def _refresh_if_due(
        self, page: PageConnection, token: Secret
    ) -> tuple[Secret, bool] | Check:
        """Refreshes an Instagram Login token that is close to expiry (or of unknown expiry)."""
        settings, now = self.settings, self._now()
        state = await self._vault.status(page.platform, page.page_id)
        if state is None:
            return token, False
        expires = state.expires_at_ms
        if expires and expires <= now:
            reason = f"Instagram token expired on {_iso_day(expires)}; connect the page again"
            return await self._reauth(page, reason, 0, 0)
        due = (
            expires - now < settings.ig_refresh_before_days * DAY_MS
            if expires
            else now - state.updated_at_ms >= settings.ig_min_age_days * DAY_MS
        )
        if not due:
            return token, False
        try:
            refreshed = await self._graph.refresh_instagram_token(page.page_id, token)
        except GraphError as exc:
            return await self._refresh_failed(page, state, exc)
        new_expiry = now + refreshed.expires_in_s * 1000 if refreshed.expires_in_s else 0
        await self._vault.put(page.platform, page.page_id, refreshed.token, new_expiry)
        log.info(
            "instagram token refreshed",
            extra={
                "page_id": page.page_id,
                "old_expires_at_ms": expires,
                "expires_at_ms": new_expiry,
            },
        )
        return refreshed.token, True

    async def _refresh_failed(
        self, page: PageConnection, state: TokenState, exc: GraphError
    ) -> Check:
        expires = state.expires_at_ms
        if exc.token_invalid:
            reason = f"Instagram token refresh refused: {exc.summary}"
            return await self._reauth(page, reason, exc.code, exc.subcode)
        if expires and expires - self._now() < self.settings.ig_reauth_before_days * DAY_MS:
            reason = (
                f"Instagram token expires on {_iso_day(expires)} and could not be refreshed"
                f" ({exc.summary}); connect the page again before then"
            )
            return await self._reauth(page, reason, exc.code, exc.subcode)
        detail = f"Instagram token refresh failed, retried next run: {exc.summary}"
        outcome = Outcome(page.status, detail, exc.code, exc.subcode)
        await self._record(page, outcome)
        return Check(page.platform, page.page_id, FAILED, detail)

    async def _graph_failed(
        self, page: PageConnection, error: GraphError, refreshed: bool, found: str = ""
    ) -> Check:
        if error.token_invalid:
            return await self._reauth(
                page, error.message or error.summary, error.code, error.subcode
            )
        outcome = outcome_of(error)
        if not found:
            # The check itself failed: what Graph has is unknown, so the status stays.
            outcome = Outcome(page.status, error.summary, error.code, error.subcode)
        await self._record(page, outcome)
        detail = f"{found}; resubscribe failed: {error.summary}" if found else error.summary
        kind = SKIPPED if error.throttled else FAILED
        return Check(page.platform, page.page_id, kind, detail, refreshed)

    async def _reauth(self, page: PageConnection, reason: str, code: int, subcode: int) -> Check:
        try:
            await self._vault.mark_invalid(page.platform, page.page_id, reason, code, subcode)
        except PagewireError as exc:
            log.warning(
                "could not mark the token invalid",
                extra={"platform": page.platform, "page_id": page.page_id, "error": str(exc)},
            )
        await self._record(page, Outcome(store.REAUTH_REQUIRED, reason, code, subcode))
        log.warning(
            "page needs re-authorization",
            extra={
                "platform": page.platform,
                "page_id": page.page_id,
                "graph_code": code,
                "graph_subcode": subcode,
            },
        )
        return Check(page.platform, page.page_id, REAUTH, reason)

    async def _load(self, platform: str, page_id: str) -> PageConnection | None:
        try:
            async with self._sessions() as session:
                return await store.get(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    async def _record(
        self, page: PageConnection, outcome: Outcome | None, repair: str = ""
    ) -> None:
        try:
            async with self._sessions() as session, session.begin():
                await store.record_check(
                    session,
                    page.platform,
                    page.page_id,
                    now=self._now(),
                    outcome=outcome,
                    repair=repair,
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
