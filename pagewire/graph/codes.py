"""Graph API error codes and what Pagewire does about each (META_PLATFORM.md §7).

Decisions are made by code and subcode, never by Graph's message text, which
is translated, reworded and changes between versions. This is the one table;
every service asks it through `is_token_invalid`, `is_retryable` and `meaning`.
"""

from __future__ import annotations

# The token itself is refused: the page must be authorised again. 190 with any
# subcode; 102 only without a subcode (102 with a subcode is a session problem
# of another kind, not a dead token).
TOKEN_INVALID_CODE = 190
API_SESSION_CODE = 102

# Worth retrying with backoff: Meta says "try again later" with these.
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 32, 613, 1200})

# Rate limits: retrying at once makes them worse; honour the usage headers.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})

CODES: dict[int, str] = {
    1: "unknown error; retry with backoff",
    2: "temporary service error; retry with backoff",
    4: "application request limit reached",
    10: "permission denied (pages_messaging missing or not granted)",
    17: "user request limit reached",
    32: "page request limit reached",
    100: "invalid parameter",
    102: "API session; without a subcode the token is invalid",
    190: "access token invalid or expired; the page must be authorised again",
    200: "permission error",
    230: "permission error",
    551: "person not available; do not retry",
    613: "calls to this API have exceeded the rate limit",
    1200: "temporary send message failure; retry",
    2500: "unknown path or missing token",
}

SUBCODES: dict[tuple[int, int], str] = {
    (190, 458): "app not installed",
    (190, 459): "user checkpointed",
    (190, 460): "session invalidated: password changed or security reset",
    (190, 463): "token expired",
    (190, 464): "unconfirmed user",
    (190, 467): "user logged out or token invalid",
    (4, 2018354): "marketing message frequency limit",
    (10, 2018278): "message sent outside the allowed window",
    (10, 2018065): "permission error",
    (10, 2018108): "permission error",
    (100, 2018001): "no matching user found",
    (100, 2018109): "attachment size exceeds the limit",
    (100, 2018218): "no profile available for this user",
    (551, 1545041): "person not available right now",
}


def is_token_invalid(code: int, subcode: int) -> bool:
    """Graph refused the token itself: 190 with any subcode, or 102 without one."""
    return code == TOKEN_INVALID_CODE or (code == API_SESSION_CODE and not subcode)


def is_retryable(code: int) -> bool:
    """A Graph error code that means "try again later"."""
    return code in RETRYABLE_CODES


def is_rate_limit(code: int) -> bool:
    return code in RATE_LIMIT_CODES


def meaning(code: int, subcode: int = 0) -> str:
    """What Pagewire understands by this code/subcode; empty when it has no entry."""
    return SUBCODES.get((code, subcode)) or CODES.get(code, "")
