"""The fake Graph API's Conversations API: a scripted message history, paged as Graph pages it.

Graph routes (`/{version}` optional; a bearer token is required as on `subscribed_apps`,
any token, never matched against the page's):

    GET /{page-id}/conversations   platform=messenger|instagram (else error 100), fields,
                                   limit (25, at most 100), after, user_id (that person's
                                   conversation only) → {"data": [...], "paging": {"cursors":
                                   {"before", "after"?}, "next"?}}, newest `updated_time`
                                   first; `id` always, `updated_time`, `participants`,
                                   `message_count`, `snippet` when asked; an unknown page
                                   (or the other platform) → {"data": []}
    GET /{conversation-id}/messages fields (absent: id and created_time), limit, after
                                   → the same paging, newest first; `from`, `to`, `message`
                                   ("" for an unsent message), `attachments` (any field
                                   starting with it; never on an unsent message); an
                                   unknown conversation → 100/33 "Object … does not exist"

The last page has neither `next` nor `cursors.after`. A cursor is the position of an item
in time, so a message that arrives while a client is paging moves nothing under it: no item
is answered twice, and a conversation that moves to the top meanwhile is not met again
further down.
Successful answers carry the headers set by `/_fake/history/usage`. `/_fake/fail` rules
apply before any of this, as on every Graph path.

Control API (JSON; a body that cannot be used is 400 {"ok": false, "error"}):

    POST /_fake/history            {"page_id", "platform"?: "facebook" | "instagram",
                                   "page_name"?, "conversations": [{"id"?, "user": {"id",
                                   "name"?, "username"?}, "messages": [{"id"?, "from"?:
                                   "user" | "page", "text"?, "created_time_ms",
                                   "attachments"?: [{"type": "image" | "video" | "audio" |
                                   "file", "url", "id"?, "name"?, "mime_type"?, "size"?,
                                   "preview_url"?}], "deleted"?}]}]} — replaces the page's
                                   history → the script (below)
    POST /_fake/history/generate   {"page_id", "platform"?, "page_name"?, "conversations"?: 3,
                                   "messages"?: 150 (each), "seed"?: 1, "newest_ms"?: now,
                                   "step_ms"?: 60000, "attachments_every"?: 10, "deleted"?: 1
                                   (each), "page_every"?: 3} — a seeded history → the script
    GET  /_fake/history            ?page_id= → the script; without it {"ok", "pages": [...]}
    POST /_fake/history/message    {"page_id", "user_id", "from"?, "text"?, "attachments"?,
                                   "created_time_ms"?: now, "id"?, "deliver"?: true} — a new
                                   message in that person's conversation (made if needed),
                                   posted as a webhook when a target is known → {"ok",
                                   "conversation_id", "message", "delivered", "status"}
    POST /_fake/history/deliver    {"page_id", "gateway_url", "app_secret", "app_id"?,
                                   "instagram_app_secret"?, "mids"?, "skip"?, "skip_every"?,
                                   "per_post"?: 1..20} — posts the signed webhooks of those
                                   messages (all, oldest first, by default), remembering the
                                   target → {"ok", "posted", "mids", "statuses", "skipped",
                                   "deleted"}
    POST /_fake/history/usage      {"headers": {"X-App-Usage": str | object, ...}} — headers
                                   on every successful history answer ({} clears them)

The script: {"ok", "page_id", "platform", "page_name", "conversations": [{"id", "user":
{"id", "name", "username"}, "updated_time_ms", "messages": [{"id", "from", "text",
"created_time_ms", "attachments", "deleted"}]}]}, messages oldest first; it can be posted
back to `/_fake/history` as it is. A webhook carries exactly the mids the API answers; an
unsent message is never delivered (Meta sends nothing for it).
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pagewire.fakecomments import missing
from pagewire.fakehistoryscript import (
    DEFAULT_LIMIT,
    FIELD_NAME,
    GRAPH_PLATFORMS,
    INSTAGRAM,
    MAX_GENERATED,
    MAX_LIMIT,
    MAX_PER_POST,
    Attachment,
    BadHistory,
    Conversation,
    HistoryState,
    Ids,
    Message,
    PageHistory,
    check_unique,
    conversation_from_json,
    digit_id,
    generated,
    int_field,
    iso,
    message_from_json,
    platform_of,
    script,
    script_message,
    string_field,
)
from pagewire.fakesend import INSTAGRAM_PATH, EchoTarget, SendState, deliver_soon


def _field_names(raw: str) -> set[str]:
    """The top-level names of a Graph `fields` value: `a,b{c,d},e.limit(2)` → a, b, e."""
    names, depth, start = set(), 0, 0
    for i, char in enumerate(raw + ","):
        depth += {"{": 1, "(": 1, "}": -1, ")": -1}.get(char, 0)
        if char == "," and depth <= 0:
            found = FIELD_NAME.match(raw[start:i])
            if found:
                names.add(found.group(1))
            start = i + 1
    return names


def _cursor(key: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}:{key[1]}".encode()).decode().rstrip("=")


def _uncursor(cursor: str) -> tuple[int, int]:
    """A cursor back into its key; ValueError when it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    when, _, seq = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
    return int(when), int(seq)


def _error(error: Mapping[str, Any], status: int = 400) -> JSONResponse:
    return JSONResponse({"error": dict(error)}, status_code=status)


def _version_and_parts(path: str) -> tuple[str, list[str]]:
    parts = [part for part in path.split("/") if part]
    if parts and parts[0].startswith("v") and parts[0][1:2].isdigit():
        return parts[0], parts[1:]
    return "", parts


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise BadHistory("the body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadHistory("the body must be a JSON object")
    return body


def _bad(exc: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"ok": False, "error": str(exc)}, status_code=status)


@dataclass
class HistoryApi:
    """The Conversations API routes of the fake Graph API and their control routes.

    `errors` holds Graph's error bodies by name (fakegraph.PRESETS plus "no_token" and
    "bad_token"); `token_of` is how the fake reads a request's token (None: none given);
    `directory` lists the pages the fake knows (`id`, `name`); `clock` is epoch seconds.
    """

    state: HistoryState
    send: SendState
    errors: Mapping[str, Mapping[str, Any]]
    clock: Callable[[], float]
    directory: Callable[[], Iterable[Mapping[str, Any]]]
    token_of: Callable[[dict[str, Any]], str | None]
    app_id: str

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _page_name(self, page: PageHistory) -> str:
        if page.page_name:
            return page.page_name
        for known in self.directory():
            if str(known.get("id")) == page.page_id and known.get("name"):
                return str(known["name"])
        return f"Page {page.page_id}"

    def _party(
        self, page: PageHistory, conversation: Conversation, of_page: bool
    ) -> dict[str, str]:
        if page.platform == INSTAGRAM:
            if of_page:
                name = self._page_name(page).lower().replace(" ", ".")
                return {"username": name, "id": page.page_id}
            return {"username": conversation.username, "id": conversation.user_id}
        if of_page:
            person_id, name = page.page_id, self._page_name(page)
        else:
            person_id, name = conversation.user_id, conversation.name
        return {"name": name, "email": f"{person_id}@facebook.com", "id": person_id}

    # --- the Graph routes ------------------------------------------------------------------

    def answer(self, request: Request, entry: dict[str, Any]) -> Response | None:
        """The answer to a Conversations API call, or None when the request is not one."""
        version, parts = _version_and_parts(request.url.path)
        if request.method != "GET" or len(parts) != 2:
            return None
        object_id, edge = parts
        if edge == "conversations" and object_id.isdigit():
            listed = self._conversations
        elif edge == "messages" and not object_id.isdigit():
            listed = self._messages
        else:
            return None
        if self.token_of(entry) is None:
            return _error(self.errors["bad_token" if entry["has_authorization"] else "no_token"])
        params = dict(request.query_params)
        answer = listed(object_id, params)
        if isinstance(answer, Response):
            return answer
        items, view = answer
        try:
            limit = max(1, min(MAX_LIMIT, int(params.get("limit", DEFAULT_LIMIT))))
            after = _uncursor(params["after"]) if params.get("after") else None
        except ValueError:
            return _error(self.errors["100"])
        # Newest first; `after` is the key of the last item a client has seen.
        ordered = sorted(items, key=lambda item: item.key, reverse=True)
        start = 0
        if after is not None:
            start = next((i for i, item in enumerate(ordered) if item.key < after), len(ordered))
        chunk = ordered[start : start + limit]
        body: dict[str, Any] = {"data": [view(item) for item in chunk]}
        if chunk:
            body["paging"] = {"cursors": {"before": _cursor(chunk[0].key)}}
            if start + len(chunk) < len(ordered):
                cursor = _cursor(chunk[-1].key)
                body["paging"]["cursors"]["after"] = cursor
                query = {k: v for k, v in params.items() if k not in ("after", "access_token")}
                query.update(limit=str(limit), after=cursor)
                prefix = f"{version}/" if version else ""
                body["paging"]["next"] = (
                    f"{request.base_url}{prefix}{object_id}/{edge}?{urlencode(query)}"
                )
        return JSONResponse(body, headers=self.state.usage_headers or None)

    def _conversations(self, page_id: str, params: dict[str, str]) -> Any:
        platform = GRAPH_PLATFORMS.get(params.get("platform", "").lower())
        if platform is None:
            return _error(self.errors["100"])
        page = self.state.pages.get(page_id)
        if page is None or page.platform != platform:
            return JSONResponse({"data": []}, headers=self.state.usage_headers or None)
        user_id = params.get("user_id")
        found = [c for c in page.conversations if user_id is None or c.user_id == user_id]
        fields = _field_names(params.get("fields", ""))

        def view(conversation: Conversation) -> dict[str, Any]:
            shown: dict[str, Any] = {"id": conversation.id}
            if "updated_time" in fields:
                shown["updated_time"] = iso(conversation.messages[-1].created_time_ms)
            if "participants" in fields:
                people = [self._party(page, conversation, of_page) for of_page in (False, True)]
                shown["participants"] = {"data": people}
            if "message_count" in fields:
                shown["message_count"] = len(conversation.messages)
            if "snippet" in fields:
                newest = conversation.messages[-1]
                shown["snippet"] = "" if newest.deleted else newest.text
            return shown

        return found, view

    def _messages(self, conversation_id: str, params: dict[str, str]) -> Any:
        known = self.state.conversation(conversation_id)
        if known is None:
            return _error(missing("get", conversation_id))
        page, conversation = known
        fields = _field_names(params.get("fields", "")) or {"id", "created_time"}
        user = self._party(page, conversation, False)
        own = self._party(page, conversation, True)

        def view(message: Message) -> dict[str, Any]:
            shown: dict[str, Any] = {"id": message.id}
            if "created_time" in fields:
                shown["created_time"] = iso(message.created_time_ms)
            if "from" in fields:
                shown["from"] = own if message.from_page else user
            if "to" in fields:
                shown["to"] = {"data": [user if message.from_page else own]}
            if "message" in fields:
                shown["message"] = "" if message.deleted else message.text
            if "attachments" in fields and message.attachments and not message.deleted:
                shown["attachments"] = {"data": [_graph_attachment(a) for a in message.attachments]}
            return shown

        return conversation.messages, view

    # --- the control API -------------------------------------------------------------------

    def control_routes(self) -> list[Route]:
        return [
            Route("/_fake/history", self._replace, methods=["POST"]),
            Route("/_fake/history", self._show, methods=["GET"]),
            Route("/_fake/history/generate", self._generate, methods=["POST"]),
            Route("/_fake/history/message", self._new_message, methods=["POST"]),
            Route("/_fake/history/deliver", self._deliver, methods=["POST"]),
            Route("/_fake/history/usage", self._usage, methods=["POST"]),
        ]

    def _store(self, history: PageHistory) -> JSONResponse:
        others = [p for p in self.state.pages.values() if p.page_id != history.page_id]
        check_unique(history, others)
        for conversation in history.conversations:
            for message in conversation.messages:
                message.seq = self.state.next_seq()
        self.state.pages[history.page_id] = history
        return JSONResponse(script(history, self._page_name(history)))

    def _ids(self, body: Mapping[str, Any], seed: Any) -> Ids:
        return Ids(seed, platform_of(body), digit_id(body, "page_id"))

    async def _replace(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            ids = self._ids(body, f"{body.get('page_id')}:{self.state.next_seq()}")
            conversations = body.get("conversations", [])
            if not isinstance(conversations, list):
                raise BadHistory("conversations must be a list")
            history = PageHistory(
                ids.page_id,
                ids.platform,
                string_field(body, "page_name"),
                [conversation_from_json(c, ids) for c in conversations],
            )
            return self._store(history)
        except BadHistory as exc:
            return _bad(exc)

    async def _generate(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            seed = body.get("seed", 1)
            if not isinstance(seed, int | str) or isinstance(seed, bool):
                raise BadHistory("seed must be an integer or a string")
            ids = self._ids(body, seed)
            conversations = generated(body, ids, self._now_ms())
            history = PageHistory(
                ids.page_id, ids.platform, string_field(body, "page_name"), conversations
            )
            return self._store(history)
        except BadHistory as exc:
            return _bad(exc)

    async def _show(self, request: Request) -> Response:
        page_id = request.query_params.get("page_id")
        if page_id is None:
            pages = [script(p, self._page_name(p)) for p in self.state.pages.values()]
            return JSONResponse({"ok": True, "pages": pages})
        page = self.state.pages.get(page_id)
        if page is None:
            return _bad(BadHistory(f"page {page_id} has no history"), 404)
        return JSONResponse(script(page, self._page_name(page)))

    async def _new_message(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            page = self.state.pages.get(digit_id(body, "page_id"))
            if page is None:
                raise BadHistory("that page has no history; POST /_fake/history first")
            user_id = digit_id(body, "user_id")
            ids = Ids(f"{page.page_id}:{self.state.next_seq()}", page.platform, page.page_id)
            message = message_from_json(body, ids, self._now_ms())
            deliver = body.get("deliver", True)
            if not isinstance(deliver, bool):
                raise BadHistory("deliver must be true or false")
            conversation = next((c for c in page.conversations if c.user_id == user_id), None)
            taken = {
                m.id for p in self.state.pages.values() for c in p.conversations for m in c.messages
            }
            if message.id in taken:
                raise BadHistory(f"mid {message.id} is used twice")
        except BadHistory as exc:
            return _bad(exc)
        message.seq = self.state.next_seq()
        if conversation is None:
            name, username = f"User {user_id[-4:]}", f"user{user_id[-4:]}"
            conversation = Conversation(ids.conversation(), user_id, name, username, [message])
            page.conversations.append(conversation)
        else:
            keys = [m.key for m in conversation.messages]
            conversation.messages.insert(bisect.bisect(keys, message.key), message)
        target = self.state.target or self.send.echo
        status = None
        if deliver and target is not None and not message.deleted:
            path, raw = webhook_body(page, [(conversation, message)], self._now_ms(), target)
            status = await self._post(target, path, raw)
        return JSONResponse(
            {
                "ok": True,
                "conversation_id": conversation.id,
                "message": script_message(message),
                "delivered": status is not None,
                "status": status,
            }
        )

    async def _deliver(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            page = self.state.pages.get(digit_id(body, "page_id"))
            if page is None:
                raise BadHistory("that page has no history; POST /_fake/history first")
            target = EchoTarget(
                gateway_url=string_field(body, "gateway_url").rstrip("/"),
                app_secret=string_field(body, "app_secret"),
                app_id=str(body.get("app_id") or self.app_id),
                instagram_app_secret=string_field(body, "instagram_app_secret"),
            )
            if not target.gateway_url.startswith(("http://", "https://")):
                raise BadHistory("gateway_url (http or https) is required")
            if not target.app_secret or not target.app_id.isdigit():
                raise BadHistory("app_secret is required and app_id is digits")
            chosen = _chosen(page, body)
            skip_every = int_field(body, "skip_every", 0, 0, MAX_GENERATED)
            per_post = int_field(body, "per_post", 1, 1, MAX_PER_POST)
        except BadHistory as exc:
            return _bad(exc)
        self.state.target = target
        skip = set(body.get("skip") or [])
        sent, skipped, deleted, n = [], [], [], 0
        for conversation, message in chosen:
            if message.deleted:
                deleted.append(message.id)
                continue
            n += 1
            if message.id in skip or (skip_every and n % skip_every == 0):
                skipped.append(message.id)
            else:
                sent.append((conversation, message))
        now = self._now_ms()
        bodies = [
            webhook_body(page, sent[i : i + per_post], now, target)
            for i in range(0, len(sent), per_post)
        ]
        statuses = [await self._post(target, path, raw) for path, raw in bodies]
        return JSONResponse(
            {
                "ok": True,
                "posted": len(sent),
                "mids": [m.id for _, m in sent],
                "statuses": statuses,
                "skipped": skipped,
                "deleted": deleted,
            }
        )

    async def _post(self, target: EchoTarget, path: str, raw: bytes) -> int:
        """Posts a signed webhook and answers the gateway's first answer (0: none); one not
        answered 200 is retried in the background, as Meta retries."""
        answered: list[int] = []
        await deliver_soon(self.send, target, path, raw, answered).wait()
        status = answered[0] if answered else 0
        self.state.webhook_statuses.append(status)
        return status

    async def _usage(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            headers = body.get("headers", {})
            if not isinstance(headers, dict):
                raise BadHistory("headers must be an object of names to values")
        except BadHistory as exc:
            return _bad(exc)
        self.state.usage_headers = {
            str(name): value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            for name, value in headers.items()
        }
        return JSONResponse({"ok": True, "headers": self.state.usage_headers})


def _chosen(page: PageHistory, body: Mapping[str, Any]) -> list[tuple[Conversation, Message]]:
    """The messages a deliver body names, in its order; by default all, oldest first."""
    every = [(c, m) for c in page.conversations for m in c.messages]
    by_mid = {m.id: (c, m) for c, m in every}
    for key in ("mids", "skip"):
        named = body.get(key)
        if named is None:
            continue
        if not isinstance(named, list) or not all(isinstance(mid, str) for mid in named):
            raise BadHistory(f"{key} must be a list of mids")
        unknown = [mid for mid in named if mid not in by_mid]
        if unknown:
            raise BadHistory(f"{key} names mids the page does not have: {unknown[:3]}")
    if body.get("mids") is not None:
        return [by_mid[mid] for mid in body["mids"]]
    return sorted(every, key=lambda pair: pair[1].key)


def _graph_attachment(attachment: Attachment) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": attachment.id,
        "mime_type": attachment.mime_type,
        "name": attachment.name,
        "size": attachment.size,
    }
    if attachment.type == "image":
        shown["image_data"] = {
            "url": attachment.url,
            "preview_url": attachment.preview_url,
            "width": 640,
            "height": 480,
        }
    elif attachment.type == "video":
        shown["video_data"] = {"url": attachment.url, "preview_url": attachment.preview_url}
    else:
        shown["file_url"] = attachment.url
    return shown


def webhook_body(
    page: PageHistory,
    items: list[tuple[Conversation, Message]],
    now_ms: int,
    target: EchoTarget,
) -> tuple[str, bytes]:
    """The path and body of the webhook Meta posts for these messages, one entry each; a
    page's message is its echo."""
    entries = []
    for conversation, message in items:
        sent: dict[str, Any] = {"mid": message.id}
        if message.from_page:
            sent.update(is_echo=True, app_id=int(target.app_id))
        if message.text:
            sent["text"] = message.text
        if message.attachments:
            sent["attachments"] = [
                {"type": a.type, "payload": {"url": a.url}} for a in message.attachments
            ]
        people = [{"id": conversation.user_id}, {"id": page.page_id}]
        sender, recipient = people[::-1] if message.from_page else people
        event = {
            "sender": sender,
            "recipient": recipient,
            "timestamp": message.created_time_ms,
            "message": sent,
        }
        entries.append({"id": page.page_id, "time": now_ms, "messaging": [event]})
    instagram = page.platform == INSTAGRAM
    envelope = {"object": "instagram" if instagram else "page", "entry": entries}
    path = INSTAGRAM_PATH if instagram else "/webhooks/facebook"
    return path, json.dumps(envelope, separators=(",", ":")).encode()
