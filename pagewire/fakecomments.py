"""The fake Graph API's comments: replies, private replies, moderation, lists, their webhooks.

Graph routes (`/{version}` optional; Facebook ids `<post>_<n>`, Instagram ids digits). The
token is taken from the `Authorization: Bearer` header only: none there is error 190, and
an `access_token` in the URL or the body is refused with 190 too, so a leak fails loudly.

    POST   /{comment-id}/comments      message=<text> → {"id": "<post>_<n>"}  (Facebook reply)
    POST   /{ig-comment-id}/replies    message=<text> → {"id": "<digits>"}    (Instagram reply)
    POST   /{page-id}/messages         recipient={"comment_id": …}, message={…} (private reply)
                                       → {"recipient_id": <commenter>, "message_id": "m_…"}
    POST   /{comment-id}               is_hidden=true|false (Facebook) → {"success": true}
    POST   /{ig-comment-id}            hide=true|false (Instagram)     → {"success": true}
    DELETE /{comment-id}                → {"success": true}
    GET    /{post-id | media-id | comment-id}/comments, /{ig-comment-id}/replies
                                       → {"data": [...], "paging": {"cursors": {"before",
                                          "after"}, "next"?}}; `limit` (≤100), `after`,
                                          `fields` (Facebook default id,message,created_time,
                                          from; Instagram id,text,timestamp)
    GET    /{comment-id}                the comment itself (only for one the fake knows)

Errors, in Graph's shape: a second private reply to a comment is 10900 "Activity already
replied to"; one more than 7 days after the comment was made is 10/2018278 (outside the
allowed window); a private reply to a deleted comment, or a Facebook comment of another
page, is 100/2018292 "Invalid comment_id parameter"; anything done to a deleted comment
(deleting it again too) is 100/33 GraphMethodException "Object … does not exist"; a bad or
missing parameter, or the other platform's parameter or edge, is 100. `/_fake/fail` rules
apply to these paths as to any other, before any of this.

A comment id the fake has not seen is taken as an existing comment made just now (its page
from the token, its post from the id's prefix, its author made up but stable), unless
`strict` is set, when it does not exist (100/33). Every call is recorded like any other.

Webhooks: with `/_fake/echo` set (and its `"comments"` not false), the fake posts, signed
with the app secret like echoes and early or late like them, the `changes[]` webhook a
real Page sends: a Facebook reply → `feed` `{"item": "comment", "verb": "add", "comment_id",
"post_id", "parent_id", "from": {"id": <page>, "name"}, "message", "created_time"}`;
is_hidden → verb `hide` / `unhide` (on a change only); delete → `remove`; an Instagram reply
→ `comments` `{"id", "text", "from": {"id", "username"}, "media": {"id",
"media_product_type"}, "parent_id"}` (Instagram sends nothing for hide or delete); a private
reply → the Messenger or Instagram echo, its recipient the commenter.

Control API:

    POST /_fake/comment   a customer comments: {"page_id", "text", "platform"?: "facebook" |
                          "instagram", "post_id"?, "comment_id"?, "parent_id"?, "author"?:
                          {"id", "name" | "username"}, "psid"?, "created_time"? (epoch s),
                          "media_product_type"?, "webhook"?: true} — stored, and its `feed`
                          (parent_id = the post for a top-level comment) or `comments`
                          webhook posted at once when /_fake/echo is set
                          → {"ok", "comment", "webhook"}
    POST /_fake/comments  {"comments": [same objects], "strict"?} — seeded silently → {"ok", "ids"}
    GET  /_fake/comments  every comment with its state (hidden, deleted, private_reply_mid)
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pagewire.fakesend import (
    INSTAGRAM_PATH,
    SendState,
    accept_message,
    deliver_soon,
    json_param,
    post_back,
)

FACEBOOK = "facebook"
INSTAGRAM = "instagram"
PRIVATE_REPLY_WINDOW_S = 7 * 86400
LIST_DEFAULT_LIMIT = 25
LIST_MAX_LIMIT = 100
# What a customer comment gets when the control call names no post or author.
DEFAULT_POST_N = "122100000000000001"
DEFAULT_MEDIA_ID = "17900000000000001"
DEFAULT_AUTHORS = {
    FACEBOOK: ("7294015836620194", "Ana Customer"),
    INSTAGRAM: ("6742019384756123", "ana.customer"),
}
_SERIAL_BASE = 1_000_000_000_000_000

ALREADY_REPLIED = {
    "message": "(#10900) Activity already replied to",
    "type": "OAuthException",
    "code": 10900,
    "fbtrace_id": "FakeGraphReplied000000",
}
INVALID_COMMENT_ID = {
    "message": "(#100) Invalid comment_id parameter",
    "type": "OAuthException",
    "code": 100,
    "error_subcode": 2018292,
    "fbtrace_id": "FakeGraphCommentId0000",
}
TOKEN_NOT_IN_HEADER = {
    "message": "The fake Graph API takes the access token from the Authorization: Bearer"
    " header only, never from the URL or the body",
    "type": "OAuthException",
    "code": 190,
    "fbtrace_id": "FakeGraphTokenInUrl000",
}

_FB_FIELDS = ("id", "message", "created_time", "from")
_IG_FIELDS = ("id", "text", "timestamp")


def missing(method: str, object_id: str) -> dict[str, Any]:
    """Graph's error for an object that does not exist (or was deleted): 100/33."""
    return {
        "message": f"Unsupported {method.lower()} request. Object with ID '{object_id}' does"
        " not exist, cannot be loaded due to missing permissions, or does not support this"
        " operation. Please read the Graph API documentation at"
        " https://developers.facebook.com/docs/graph-api",
        "type": "GraphMethodException",
        "code": 100,
        "error_subcode": 33,
        "fbtrace_id": "FakeGraphNoObject00000",
    }


def _no_field(edge: str, node: str) -> dict[str, Any]:
    return {
        "message": f"(#100) Tried accessing nonexisting field ({edge}) on node type ({node})",
        "type": "OAuthException",
        "code": 100,
        "fbtrace_id": "FakeGraphNoField000000",
    }


def _error(error: Mapping[str, Any], status: int = 400) -> JSONResponse:
    return JSONResponse({"error": dict(error)}, status_code=status)


def _digits(seed: str, length: int = 16) -> str:
    """A stable made-up id for something the fake was never told about."""
    number = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    return str(10 ** (length - 1) + number % (9 * 10 ** (length - 1)))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(seconds))


@dataclass
class FakeComment:
    """One comment as the fake knows it: Graph's fields and what has been done to it."""

    id: str
    platform: str
    page_id: str  # the Page, or the Instagram account
    post_id: str  # the Facebook post (`<page>_<n>`), or the Instagram media
    text: str
    author_id: str
    author_name: str  # Facebook name, Instagram username
    created_time: float  # epoch seconds
    parent_id: str = ""  # the comment replied to; empty for a comment on the post
    psid: str = ""  # whom a private reply reaches; empty: the author
    media_product_type: str = "FEED"
    hidden: bool = False
    deleted: bool = False
    private_reply_mid: str = ""
    private_replied: bool = False


@dataclass
class CommentState:
    """The comments the fake knows, and the statuses of the comment webhooks it posted."""

    comments: dict[str, FakeComment] = field(default_factory=dict)
    # Unknown comment ids do not exist (100/33) instead of being taken as just made.
    strict: bool = False
    webhook_statuses: list[int] = field(default_factory=list)
    serial: int = 0

    def reset(self) -> None:
        self.comments.clear()
        self.strict = False
        self.webhook_statuses.clear()
        self.serial = 0

    def new_id(self, platform: str, post_id: str) -> str:
        self.serial += 1
        if platform == INSTAGRAM:
            return str(17 * _SERIAL_BASE + self.serial)
        return f"{post_id.rsplit('_', 1)[-1]}_{_SERIAL_BASE + self.serial}"

    def children(self, object_id: str) -> list[FakeComment]:
        """The live replies to a comment, or the live top-level comments of a post or media."""
        found = [
            c
            for c in self.comments.values()
            if not c.deleted
            and (c.parent_id == object_id or (not c.parent_id and c.post_id == object_id))
        ]
        return sorted(found, key=lambda c: c.created_time)


def post_of(comment_id: str, page_id: str) -> str:
    """A Facebook comment's post from its id: `<post>_<n>` → `<page>_<post>`."""
    prefix = comment_id.rsplit("_", 1)[0]
    if "_" in prefix or not page_id:
        return prefix
    return f"{page_id}_{prefix}"


def comment_from_json(body: Any, now: float, state: CommentState) -> FakeComment:
    """A /_fake/comment(s) object as a FakeComment; raises ValueError when unusable."""
    if not isinstance(body, dict):
        raise ValueError("a comment must be a JSON object")
    platform = str(body.get("platform", FACEBOOK)).lower()
    if platform not in (FACEBOOK, INSTAGRAM):
        raise ValueError("platform must be facebook or instagram")
    page_id = body.get("page_id")
    if not isinstance(page_id, str) or not page_id.isdigit():
        raise ValueError("page_id (digits) is required")
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise ValueError("text is required")
    default_post = DEFAULT_MEDIA_ID if platform == INSTAGRAM else f"{page_id}_{DEFAULT_POST_N}"
    strings = {}
    for key in ("post_id", "comment_id", "parent_id", "psid", "media_product_type"):
        value = body.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        strings[key] = value
    parent = state.comments.get(strings["parent_id"])
    post_id = strings["post_id"] or (parent.post_id if parent else default_post)
    author = body.get("author") or {}
    if not isinstance(author, dict):
        raise ValueError("author must be an object")
    default_id, default_name = DEFAULT_AUTHORS[platform]
    name = author.get("username" if platform == INSTAGRAM else "name") or author.get("name")
    created = body.get("created_time", now)
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise ValueError("created_time must be epoch seconds")
    return FakeComment(
        id=strings["comment_id"] or state.new_id(platform, post_id),
        platform=platform,
        page_id=page_id,
        post_id=post_id,
        text=text,
        author_id=str(author.get("id") or default_id),
        author_name=str(name or default_name),
        created_time=float(created),
        parent_id=strings["parent_id"],
        psid=strings["psid"],
        media_product_type=strings["media_product_type"] or "FEED",
    )


def graph_view(comment: FakeComment, fields: Iterable[str], now: float) -> dict[str, Any]:
    """The comment as Graph answers it, with the asked `fields` (else Graph's defaults)."""
    if comment.platform == INSTAGRAM:
        full: dict[str, Any] = {
            "id": comment.id,
            "text": comment.text,
            "timestamp": _iso(comment.created_time),
            "username": comment.author_name,
            "from": {"id": comment.author_id, "username": comment.author_name},
            "hidden": comment.hidden,
            "media": {"id": comment.post_id, "media_product_type": comment.media_product_type},
        }
        if comment.parent_id:
            full["parent_id"] = comment.parent_id
        default = _IG_FIELDS
    else:
        full = {
            "id": comment.id,
            "message": comment.text,
            "created_time": _iso(comment.created_time),
            "from": {"id": comment.author_id, "name": comment.author_name},
            "is_hidden": comment.hidden,
            "can_reply_privately": not comment.private_replied
            and not comment.deleted
            and now - comment.created_time <= PRIVATE_REPLY_WINDOW_S,
        }
        if comment.parent_id:
            full["parent"] = {"id": comment.parent_id}
        default = _FB_FIELDS
    wanted = [f for f in fields if f] or list(default)
    return {key: full[key] for key in ("id", *wanted) if key in full}


def webhook_body(comment: FakeComment, verb: str, now: float) -> tuple[str, bytes]:
    """The webhook path and body a real Page sends for `verb` done to `comment`."""
    if comment.platform == INSTAGRAM:
        value: dict[str, Any] = {
            "from": {"id": comment.author_id, "username": comment.author_name},
            "media": {"id": comment.post_id, "media_product_type": comment.media_product_type},
            "id": comment.id,
            "text": comment.text,
        }
        if comment.parent_id:
            value["parent_id"] = comment.parent_id
        obj, change_field, path = "instagram", "comments", INSTAGRAM_PATH
    else:
        value = {
            "from": {"id": comment.author_id, "name": comment.author_name},
            "post_id": comment.post_id,
            "comment_id": comment.id,
            # Graph names the post as the parent of a top-level comment.
            "parent_id": comment.parent_id or comment.post_id,
            "created_time": int(comment.created_time),
            "item": "comment",
            "verb": verb,
        }
        if verb != "remove":
            value["message"] = comment.text
        obj, change_field, path = "page", "feed", "/webhooks/facebook"
    envelope = {
        "object": obj,
        "entry": [
            {
                "id": comment.page_id,
                "time": int(now),
                "changes": [{"field": change_field, "value": value}],
            }
        ],
    }
    return path, json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _version_and_parts(path: str) -> tuple[str, list[str]]:
    parts = [part for part in path.split("/") if part]
    if parts and parts[0].startswith("v") and parts[0][1:2].isdigit():
        return parts[0], parts[1:]
    return "", parts


@dataclass
class CommentApi:
    """The comment routes of the fake Graph API, over its comment and send state.

    `errors` holds Graph's error bodies by name (fakegraph.PRESETS plus "no_token" and
    "bad_token"); `directory` lists the pages the fake knows (`id`, and `access_token` or
    `name`); `clock` is the fake's clock, in epoch seconds.
    """

    state: CommentState
    send: SendState
    errors: Mapping[str, Mapping[str, Any]]
    clock: Callable[[], float]
    directory: Callable[[], Iterable[Mapping[str, Any]]]

    def _page_of_token(self, token: str) -> str:
        for page in self.directory():
            if page.get("access_token") == token and page.get("id"):
                return str(page["id"])
        return ""

    def _page_name(self, page_id: str) -> str:
        for page in self.directory():
            if str(page.get("id")) == page_id and page.get("name"):
                return str(page["name"])
        return ""

    async def answer(self, request: Request, entry: dict[str, Any]) -> Response | None:
        """The answer to a comment call, or None when the request is not one."""
        version, parts = _version_and_parts(request.url.path)
        params = {**entry["query"], **_body_params(entry)}
        route = self._route(request.method, parts, params)
        if route is None:
            return None
        refused = _token_problem(entry, self.errors)
        if refused is not None:
            return _error(refused)
        token = str(entry["bearer_token"])
        object_id = parts[0]
        if route == "private_reply":
            return await self._private_reply(token, object_id, params)
        if route == "reply":
            return await self._reply(token, object_id, parts[1], params)
        if route == "list":
            return self._list(request, version, object_id, parts[1], params)
        if route == "hide":
            return await self._hide(token, object_id, params)
        if route == "delete":
            return await self._delete(token, object_id)
        return self._get(object_id, params)

    def _route(self, method: str, parts: list[str], params: dict[str, Any]) -> str | None:
        if method == "POST" and len(parts) == 2 and parts[1] == "messages":
            recipient = json_param(params.get("recipient"))
            if isinstance(recipient, dict) and "comment_id" in recipient:
                return "private_reply"
            return None  # an ordinary send
        if len(parts) == 2 and parts[1] in ("comments", "replies"):
            return {"POST": "reply", "GET": "list"}.get(method)
        if len(parts) != 1:
            return None
        if method == "DELETE":
            return "delete"
        known = parts[0] in self.state.comments
        if method == "POST" and ("is_hidden" in params or "hide" in params or known):
            return "hide"
        if method == "GET" and known:
            return "get"
        return None

    def _lookup(
        self, comment_id: str, platform: str, token: str, page_id: str = ""
    ) -> FakeComment | None:
        """The comment; one never seen is taken as just made (None when `strict`).

        The made-up comment's page is `page_id` (a private reply names it), else the page
        whose token this is; its post comes from its id, its author is stable per id.
        """
        known = self.state.comments.get(comment_id)
        if known is not None or self.state.strict:
            return known
        page_id = page_id or self._page_of_token(token)
        author_id = _digits("author" + comment_id)
        if platform == INSTAGRAM:
            post_id, name = _digits("media" + comment_id, 17), f"user{author_id[-4:]}"
        else:
            post_id, name = post_of(comment_id, page_id), f"User {author_id[-4:]}"
        comment = FakeComment(
            id=comment_id,
            platform=platform,
            page_id=page_id,
            post_id=post_id,
            text="",
            author_id=author_id,
            author_name=name,
            created_time=self.clock(),
        )
        self.state.comments[comment_id] = comment
        return comment

    async def _emit(self, comment: FakeComment, verb: str) -> None:
        target = self.send.echo
        if target is None or not target.comments:
            return
        if comment.platform == INSTAGRAM and verb != "add":
            return  # Instagram's comments field tells only of new comments
        path, body = webhook_body(comment, verb, self.clock())
        await post_back(self.send, target, path, body, self.state.webhook_statuses)

    async def _reply(
        self, token: str, parent_id: str, edge: str, params: dict[str, Any]
    ) -> Response:
        platform = INSTAGRAM if edge == "replies" else FACEBOOK
        text = params.get("message")
        if not isinstance(text, str) or not text.strip():
            return _error(self.errors["100"])
        parent = self._lookup(parent_id, platform, token)
        if parent is None or parent.deleted:
            return _error(missing("post", parent_id))
        if parent.platform != platform:
            return _error(_no_field(edge, _node(parent)))
        name = self._page_name(parent.page_id)
        if platform == INSTAGRAM:
            name = name.lower().replace(" ", ".") or f"account{parent.page_id[-4:]}"
        reply = FakeComment(
            id=self.state.new_id(platform, parent.post_id),
            platform=platform,
            page_id=parent.page_id,
            post_id=parent.post_id,
            text=text,
            author_id=parent.page_id,
            author_name=name or f"Page {parent.page_id}",
            created_time=self.clock(),
            parent_id=parent.id,
            media_product_type=parent.media_product_type,
        )
        self.state.comments[reply.id] = reply
        await self._emit(reply, "add")
        return JSONResponse({"id": reply.id})

    async def _private_reply(self, token: str, page_id: str, params: dict[str, Any]) -> Response:
        recipient = json_param(params.get("recipient"))
        comment_id = recipient.get("comment_id") if isinstance(recipient, dict) else None
        message = json_param(params.get("message"))
        if not isinstance(comment_id, str) or not comment_id or not isinstance(message, dict):
            return _error(self.errors["100"])
        platform = FACEBOOK if "_" in comment_id else INSTAGRAM
        comment = self._lookup(comment_id, platform, token, page_id)
        if comment is not None and not comment.page_id:
            # Made up earlier under a token of no known page: this call names the page.
            comment.page_id = page_id
            if platform == FACEBOOK:
                comment.post_id = post_of(comment_id, page_id)
        if (
            comment is None
            or comment.deleted
            # Instagram comments are answered through the linked Page or the account itself.
            or (comment.platform == FACEBOOK and comment.page_id != page_id)
        ):
            return _error(INVALID_COMMENT_ID)
        if comment.private_replied:
            return _error(ALREADY_REPLIED)
        if self.clock() - comment.created_time > PRIVATE_REPLY_WINDOW_S:
            return _error(self.errors["10_2018278"])
        comment.private_replied = True  # before the echo is awaited: a racing second one fails
        answer = await accept_message(
            self.send,
            params,
            page_id,
            comment.psid or comment.author_id,
            message,
            instagram=comment.platform == INSTAGRAM,
            echo_page_id=comment.page_id,
            comment_id=comment.id,
        )
        comment.private_reply_mid = answer["message_id"]
        return JSONResponse(answer)

    async def _hide(self, token: str, comment_id: str, params: dict[str, Any]) -> Response:
        facebook, instagram = "is_hidden" in params, "hide" in params
        value = _flag(params.get("is_hidden" if facebook else "hide"))
        if facebook == instagram or value is None:
            return _error(self.errors["100"])
        comment = self._lookup(comment_id, FACEBOOK if facebook else INSTAGRAM, token)
        if comment is None or comment.deleted:
            return _error(missing("post", comment_id))
        if (comment.platform == FACEBOOK) != facebook:
            return _error(self.errors["100"])
        changed = comment.hidden != value
        comment.hidden = value
        if changed:
            await self._emit(comment, "hide" if value else "unhide")
        return JSONResponse({"success": True})

    async def _delete(self, token: str, comment_id: str) -> Response:
        platform = FACEBOOK if "_" in comment_id else INSTAGRAM
        comment = self._lookup(comment_id, platform, token)
        if comment is None or comment.deleted:
            return _error(missing("delete", comment_id))
        comment.deleted = True
        await self._emit(comment, "remove")
        return JSONResponse({"success": True})

    def _get(self, comment_id: str, params: dict[str, Any]) -> Response:
        comment = self.state.comments[comment_id]
        if comment.deleted:
            return _error(missing("get", comment_id))
        fields = str(params.get("fields", "")).split(",")
        return JSONResponse(graph_view(comment, fields, self.clock()))

    def _list(
        self, request: Request, version: str, object_id: str, edge: str, params: dict[str, Any]
    ) -> Response:
        """A post's, media's or comment's comments in Graph's cursor-paged shape."""
        known = self.state.comments.get(object_id)
        if known is not None and known.deleted:
            return _error(missing("get", object_id))
        if known is not None and (known.platform == INSTAGRAM) != (edge == "replies"):
            return _error(_no_field(edge, _node(known)))
        children = self.state.children(object_id)
        if known is None and not children and self.state.strict:
            return _error(missing("get", object_id))
        try:
            limit = max(1, min(LIST_MAX_LIMIT, int(params.get("limit", LIST_DEFAULT_LIMIT))))
            after = str(params.get("after", ""))
            start = int(base64.urlsafe_b64decode(after.encode()).decode()) if after else 0
        except ValueError:
            return _error(self.errors["100"])
        fields, now = str(params.get("fields", "")).split(","), self.clock()
        chunk = children[start : start + limit]
        body: dict[str, Any] = {"data": [graph_view(c, fields, now) for c in chunk]}
        if not chunk:
            return JSONResponse(body)
        before = base64.urlsafe_b64encode(str(start).encode()).decode()
        cursor = base64.urlsafe_b64encode(str(start + len(chunk)).encode()).decode()
        body["paging"] = {"cursors": {"before": before, "after": cursor}}
        if start + limit < len(children):
            query = {"limit": limit, "after": cursor}
            if params.get("fields"):
                query["fields"] = params["fields"]
            prefix = f"{version}/" if version else ""
            body["paging"]["next"] = (
                f"{request.base_url}{prefix}{object_id}/{edge}?{urlencode(query)}"
            )
        return JSONResponse(body)

    # --- the control API -------------------------------------------------------------------

    def control_routes(self) -> list[Route]:
        return [
            Route("/_fake/comment", self._customer_comment, methods=["POST"]),
            Route("/_fake/comments", self._seed, methods=["POST"]),
            Route("/_fake/comments", self._show, methods=["GET"]),
        ]

    async def _customer_comment(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            comment = comment_from_json(body, self.clock(), self.state)
        except ValueError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
        self.state.comments[comment.id] = comment
        target = self.send.echo
        sent = bool(body.get("webhook", True)) and target is not None and target.comments
        if target is not None and sent:
            path, raw = webhook_body(comment, "add", self.clock())
            deliver_soon(self.send, target, path, raw, self.state.webhook_statuses)
        return JSONResponse({"ok": True, "comment": asdict(comment), "webhook": sent})

    async def _seed(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("comments", []), list):
                raise ValueError('body must be {"comments": [...], "strict"?: bool}')
            now = self.clock()
            comments = [comment_from_json(c, now, self.state) for c in body.get("comments", [])]
        except ValueError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
        for comment in comments:
            self.state.comments[comment.id] = comment
        if "strict" in body:
            self.state.strict = bool(body["strict"])
        return JSONResponse({"ok": True, "ids": [c.id for c in comments]})

    async def _show(self, request: Request) -> Response:
        return JSONResponse({"comments": [asdict(c) for c in self.state.comments.values()]})


def _node(comment: FakeComment) -> str:
    return "IGComment" if comment.platform == INSTAGRAM else "Comment"


def _token_problem(
    entry: dict[str, Any], errors: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """Why the call's token is refused: only the Authorization header may carry it."""
    if "access_token" in entry["query"] or "access_token" in _body_params(entry):
        return TOKEN_NOT_IN_HEADER
    if not entry["has_authorization"]:
        return errors["no_token"]
    if not entry["bearer_token"]:
        return errors["bad_token"]
    return None


def _body_params(entry: dict[str, Any]) -> dict[str, Any]:
    body = entry.get("form") if entry.get("form") is not None else entry.get("json")
    return body if isinstance(body, dict) else {}
