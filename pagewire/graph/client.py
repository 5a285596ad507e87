"""The Graph API over HTTP: one `httpx.AsyncClient` per process, shared by every caller.

The token travels only in the `Authorization: Bearer` header — URLs end up in
logs, spans and proxies. Retryable failures (codes.RETRYABLE_CODES, HTTP 5xx,
timeouts, connection errors) are retried with full-jitter backoff, and a wait
Graph asks for in `X-Business-Use-Case-Usage` is honoured for every later call
about the same object (and `X-App-Usage` near or at 100% holds every call a while);
a wait longer than the budget of one call is not slept
through: the call fails with `retry_after_s` and the object stays on hold.

Every attempt is counted by endpoint and result (pagewire_graph_calls_total);
while tracing is on a call is a `graph <METHOD> <endpoint>` span with an HTTP
span per attempt, whose URL keeps neither the query nor, of course, the header.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from pagewire.graph import codes
from pagewire.graph.config import GraphSettings
from pagewire.graph.errors import GraphError, error_from_response
from pagewire.graph.metrics import GRAPH_CALLS, GRAPH_SECONDS, endpoint_of
from pagewire.graph.ratelimit import (
    APP_WIDE,
    Backoff,
    Clock,
    Throttle,
    app_usage_hold_s,
    regain_access_s,
)
from pagewire.kit import telemetry
from pagewire.kit.settings import Secret

log = logging.getLogger("pagewire.graph")
tracer = telemetry.tracer("pagewire.graph")

FACEBOOK = "FACEBOOK"
INSTAGRAM = "INSTAGRAM"


def appsecret_proof(secret: Secret, token: Secret) -> str:
    """HMAC-SHA256 of the token keyed with the app secret, as Graph checks it."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


class GraphClient:
    """Versioned Graph calls on the Messenger host and the Instagram Login host."""

    def __init__(
        self,
        settings: GraphSettings,
        *,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "pagewire",
    ) -> None:
        self.settings = settings
        self._bases = {FACEBOOK: settings.url, INSTAGRAM: settings.instagram_url}
        self._secrets = {FACEBOOK: settings.app_secret, INSTAGRAM: settings.instagram_app_secret}
        self._clock = clock or Clock()
        self._backoff = Backoff(settings.retry_base_s, settings.retry_max_wait_s)
        if rng is not None:
            self._backoff.rng = rng
        self.throttle = Throttle(self._clock)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=min(settings.timeout_s, 5.0)),
            follow_redirects=False,  # a redirect would carry the bearer header somewhere else
            headers={"User-Agent": user_agent},
            transport=telemetry.httpx_transport(transport),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def url(self, platform: str, path: str, *, versioned: bool = True) -> str:
        base = self._bases[platform]
        return f"{base}/{self.settings.version}/{path}" if versioned else f"{base}/{path}"

    async def request(
        self,
        method: str,
        platform: str,
        path: str,
        *,
        token: Secret,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        object_id: str = "",
        versioned: bool = True,
        retry_timeouts: bool = True,
    ) -> Any:
        """One Graph call with retries; returns the JSON body or raises GraphError.

        `path` is built by the caller from validated ids only. `object_id` (the
        page or account the call is about) keys the rate-limit hold. Pass
        `retry_timeouts=False` for calls that must not be repeated once sent.
        """
        endpoint = endpoint_of(path)
        attributes = {
            "pagewire.graph.endpoint": endpoint,
            "pagewire.platform": platform.lower(),
            "http.request.method": method,
        }
        if object_id:
            attributes["pagewire.object_id"] = object_id
        with tracer.start_as_current_span(f"graph {method} {endpoint}", attributes=attributes):
            try:
                return await self._request(
                    method,
                    platform,
                    path,
                    endpoint,
                    token=token,
                    params=params,
                    data=data,
                    object_id=object_id,
                    versioned=versioned,
                    retry_timeouts=retry_timeouts,
                )
            except GraphError as exc:
                codes_seen = {"graph.error_code": exc.code, "graph.error_subcode": exc.subcode}
                telemetry.annotate(**codes_seen)
                raise

    async def _request(
        self,
        method: str,
        platform: str,
        path: str,
        endpoint: str,
        *,
        token: Secret,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        object_id: str,
        versioned: bool,
        retry_timeouts: bool,
    ) -> Any:
        url = self.url(platform, path, versioned=versioned)
        query = dict(params or {})
        secret = self._secrets[platform]
        if secret is not None:
            query["appsecret_proof"] = appsecret_proof(secret, token)
        headers = {"Authorization": f"Bearer {token.get()}"}
        attempts = self.settings.max_attempts
        for attempt in range(attempts):
            held = self.throttle.remaining(object_id) if object_id else self.throttle.remaining()
            if held > 0:
                if held > self.settings.retry_max_wait_s:
                    GRAPH_CALLS.labels(method, endpoint, "held").inc()
                    raise GraphError(
                        http_status=0,
                        code=613,
                        message=f"not sent; Graph asked to wait {held:.0f}s more",
                        throttled=True,
                        retry_after_s=held,
                    )
                await self._clock.sleep(held)
            response: httpx.Response | None = None
            started = time.monotonic()
            try:
                response = await self._http.request(
                    method, url, params=query or None, data=data, headers=headers
                )
            except httpx.TimeoutException as exc:
                _observe(method, endpoint, started, "timeout")
                error = GraphError(
                    http_status=0,
                    message=f"timed out ({type(exc).__name__})",
                    unavailable=True,
                    timed_out=not isinstance(exc, httpx.ConnectTimeout),
                )
                if not retry_timeouts:
                    raise error from None
            except httpx.TransportError as exc:
                _observe(method, endpoint, started, "unreachable")
                error = GraphError(http_status=0, message=type(exc).__name__, unavailable=True)
            else:
                body, error = _parse(response)
                _observe(method, endpoint, started, _result(error))
                self._remember_waits(response, object_id, error, attempt)
                if error is None:
                    return body
            last = attempt + 1 >= attempts
            self._log_failure(method, platform, path, error, attempt)
            if not error.transient or last:
                error.retry_after_s = max(error.retry_after_s, self._held(object_id))
                raise error
            delay = max(self._backoff.delay(attempt), self._held(object_id))
            if delay > self.settings.retry_max_wait_s:
                error.retry_after_s = delay
                raise error
            log.info(
                "graph call retried",
                extra={
                    "method": method,
                    "path": path,
                    "attempt": attempt + 1,
                    "delay_s": round(delay, 3),
                    "graph_code": error.code,
                },
            )
            await self._clock.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def _held(self, object_id: str) -> float:
        return self.throttle.remaining(object_id) if object_id else self.throttle.remaining()

    def _remember_waits(
        self, response: httpx.Response, object_id: str, error: GraphError | None, attempt: int
    ) -> None:
        waits = regain_access_s(response)
        for waiting_id, seconds in waits.items():
            self.throttle.hold(waiting_id, seconds)
        app_hold = app_usage_hold_s(response)
        if app_hold:
            self.throttle.hold(APP_WIDE, app_hold)
        if error is None or not codes.is_rate_limit(error.code):
            return
        if object_id and object_id in waits:
            return
        # Rate limited with no wait given: hold the object (or, for the app-wide
        # limit, everything) for a backoff step, so other callers don't pile on.
        key = APP_WIDE if error.code == 4 or not object_id else object_id
        self.throttle.hold(key, self._backoff.delay(attempt))

    @staticmethod
    def _log_failure(
        method: str, platform: str, path: str, error: GraphError, attempt: int
    ) -> None:
        log.warning(
            "graph call failed",
            extra={
                "method": method,
                "platform": platform,
                "path": path,
                "attempt": attempt + 1,
                "http_status": error.http_status,
                "graph_code": error.code,
                "graph_subcode": error.subcode,
                "graph_meaning": error.meaning,
                "fbtrace_id": error.fbtrace_id,
            },
        )


def _result(error: GraphError | None) -> str:
    """The `code` label of an answered attempt."""
    if error is None:
        return "ok"
    return str(error.code) if error.code else f"http_{error.http_status}"


def _observe(method: str, endpoint: str, started: float, code: str) -> None:
    GRAPH_CALLS.labels(method, endpoint, code).inc()
    GRAPH_SECONDS.labels(endpoint).observe(time.monotonic() - started)


def _parse(response: httpx.Response) -> tuple[Any, GraphError | None]:
    if response.status_code >= 400:
        return None, error_from_response(response)
    try:
        body = response.json()
    except ValueError:
        return None, GraphError(http_status=response.status_code, message="response is not JSON")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return None, error_from_response(response)
    return body, None
