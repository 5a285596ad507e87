"""The Graph API calls the subscriptions service makes: the `subscribed_apps` edge.

One `httpx.AsyncClient` per process. The page token travels only in the
`Authorization: Bearer` header: URLs end up in logs, spans and proxies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from pagewire.kit.settings import Secret

log = logging.getLogger("pagewire.subscriptions.graph")

FACEBOOK = "FACEBOOK"
INSTAGRAM = "INSTAGRAM"

# Meta codes that mean "try again later" (META_PLATFORM.md §7); retries are a later issue,
# but callers can already tell these apart from permanent refusals.
_TRANSIENT_CODES = {1, 2, 4, 17, 32, 613, 1200}
_MAX_MESSAGE_CHARS = 1000


class GraphError(Exception):
    """A Graph call that did not succeed, in Graph's own terms.

    `code` 0 means Graph gave no error object (a non-JSON body, a 5xx from a
    proxy, or no answer at all); `unavailable` means no answer at all.
    """

    def __init__(
        self,
        *,
        http_status: int,
        code: int = 0,
        subcode: int = 0,
        type: str = "",
        message: str = "",
        fbtrace_id: str = "",
        unavailable: bool = False,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.type = type
        self.message = message[:_MAX_MESSAGE_CHARS]
        self.fbtrace_id = fbtrace_id
        self.unavailable = unavailable
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        """One safe line: code/subcode, type and Graph's message."""
        if self.unavailable:
            return f"Graph API unreachable: {self.message}"
        code = f"{self.code}/{self.subcode}" if self.subcode else str(self.code)
        kind = f" {self.type}" if self.type else ""
        return f"Graph error {code}{kind} (HTTP {self.http_status}): {self.message}"

    @property
    def token_invalid(self) -> bool:
        """Graph refused the token itself: the page must be authorised again."""
        return self.code == 190 or (self.code == 102 and not self.subcode)

    @property
    def transient(self) -> bool:
        """Worth retrying later: no answer, a server error, or a throttling code."""
        return self.unavailable or self.http_status >= 500 or self.code in _TRANSIENT_CODES

    def __repr__(self) -> str:
        return (
            f"GraphError(http_status={self.http_status}, code={self.code},"
            f" subcode={self.subcode}, type={self.type!r}, fbtrace_id={self.fbtrace_id!r},"
            f" unavailable={self.unavailable})"
        )


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def error_from_response(response: httpx.Response) -> GraphError:
    """Parses Graph's `{"error": {...}}` body; anything else is code 0 with the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GraphError(
            http_status=response.status_code,
            message=f"HTTP {response.status_code} without a Graph error body",
        )
    return GraphError(
        http_status=response.status_code,
        code=_as_int(error.get("code")),
        subcode=_as_int(error.get("error_subcode")),
        type=str(error.get("type") or ""),
        message=str(error.get("message") or ""),
        fbtrace_id=str(error.get("fbtrace_id") or ""),
    )


class GraphClient:
    """`subscribed_apps` POST, GET and DELETE on the Facebook and Instagram Graph hosts."""

    def __init__(
        self,
        *,
        graph_url: str,
        instagram_graph_url: str,
        version: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._bases = {FACEBOOK: graph_url.rstrip("/"), INSTAGRAM: instagram_graph_url.rstrip("/")}
        self._version = version
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            follow_redirects=False,  # a redirect would carry the bearer header somewhere else
            headers={"User-Agent": "pagewire-subscriptions"},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, platform: str, page_id: str) -> str:
        # page_id is validated as digits by the servicer, so it cannot alter the path.
        return f"{self._bases[platform]}/{self._version}/{page_id}/subscribed_apps"

    async def _call(
        self,
        method: str,
        platform: str,
        page_id: str,
        token: Secret,
        data: dict[str, str] | None = None,
    ) -> Any:
        url = self._url(platform, page_id)
        headers = {"Authorization": f"Bearer {token.get()}"}
        try:
            response = await self._http.request(method, url, headers=headers, data=data)
        except httpx.TimeoutException as exc:
            raise GraphError(
                http_status=0, message=f"timed out ({type(exc).__name__})", unavailable=True
            ) from None
        except httpx.TransportError as exc:
            raise GraphError(
                http_status=0, message=f"{type(exc).__name__}", unavailable=True
            ) from None
        if response.status_code >= 400:
            error = error_from_response(response)
            log.warning(
                "graph call failed",
                extra={
                    "method": method,
                    "platform": platform,
                    "page_id": page_id,
                    "http_status": error.http_status,
                    "graph_code": error.code,
                    "graph_subcode": error.subcode,
                    "fbtrace_id": error.fbtrace_id,
                },
            )
            raise error
        try:
            body = response.json()
        except ValueError:
            raise GraphError(
                http_status=response.status_code, message="response is not JSON"
            ) from None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise error_from_response(response)
        return body

    async def subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> None:
        """Subscribes the app to the page's webhook `fields`."""
        body = await self._call(
            "POST", platform, page_id, token, data={"subscribed_fields": ",".join(fields)}
        )
        _require_success(body)

    async def unsubscribe(self, platform: str, page_id: str, token: Secret) -> None:
        """Removes the app's webhook subscription from the page."""
        _require_success(await self._call("DELETE", platform, page_id, token))

    async def subscribed_apps(
        self, platform: str, page_id: str, token: Secret
    ) -> list[dict[str, Any]]:
        """Apps subscribed to the page, as Graph lists them (empty once Meta disabled ours)."""
        body = await self._call("GET", platform, page_id, token)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise GraphError(http_status=200, message="response has no 'data' list")
        return [item for item in data if isinstance(item, dict)]


def _require_success(body: Any) -> None:
    # Messenger answers "true" as a string, Instagram Login a boolean (fixtures/graph/README).
    if not (isinstance(body, dict) and body.get("success") in (True, "true")):
        raise GraphError(http_status=200, message="Graph did not confirm success")
