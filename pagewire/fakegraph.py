"""A local stand-in for the Graph API calls Pagewire makes, in Graph's own shapes.

Graph routes: `/{version}/{id}/subscribed_apps` (POST, GET, DELETE; state per
page), `/{version}/me/accounts` (cursor paging), `/debug_token`,
`graph.instagram.com/refresh_access_token`, the User Profile API `GET /{psid}`,
the Send API `POST /{page-id}/messages` (pagewire.fakesend), and comments —
`POST /{comment-id}/comments`, `POST /{ig-comment-id}/replies`, private replies
through `/messages`, hide (`POST /{id}` is_hidden / hide), `DELETE /{id}`,
`GET /{post|media|comment-id}/comments|replies` (pagewire.fakecomments, whose
docstring gives every shape and error), and the Conversations API — `GET
/{page-id}/conversations`, `GET /{conversation-id}/messages` over a scripted history
(pagewire.fakehistory, likewise). Both hosts are served alike. Used by the
tests (in-process, through `start()`) and by `pagewire fake-graph` (`serve()`).
It records every Graph request it receives and is steered through a control API
under `/_fake/`:

    GET  /_fake/requests    every recorded Graph request, oldest first
    GET  /_fake/pages       subscriptions by page id
    POST /_fake/reset       forget requests, pages, failures, users, sends, comments and
                             histories
    POST /_fake/fail        {"method", "path_contains", "status", "error" | "preset" | "body",
                             "times", "after", "delay_s", "headers"} — the next matching
                             requests fail (or, with "body", get that JSON instead of the
                             normal answer; with only "delay_s", answer slowly); with
                             "after": n the first n matching requests pass, the next
                             `times` fail
    POST /_fake/unsubscribe {"page_id", "fields"?} — Meta silently drops the page's
                             subscription (or only those fields), as it does to a webhook
                             that kept failing
    POST /_fake/accounts    {"user_token", "pages": [{"id", "name", "access_token", ...}]}
                             — the Pages `/me/accounts` lists for that user token
    POST /_fake/echo        {"gateway_url", "app_secret", "app_id"?, "mode"?: "late" | "early",
                             "delay_s"?, "instagram_pages"?, "comments"?: true,
                             "instagram_app_secret"?} — post the signed webhooks a Page sends
                             back (message echoes; comment changes unless "comments" is false)
    POST /_fake/comment     a customer comments on a post (stored, its webhook posted)
    POST /_fake/comments    seed comments silently ({"comments": [...], "strict"?})
    GET  /_fake/comments    every comment the fake knows, with its state
    POST /_fake/history     a page's conversations and messages, replaced (ids made up
                             when absent); /_fake/history/generate makes a seeded one
    GET  /_fake/history     ?page_id= — the script, messages oldest first
    POST /_fake/history/message  a new message in a conversation (its webhook posted)
    POST /_fake/history/deliver  the signed webhooks of scripted messages, some left out
    POST /_fake/history/usage    usage headers on every history answer

Presets are the error bodies Meta sends (../shared/fixtures/graph); they are
embedded here so the server needs nothing outside this repository.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pagewire.fakecomments import CommentApi, CommentState
from pagewire.fakehistory import HistoryApi, HistoryState
from pagewire.fakesend import SendState, answer_send, echo_target_from_json

FAKE_APP_ID = "842019375510284"
_APP = {"category": "Business", "link": "https://pagewire.example/", "name": "Pagewire"}

# Error bodies as Graph sends them (fixtures/graph/error_*.json).
PRESETS: dict[str, dict[str, Any]] = {
    "190_460": {
        "message": "Error validating access token: The session has been invalidated because"
        " the user changed their password or Facebook has changed the session for security"
        " reasons.",
        "type": "OAuthException",
        "code": 190,
        "error_subcode": 460,
        "fbtrace_id": "AzX8kq2hPZl3nTqQf1bR9sV",
    },
    "190_463": {
        "message": "Error validating access token: Session has expired on Friday, 27-Nov-26"
        " 10:00:00 PST. The current time is Sunday, 29-Nov-26 04:00:00 PST.",
        "type": "OAuthException",
        "code": 190,
        "error_subcode": 463,
        "fbtrace_id": "B1yQm7dLsW0aXcE4tRn2kPo",
    },
    "613": {
        "message": "(#613) Calls to this api have exceeded the rate limit.",
        "type": "OAuthException",
        "code": 613,
        "fbtrace_id": "C7vNq1eRt5yUi9oPa3sDf6g",
    },
    "100_2018218": {
        "message": "(#100) No profile available for this user.",
        "type": "OAuthException",
        "code": 100,
        "error_subcode": 2018218,
        "fbtrace_id": "H6yUi8oPa0sDf2gHj4kLz5x",
    },
    "551": {
        "message": "(#551) This person isn't available right now.",
        "type": "OAuthException",
        "code": 551,
        "error_subcode": 1545041,
        "fbtrace_id": "D2wEr4tYu6iOp8aSd0fGh1j",
    },
    "10_2018278": {
        "message": "(#10) This message is sent outside of allowed window. Learn more about the"
        " new policy here: https://developers.facebook.com/docs/messenger-platform/"
        "policy-overview",
        "type": "OAuthException",
        "code": 10,
        "error_subcode": 2018278,
        "fbtrace_id": "E3eRt5yUi7oPa9sDf1gHj2k",
    },
    "100": {
        "message": "(#100) Invalid parameter",
        "type": "OAuthException",
        "code": 100,
        "fbtrace_id": "F4rTy6uIo8pAs0dFg2hJk3l",
    },
    "2": {
        "message": "An unexpected error has occurred. Please retry your request later.",
        "type": "OAuthException",
        "is_transient": True,
        "code": 2,
        "fbtrace_id": "G5tYu7iOp9aSd1fGh3jKl4z",
    },
}
# Rate-limit answers carry usage headers (fixtures/graph/error_613_headers.json).
PRESET_HEADERS: dict[str, dict[str, str]] = {
    "613": {
        "X-Business-Use-Case-Usage": json.dumps(
            {
                "109384756201938": [
                    {
                        "type": "messenger",
                        "call_count": 100,
                        "total_cputime": 12,
                        "total_time": 35,
                        "estimated_time_to_regain_access": 2,
                    }
                ]
            },
            separators=(",", ":"),
        ),
        "X-App-Usage": json.dumps(
            {"call_count": 28, "total_time": 25, "total_cputime": 25}, separators=(",", ":")
        ),
    }
}
# The Pages of fixtures/graph/me_accounts_page{1,2}.json: what /me/accounts lists for a
# user token nobody registered, so `pagewire pages import` works against `pagewire fake-graph`.
DEFAULT_ACCOUNTS: list[dict[str, Any]] = [
    {
        "access_token": "EAAGpage1tokenXXXXXXXXXXXXXXXXXXXXXXXX",
        "category": "Clothing store",
        "category_list": [{"id": "2236", "name": "Clothing store"}],
        "name": "Acme Shoes",
        "id": "109384756201938",
        "tasks": ["ANALYZE", "ADVERTISE", "MESSAGING", "MODERATE", "CREATE_CONTENT", "MANAGE"],
    },
    {
        "access_token": "EAAGpage2tokenXXXXXXXXXXXXXXXXXXXXXXXX",
        "category": "Restaurant",
        "category_list": [{"id": "273819889375819", "name": "Restaurant"}],
        "name": "Acme Diner",
        "id": "117465829304716",
        "tasks": ["ANALYZE", "MESSAGING", "MODERATE", "CREATE_CONTENT"],
    },
    {
        "access_token": "EAAGpage3tokenXXXXXXXXXXXXXXXXXXXXXXXX",
        "category": "Bakery",
        "category_list": [{"id": "197048876984433", "name": "Bakery"}],
        "name": "Acme Bakery",
        "id": "126374859203746",
        "tasks": ["MESSAGING", "MODERATE"],
    },
]
ACCOUNTS_DEFAULT_LIMIT = 25
# fixtures/graph/ig_refresh_token.json: a refreshed Instagram Login token lives ~60 days.
IG_REFRESH_EXPIRES_IN = 5183944
IG_REFRESH_PERMISSIONS = "instagram_business_basic,instagram_business_manage_messages"

# "500" is an answer with no Graph error body at all, as a failing proxy or edge gives.
PRESET_NAMES = (*PRESETS, "500")

# Graph says 104 for a missing token; the fake answers 190 so every token problem looks alike.
_NO_TOKEN = {
    "message": "An access token is required to request this resource.",
    "type": "OAuthException",
    "code": 190,
    "fbtrace_id": "FakeGraphNoToken000000",
}
_INVALID_TOKEN = {
    "message": "Invalid OAuth access token - Cannot parse access token",
    "type": "OAuthException",
    "code": 190,
    "fbtrace_id": "FakeGraphBadToken00000",
}


def _graph_error(error: dict[str, Any], status: int = 400, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers or None)


@dataclass
class Failure:
    """A rule that makes the next `times` matching requests fail (None: until reset),
    once `after` matching requests have passed."""

    method: str | None = None
    path_contains: str = ""
    status: int = 400
    error: dict[str, Any] | None = None
    preset: str | None = None
    body: Any = None
    times: int | None = 1
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0

    @property
    def answers(self) -> bool:
        """Whether the rule replaces Graph's answer (else it only delays it)."""
        return self.error is not None or self.preset is not None or self.body is not None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.path_contains in path

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path_contains": self.path_contains,
            "status": self.status,
            "error": self.error,
            "preset": self.preset,
            "body": self.body,
            "times": self.times,
            "after": self.after,
            "delay_s": self.delay_s,
        }


class BadFailure(ValueError):
    """A /_fake/fail body that cannot be used."""


def failure_from_json(body: Any) -> Failure:
    """Validates a /_fake/fail body into a Failure."""
    if not isinstance(body, dict):
        raise BadFailure("body must be a JSON object")
    preset = body.get("preset")
    error = body.get("error")
    if preset is not None:
        preset = str(preset)
        if preset not in PRESET_NAMES:
            raise BadFailure(f"unknown preset {preset!r}; one of {', '.join(PRESET_NAMES)}")
    if error is not None and not isinstance(error, dict):
        raise BadFailure("error must be an object (Graph's error fields)")
    answer = body.get("body")
    if sum(item is not None for item in (preset, error, answer)) > 1:
        raise BadFailure("give one of error, preset or body")
    method = body.get("method")
    times = body.get("times", 1)
    if times is not None and (not isinstance(times, int) or times < 1):
        raise BadFailure("times must be a positive integer, or null for until reset")
    after = body.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise BadFailure("after must be a non-negative integer")
    delay_s = body.get("delay_s", 0)
    if not isinstance(delay_s, int | float) or delay_s < 0:
        raise BadFailure("delay_s must be a non-negative number")
    default_status = 500 if preset == "500" else 200 if answer is not None else 400
    status = body.get("status", default_status)
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise BadFailure("status must be an HTTP status code")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadFailure("headers must be an object")
    return Failure(
        method=str(method).upper() if method else None,
        path_contains=str(body.get("path_contains") or ""),
        status=status,
        error=error,
        preset=preset,
        body=answer,
        times=times,
        delay_s=float(delay_s),
        headers={str(k): str(v) for k, v in headers.items()},
        after=after,
    )


@dataclass
class FakeGraphState:
    """What the fake has seen and been told: requests, subscriptions, pending failures."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    # page id → {"subscribed_fields": [...], "token": bearer of the last POST}
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    # user token → the Pages /me/accounts lists; unknown tokens get `default_accounts`.
    accounts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    default_accounts: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(page) for page in DEFAULT_ACCOUNTS]
    )
    # The most Pages one /me/accounts answer holds, whatever `limit` asks (Graph caps it too).
    accounts_page_size: int = 25
    # Instagram tokens handed out by refresh_access_token: (old token, new token).
    refreshed: list[tuple[str, str]] = field(default_factory=list)
    send: SendState = field(default_factory=SendState)
    comments: CommentState = field(default_factory=CommentState)
    history: HistoryState = field(default_factory=HistoryState)
    # user id → the profile answered for it; ids in `no_profile` get error 2018218.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    no_profile: set[str] = field(default_factory=set)
    # Seconds since the epoch for request timestamps; tests share a virtual clock with it.
    clock: Callable[[], float] = time.time
    # Set on stop, so a delayed answer ends at once instead of holding shutdown.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.requests.clear()
        self.pages.clear()
        self.failures.clear()
        self.accounts.clear()
        self.refreshed.clear()
        self.profiles.clear()
        self.send.reset()
        self.comments.reset()
        self.history.reset()
        self.no_profile.clear()
        self.default_accounts = [dict(page) for page in DEFAULT_ACCOUNTS]
        self.accounts_page_size = 25

    def unsubscribe(self, page_id: str, fields: list[str] | None = None) -> None:
        """Meta drops the app from the page (or only `fields`), telling nobody."""
        page = self.pages.get(page_id)
        if page is None:
            return
        if fields is None:
            del self.pages[page_id]
        else:
            page["subscribed_fields"] = [f for f in page["subscribed_fields"] if f not in fields]

    def set_accounts(self, user_token: str, pages: list[dict[str, Any]]) -> None:
        """The Pages `/me/accounts` lists for `user_token`."""
        self.accounts[user_token] = [dict(page) for page in pages]

    def fail(self, **rule: Any) -> Failure:
        """Adds a failure rule (same keys as POST /_fake/fail)."""
        failure = failure_from_json(rule)
        self.failures.append(failure)
        return failure

    def take_failure(self, method: str, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.matches(method, path):
                if failure.after > 0:
                    failure.after -= 1
                    continue
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self.failures.remove(failure)
                return failure
        return None

    def requests_to(self, method: str, path_contains: str = "") -> list[dict[str, Any]]:
        """Recorded requests with this method whose path contains `path_contains`."""
        return [r for r in self.requests if r["method"] == method and path_contains in r["path"]]


def _bearer(request: Request) -> tuple[bool, str | None]:
    header = request.headers.get("authorization")
    if header is None:
        return False, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return True, None
    return True, value.strip()


async def _record(state: FakeGraphState, request: Request) -> dict[str, Any]:
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    form: dict[str, str] | None = None
    body_json: Any = None
    if "application/x-www-form-urlencoded" in content_type:
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    elif "json" in content_type and raw:
        try:
            body_json = json.loads(raw)
        except ValueError:
            body_json = None
    has_auth, bearer = _bearer(request)
    entry = {
        "method": request.method,
        "path": request.url.path,
        "query": dict(request.query_params),
        "raw_query": request.url.query,
        "form": form,
        "json": body_json,
        "has_authorization": has_auth,
        "bearer_token": bearer,
        "host": request.headers.get("host", ""),
        "time_ms": int(state.clock() * 1000),
    }
    state.requests.append(entry)
    return entry


def _object_id(path: str) -> str:
    """The page or account id a Graph path is about (the first numeric segment)."""
    for part in path.split("/"):
        if part.isdigit():
            return part
    return ""


def _preset_headers(preset: str, path: str) -> dict[str, str]:
    headers = dict(PRESET_HEADERS.get(preset, {}))
    usage = headers.get("X-Business-Use-Case-Usage")
    object_id = _object_id(path)
    if usage and object_id:
        # Graph keys business use case usage by the object called about.
        (entries,) = json.loads(usage).values()
        headers["X-Business-Use-Case-Usage"] = json.dumps(
            {object_id: entries}, separators=(",", ":")
        )
    return headers


def _failure_response(failure: Failure, path: str) -> Response:
    if failure.body is not None:
        return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)
    if failure.preset == "500":
        return PlainTextResponse("Internal Server Error", status_code=failure.status)
    error = failure.error if failure.error is not None else PRESETS.get(failure.preset or "", {})
    headers = {**_preset_headers(failure.preset or "", path), **failure.headers}
    return _graph_error(dict(error), failure.status, **headers)


def _fields_of(entry: dict[str, Any]) -> list[str] | None:
    """`subscribed_fields` from form, JSON body or query; Graph accepts all three."""
    for source in (entry["form"], entry["json"], entry["query"]):
        if isinstance(source, dict) and "subscribed_fields" in source:
            value = source["subscribed_fields"]
            if isinstance(value, list):
                return [str(item) for item in value]
            return [part.strip() for part in str(value).split(",") if part.strip()]
    return None


def _token_of(entry: dict[str, Any]) -> str | None:
    # Graph also takes access_token as a parameter; Pagewire must not, and tests check that.
    if entry["bearer_token"]:
        return entry["bearer_token"]
    for source in (entry["form"], entry["json"], entry["query"]):
        if isinstance(source, dict) and source.get("access_token"):
            return str(source["access_token"])
    return None


def create_app(state: FakeGraphState) -> Starlette:
    """The Starlette app: Graph routes, a Graph-shaped 404, and the /_fake/ control API."""

    errors = {**PRESETS, "no_token": _NO_TOKEN, "bad_token": _INVALID_TOKEN}
    comments = CommentApi(
        state.comments, state.send, errors, lambda: state.clock(), lambda: _directory(state)
    )
    history = HistoryApi(
        state.history,
        state.send,
        errors,
        lambda: state.clock(),
        lambda: _directory(state),
        _token_of,
        FAKE_APP_ID,
    )

    async def graph(request: Request) -> Response:
        entry = await _record(state, request)
        failure = state.take_failure(request.method, request.url.path)
        if failure is not None and failure.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), failure.delay_s)
        if failure is not None and failure.answers:
            return _failure_response(failure, request.url.path)
        answered = await comments.answer(request, entry)
        if answered is None:
            answered = history.answer(request, entry)
        if answered is not None:
            return answered
        parts = [p for p in request.url.path.split("/") if p]
        if (
            request.method == "POST"
            and len(parts) == 3
            and parts[2] == "messages"
            and parts[1].isdigit()
            and _token_of(entry) is not None
        ):
            form = entry.get("form") or {}
            answer = await answer_send(state.send, form, parts[1])
            if answer is None:
                return _graph_error(dict(PRESETS["100"]))
            return JSONResponse(answer)
        return _answer(state, request, entry)

    async def requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests})

    async def pages(request: Request) -> Response:
        shown = {
            page_id: {"subscribed_fields": page["subscribed_fields"]}
            for page_id, page in state.pages.items()
        }
        return JSONResponse({"pages": shown})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def fail(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            failure = failure_from_json(body)
        except (ValueError, BadFailure) as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
        state.failures.append(failure)
        return JSONResponse({"ok": True, "failure": failure.describe()})

    async def echo(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            state.send.echo = echo_target_from_json(body, FAKE_APP_ID)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"ok": False, "error": f"bad echo settings: {exc}"}, 400)
        return JSONResponse({"ok": True})

    async def unsubscribe(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        page_id = body.get("page_id") if isinstance(body, dict) else None
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(page_id, str) or not page_id.isdigit():
            return JSONResponse({"ok": False, "error": "page_id (digits) is required"}, 400)
        if fields is not None and not (
            isinstance(fields, list) and all(isinstance(f, str) for f in fields)
        ):
            return JSONResponse({"ok": False, "error": "fields must be a list of names"}, 400)
        if page_id not in state.pages:
            return JSONResponse({"ok": False, "error": f"page {page_id} is not subscribed"}, 404)
        state.unsubscribe(page_id, fields)
        return JSONResponse({"ok": True})

    async def accounts(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        token = body.get("user_token") if isinstance(body, dict) else None
        pages = body.get("pages") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return JSONResponse({"ok": False, "error": "user_token is required"}, 400)
        if not isinstance(pages, list) or not all(
            isinstance(p, dict) and str(p.get("id", "")).isdigit() for p in pages
        ):
            return JSONResponse({"ok": False, "error": "pages must be objects with an id"}, 400)
        state.set_accounts(token, pages)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/_fake/requests", requests, methods=["GET"]),
            Route("/_fake/pages", pages, methods=["GET"]),
            Route("/_fake/reset", reset, methods=["POST"]),
            Route("/_fake/fail", fail, methods=["POST"]),
            Route("/_fake/unsubscribe", unsubscribe, methods=["POST"]),
            Route("/_fake/echo", echo, methods=["POST"]),
            Route("/_fake/accounts", accounts, methods=["POST"]),
            *comments.control_routes(),
            *history.control_routes(),
            Route("/{path:path}", graph, methods=["GET", "POST", "DELETE"]),
        ]
    )


def _directory(state: FakeGraphState) -> list[dict[str, Any]]:
    """Every page the fake knows a token or a name of: subscriptions, then account lists."""
    known = [{"id": page_id, "access_token": p["token"]} for page_id, p in state.pages.items()]
    for pages in (*state.accounts.values(), state.default_accounts):
        known.extend(pages)
    return known


def _unknown_path(parts: list[str]) -> Response:
    return _graph_error(
        {
            "message": f"Unknown path components: /{'/'.join(parts)}",
            "type": "OAuthException",
            "code": 2500,
            "fbtrace_id": "FakeGraphUnknownPath00",
        }
    )


def _answer(state: FakeGraphState, request: Request, entry: dict[str, Any]) -> Response:
    parts = [part for part in request.url.path.split("/") if part]
    # /{version}/..., the version optional as Graph allows.
    if parts and parts[0].startswith("v") and parts[0][1:2].isdigit():
        parts = parts[1:]
    token = _token_of(entry)
    if token is None:
        return _graph_error(_NO_TOKEN if not entry["has_authorization"] else _INVALID_TOKEN)
    if parts == ["me", "accounts"] and request.method == "GET":
        return _accounts(state, request, token)
    if parts == ["refresh_access_token"] and request.method == "GET":
        return _refresh(state, entry, token)
    if parts == ["debug_token"] and request.method == "GET":
        return _debug_token(entry)
    if len(parts) == 1 and parts[0].isdigit() and request.method == "GET":
        return _profile(state, entry, parts[0])
    if len(parts) != 2 or parts[1] != "subscribed_apps" or not parts[0].isdigit():
        return _unknown_path(parts)
    return _subscribed_apps(state, request, entry, parts[0], token)


def _profile(state: FakeGraphState, entry: dict[str, Any], user_id: str) -> Response:
    """User Profile API: `GET /{psid}?fields=…` (Messenger) or `/{igsid}` (Instagram)."""
    if user_id in state.no_profile:
        return _graph_error(dict(PRESETS["100_2018218"]))
    fields = [f for f in str(entry["query"].get("fields", "")).split(",") if f]
    scripted = state.history.person(user_id)
    if scripted is not None and user_id not in state.profiles:
        # A person of a scripted history has the same name in the User Profile API.
        first, _, last = scripted.name.partition(" ")
        return JSONResponse(
            {
                k: v
                for k, v in {
                    "name": scripted.name,
                    "first_name": first,
                    "last_name": last,
                    "username": scripted.username,
                    "id": user_id,
                }.items()
                if not fields or k in fields or k == "id"
            }
        )
    profile = state.profiles.get(user_id) or {
        "name": f"User {user_id[-4:]}",
        "first_name": "User",
        "last_name": user_id[-4:],
        "username": f"user{user_id[-4:]}",
        "profile_pic": f"https://platform-lookaside.fbsbx.com/platform/profilepic/?psid={user_id}",
    }
    body = {k: v for k, v in profile.items() if not fields or k in fields}
    body["id"] = user_id
    return JSONResponse(body)


def _accounts(state: FakeGraphState, request: Request, token: str) -> Response:
    """`/me/accounts` with cursor paging: `limit`, `after`, and `paging.next` while more."""
    pages = state.accounts.get(token, state.default_accounts)
    try:
        asked = int(request.query_params.get("limit", ACCOUNTS_DEFAULT_LIMIT))
        limit = max(1, min(state.accounts_page_size, asked))
        after = request.query_params.get("after", "")
        start = int(base64.urlsafe_b64decode(after.encode()).decode()) if after else 0
    except ValueError:
        return _graph_error(dict(PRESETS["100"]))
    chunk = pages[start : start + limit]
    body: dict[str, Any] = {"data": chunk}
    cursor = base64.urlsafe_b64encode(str(start + len(chunk)).encode()).decode()
    before = base64.urlsafe_b64encode(str(start).encode()).decode()
    body["paging"] = {"cursors": {"before": before, "after": cursor}}
    if start + limit < len(pages):
        query = urlencode({"access_token": "REDACTED", "limit": limit, "after": cursor})
        body["paging"]["next"] = f"{request.base_url}v25.0/me/accounts?{query}"
    return JSONResponse(body)


def _refresh(state: FakeGraphState, entry: dict[str, Any], token: str) -> Response:
    """graph.instagram.com/refresh_access_token: a new long-lived token for the old one."""
    if entry["query"].get("grant_type") != "ig_refresh_token":
        return _graph_error(
            {
                "message": "Invalid grant_type; expected ig_refresh_token",
                "type": "OAuthException",
                "code": 100,
                "fbtrace_id": "FakeGraphGrantType0000",
            }
        )
    new = "IGAArefreshed" + secrets.token_hex(16)
    state.refreshed.append((token, new))
    return JSONResponse(
        {
            "access_token": new,
            "token_type": "bearer",
            "expires_in": IG_REFRESH_EXPIRES_IN,
            "permissions": IG_REFRESH_PERMISSIONS,
        }
    )


def _debug_token(entry: dict[str, Any]) -> Response:
    """`/debug_token?input_token=…` in the shape of fixtures/graph/debug_token.json."""
    if not entry["query"].get("input_token"):
        return _graph_error(dict(PRESETS["100"]))
    now = int(time.time())
    return JSONResponse(
        {
            "data": {
                "app_id": FAKE_APP_ID,
                "type": "PAGE",
                "application": _APP["name"],
                "data_access_expires_at": now + 90 * 86400,
                "expires_at": 0,
                "is_valid": True,
                "issued_at": now,
                "scopes": [
                    "pages_messaging",
                    "pages_manage_metadata",
                    "pages_show_list",
                    "pages_read_engagement",
                ],
                "user_id": "1029384756",
            }
        }
    )


def _subscribed_apps(
    state: FakeGraphState, request: Request, entry: dict[str, Any], page_id: str, token: str
) -> Response:
    if request.method == "POST":
        fields = _fields_of(entry)
        if not fields:
            return _graph_error(
                {
                    "message": "(#100) The parameter subscribed_fields is required",
                    "type": "OAuthException",
                    "code": 100,
                    "fbtrace_id": "FakeGraphNoFields00000",
                }
            )
        state.pages[page_id] = {"subscribed_fields": fields, "token": token}
        # Messenger answers a string here; Instagram Login a boolean (fixtures/graph/README).
        return JSONResponse({"success": "true"})
    if request.method == "DELETE":
        state.pages.pop(page_id, None)
        return JSONResponse({"success": True})
    page = state.pages.get(page_id)
    if page is None:
        return JSONResponse({"data": []})
    return JSONResponse(
        {"data": [{**_APP, "id": FAKE_APP_ID, "subscribed_fields": page["subscribed_fields"]}]}
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host process (tests, services) owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(state: FakeGraphState) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(state),
        lifespan="off",
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
    )


@dataclass
class FakeGraph:
    """A running fake: its base URL, its state, and how to stop it."""

    url: str
    state: FakeGraphState
    _server: uvicorn.Server
    _task: asyncio.Task[None]
    _socket: socket.socket

    async def stop(self) -> None:
        self.state.stopping.set()
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._socket.close()
            # Webhooks still being retried end with the fake, as they would with its process.
            deliveries = list(self.state.send.tasks)
            for task in deliveries:
                task.cancel()
            await asyncio.gather(*deliveries, return_exceptions=True)


async def start(host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 10.0) -> FakeGraph:
    """Runs the fake in the current event loop; port 0 picks a free port."""
    state = FakeGraphState()
    sock = _bind(host, port)
    server = _EmbeddedServer(_config(state))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="fake-graph")
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise RuntimeError("fake Graph API exited during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise TimeoutError(f"fake Graph API did not start within {timeout_s}s")
        await asyncio.sleep(0.01)  # polling `started`; uvicorn offers no event for it
    return FakeGraph(_url(host, sock.getsockname()[1]), state, server, task, sock)


def serve(host: str, port: int) -> None:
    """Runs the fake until Ctrl-C or SIGTERM (`pagewire fake-graph`); prints its URL once."""

    async def main() -> None:
        state = FakeGraphState()
        sock = _bind(host, port)
        server = _EmbeddedServer(_config(state))
        loop = asyncio.get_running_loop()

        def stop() -> None:
            state.stopping.set()
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        url = _url(host, sock.getsockname()[1])
        print(f"fake Graph API listening on {url} (control API under {url}/_fake/)", flush=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    asyncio.run(main())
