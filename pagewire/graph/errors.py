"""The one error every Graph call raises, in Graph's own terms, safe to log and show."""

from __future__ import annotations

from typing import Any

import httpx

from pagewire.graph import codes

_MAX_MESSAGE_CHARS = 1000


class GraphError(Exception):
    """A Graph call that did not succeed.

    `code` 0 means Graph gave no error object (a non-JSON body, a 5xx from a
    proxy, or no answer at all); `unavailable` means no answer at all;
    `throttled` means the call was not even sent because Graph had asked us
    to wait (`retry_after_s` says how long is left). Never carries a token.
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
        throttled: bool = False,
        retry_after_s: float = 0.0,
        timed_out: bool = False,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.type = type
        self.message = message[:_MAX_MESSAGE_CHARS]
        self.fbtrace_id = fbtrace_id
        self.unavailable = unavailable
        self.throttled = throttled
        self.retry_after_s = retry_after_s
        # Sent but not answered in time: Graph may have acted on it (a send may be delivered).
        self.timed_out = timed_out
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        """One safe line: code/subcode, type and Graph's message."""
        if self.unavailable:
            return f"Graph API unreachable: {self.message}"
        if self.throttled:
            return f"Graph rate limit: {self.message}"
        code = f"{self.code}/{self.subcode}" if self.subcode else str(self.code)
        kind = f" {self.type}" if self.type else ""
        return f"Graph error {code}{kind} (HTTP {self.http_status}): {self.message}"

    @property
    def meaning(self) -> str:
        """Pagewire's reading of the code (codes.py), empty for codes it has no entry for."""
        return codes.meaning(self.code, self.subcode)

    @property
    def token_invalid(self) -> bool:
        """Graph refused the token itself: the page must be authorised again."""
        return codes.is_token_invalid(self.code, self.subcode)

    @property
    def transient(self) -> bool:
        """Worth retrying later: no answer, a server error, or a retryable code."""
        return (
            self.unavailable
            or self.throttled
            or self.http_status >= 500
            or codes.is_retryable(self.code)
        )

    def __repr__(self) -> str:
        return (
            f"GraphError(http_status={self.http_status}, code={self.code},"
            f" subcode={self.subcode}, type={self.type!r}, fbtrace_id={self.fbtrace_id!r},"
            f" unavailable={self.unavailable}, throttled={self.throttled})"
        )


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def error_from_body(status: int, body: Any) -> GraphError:
    """Graph's `{"error": {...}}`; anything else is code 0 with the HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GraphError(http_status=status, message=f"HTTP {status} without a Graph error body")
    return GraphError(
        http_status=status,
        code=_as_int(error.get("code")),
        subcode=_as_int(error.get("error_subcode")),
        type=str(error.get("type") or ""),
        message=str(error.get("message") or ""),
        fbtrace_id=str(error.get("fbtrace_id") or ""),
    )


def error_from_response(response: httpx.Response) -> GraphError:
    """Parses a failed response's body into a GraphError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_body(response.status_code, body)
