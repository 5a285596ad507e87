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
import mimetypes
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pagewire.fakecomments import missing
from pagewire.fakesend import INSTAGRAM_PATH, EchoTarget, SendState, deliver_soon

FACEBOOK = "facebook"
INSTAGRAM = "instagram"
GRAPH_PLATFORMS = {"messenger": FACEBOOK, "instagram": INSTAGRAM}
DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_PER_POST = 20
MAX_GENERATED = 100_000
ATTACHMENT_TYPES = ("image", "video", "audio", "file")
_DEFAULT_MIME = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/mpeg",
    "file": "application/pdf",
}
# People of a generated history: (Messenger name, Instagram username).
_PEOPLE = (
    ("Ana Morales", "ana.morales"),
    ("José Núñez", "jose.nunez"),
    ("Zoë Brontë", "zoe.bronte"),
    ("Łukasz Wiśniewski", "lukasz.w"),
    ("Chloé Dubois", "chloe_dubois"),
    ("Mei Lin 林美", "meilin88"),
    ("Søren Åberg", "soren.aberg"),
    ("Ahmed Hassan", "ahmed.h"),
    ("Yuki Tanaka 田中", "yuki_tanaka"),
    ("Olga Petrova", "olga.petrova"),
)
_USER_TEXTS = (
    "Hola, ¿tienen talla 38?",
    "Is this still available?",
    "Merci beaucoup ! 🙏",
    "¿Cuánto cuesta el envío a Córdoba?",
    "Можно оплатить картой?",
    "好的，谢谢！",
    "👍",
    "Can I change my order? It's #A-10293",
    "I'll pick it up tomorrow\naround 5pm",
    "Danke schön — bis morgen",
    "شكرا جزيلا",
    'Is the "blue" one <really> 100% cotton & washable?',
    "We're coming as a family 👩‍👩‍👧 from 🇦🇷",
)
_PAGE_TEXTS = (
    "Hi! Thanks for writing to us 😊",
    "Sí, la tenemos en 38 y 39.",
    "Your order has shipped 📦",
    "Nous vous répondons dans l'heure.",
    "Let me check that for you.",
    "¡Gracias a vos! 🙌",
    "You can pick it up at Calle Mayor 12, 2º B.",
)
_FIELD_NAME = re.compile(r"\s*([A-Za-z_]+)")


class BadHistory(ValueError):
    """A control body that cannot be used; its message says why."""


@dataclass
class Attachment:
    """One attachment of a scripted message."""

    type: str
    url: str
    id: str
    name: str
    mime_type: str
    size: int
    preview_url: str


@dataclass
class Message:
    """One scripted message; `seq` orders messages of the same millisecond."""

    id: str
    from_page: bool
    text: str
    created_time_ms: int
    attachments: list[Attachment] = field(default_factory=list)
    deleted: bool = False
    seq: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.created_time_ms, self.seq)


@dataclass
class Conversation:
    """A Page's conversation with one person; messages oldest first, never empty."""

    id: str
    user_id: str
    name: str
    username: str
    messages: list[Message]

    @property
    def key(self) -> tuple[int, int]:
        """Where the conversation sorts: its newest message."""
        return self.messages[-1].key


@dataclass
class PageHistory:
    """Everything the Conversations API answers about one Page or Instagram account."""

    page_id: str
    platform: str
    page_name: str
    conversations: list[Conversation]


@dataclass
class HistoryState:
    """The scripted histories, the answers' usage headers, and where webhooks go."""

    pages: dict[str, PageHistory] = field(default_factory=dict)
    usage_headers: dict[str, str] = field(default_factory=dict)
    target: EchoTarget | None = None
    webhook_statuses: list[int] = field(default_factory=list)
    serial: int = 0

    def person(self, user_id: str) -> Conversation | None:
        """The scripted conversation of this person, whichever page it is on."""
        for page in self.pages.values():
            for conversation in page.conversations:
                if conversation.user_id == user_id:
                    return conversation
        return None

    def reset(self) -> None:
        self.pages.clear()
        self.usage_headers.clear()
        self.target = None
        self.webhook_statuses.clear()
        self.serial = 0

    def next_seq(self) -> int:
        self.serial += 1
        return self.serial

    def conversation(self, conversation_id: str) -> tuple[PageHistory, Conversation] | None:
        for page in self.pages.values():
            for conversation in page.conversations:
                if conversation.id == conversation_id:
                    return page, conversation
        return None


class _Ids:
    """Ids in Meta's shapes, drawn from a seeded generator so a script is reproducible."""

    def __init__(self, seed: Any, platform: str, page_id: str) -> None:
        self.rng = random.Random(seed)
        self.platform = platform
        self.page_id = page_id

    def _b64(self, text: str | bytes) -> str:
        raw = text.encode() if isinstance(text, str) else text
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def digits(self, length: int) -> str:
        return str(self.rng.randrange(10 ** (length - 1), 10**length))

    def user(self) -> str:
        return self.digits(17 if self.platform == INSTAGRAM else 16)

    def conversation(self) -> str:
        if self.platform == INSTAGRAM:
            thread = f"1:IGMessageThread:{self.page_id}:{self.digits(38)}"
            return "aWdfZAG06" + self._b64(thread)
        return "t_" + self.digits(17)

    def mid(self) -> str:
        if self.platform == INSTAGRAM:
            item = f"{self.page_id}:{self.digits(38)}:{self.digits(38)}"
            return "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOj" + self._b64(item)
        return "m_" + self._b64(self.rng.randbytes(64))

    def attachment(self) -> str:
        return self.digits(16)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms / 1000))


def _string(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadHistory(f"{key} must be a string")
    return value


def _int(body: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadHistory(f"{key} must be an integer from {low} to {high}")
    return value


def _digit_id(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.isdigit():
        raise BadHistory(f"{key} (a string of digits) is required")
    return value


def _platform(body: Mapping[str, Any]) -> str:
    platform = _string(body, "platform", FACEBOOK).lower()
    if platform not in (FACEBOOK, INSTAGRAM):
        raise BadHistory("platform must be facebook or instagram")
    return platform


def _attachment(raw: Any, ids: _Ids) -> Attachment:
    if not isinstance(raw, dict):
        raise BadHistory("an attachment must be an object")
    kind = _string(raw, "type")
    if kind not in ATTACHMENT_TYPES:
        raise BadHistory(f"attachment type must be one of {', '.join(ATTACHMENT_TYPES)}")
    url = _string(raw, "url")
    if not url.startswith(("http://", "https://")):
        raise BadHistory("an attachment needs an http(s) url")
    name = _string(raw, "name") or url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    guessed = mimetypes.guess_type(name)[0]
    return Attachment(
        type=kind,
        url=url,
        id=_string(raw, "id") or ids.attachment(),
        name=name or f"{kind}.bin",
        mime_type=_string(raw, "mime_type") or guessed or _DEFAULT_MIME[kind],
        size=_int(raw, "size", ids.rng.randrange(2_000, 5_000_000), 0, 2**53),
        preview_url=_string(raw, "preview_url") or f"{url}{'&' if '?' in url else '?'}preview=1",
    )


def message_from_json(raw: Any, ids: _Ids, now_ms: int | None) -> Message:
    """A scripted message (`created_time_ms` defaults to `now_ms`, None: required); raises
    BadHistory."""
    if not isinstance(raw, dict):
        raise BadHistory("a message must be an object")
    sender = _string(raw, "from", "user")
    if sender not in ("user", "page"):
        raise BadHistory('from must be "user" or "page"')
    attachments = raw.get("attachments") or []
    if not isinstance(attachments, list):
        raise BadHistory("attachments must be a list")
    deleted = raw.get("deleted", False)
    if not isinstance(deleted, bool):
        raise BadHistory("deleted must be true or false")
    message = Message(
        id=_string(raw, "id") or ids.mid(),
        from_page=sender == "page",
        text=_string(raw, "text"),
        created_time_ms=_int(raw, "created_time_ms", now_ms, 0, 2**53),
        attachments=[_attachment(a, ids) for a in attachments],
        deleted=deleted,
    )
    if not (message.text or message.attachments or message.deleted):
        raise BadHistory(f"message {message.id} needs a text or attachments")
    return message


def _conversation(raw: Any, ids: _Ids) -> Conversation:
    if not isinstance(raw, dict):
        raise BadHistory("a conversation must be an object")
    user = raw.get("user")
    if not isinstance(user, dict):
        raise BadHistory("every conversation needs a user object")
    user_id = _digit_id(user, "id")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadHistory(f"the conversation with {user_id} needs at least one message")
    conversation_id = _string(raw, "id") or ids.conversation()
    if conversation_id.isdigit() or "/" in conversation_id:
        raise BadHistory("a conversation id is not all digits and has no '/' (t_…, aWdf…)")
    parsed = sorted(
        (message_from_json(m, ids, None) for m in messages), key=lambda m: m.created_time_ms
    )
    return Conversation(
        id=conversation_id,
        user_id=user_id,
        name=_string(user, "name") or f"User {user_id[-4:]}",
        username=_string(user, "username") or f"user{user_id[-4:]}",
        messages=parsed,
    )


def _check_unique(history: PageHistory, others: Iterable[PageHistory]) -> None:
    taken_conversations = {c.id for p in others for c in p.conversations}
    taken_mids = {m.id for p in others for c in p.conversations for m in c.messages}
    users: set[str] = set()
    for conversation in history.conversations:
        if conversation.id in taken_conversations:
            raise BadHistory(f"conversation id {conversation.id} is used twice")
        if conversation.user_id in users:
            raise BadHistory(f"user {conversation.user_id} has two conversations with the page")
        taken_conversations.add(conversation.id)
        users.add(conversation.user_id)
        for message in conversation.messages:
            if message.id in taken_mids:
                raise BadHistory(f"mid {message.id} is used twice")
            taken_mids.add(message.id)


def _generated(body: Mapping[str, Any], ids: _Ids, now_ms: int) -> list[Conversation]:
    """The seeded conversations of a /_fake/history/generate body."""
    count = _int(body, "conversations", 3, 1, 1000)
    each = _int(body, "messages", 150, 1, MAX_GENERATED)
    if count * each > MAX_GENERATED:
        raise BadHistory(f"at most {MAX_GENERATED} messages in all")
    newest = _int(body, "newest_ms", now_ms, 0, 2**53)
    step = _int(body, "step_ms", 60_000, 1, 86_400_000)
    attachments_every = _int(body, "attachments_every", 10, 0, MAX_GENERATED)
    page_every = _int(body, "page_every", 3, 0, MAX_GENERATED)
    deleted = _int(body, "deleted", 1, 0, MAX_GENERATED)
    rng = ids.rng
    people = rng.sample(_PEOPLE, len(_PEOPLE))
    # Each conversation's newest message a little older than the previous one's.
    gap = step // 3 + 1
    conversations = []
    for c in range(count):
        name, username = people[c % len(people)]
        if c >= len(people):
            name, username = f"{name} {c // len(people) + 1}", f"{username}{c // len(people) + 1}"
        first = newest - c * gap - (each - 1) * step
        if first < 0:
            raise BadHistory("newest_ms is too small for that many messages")
        unsent = set(rng.sample(range(each - 1), min(deleted, each - 1)))
        messages = []
        for i in range(each):
            n = i + 1
            from_page = bool(page_every) and n % page_every == 0
            attachments = []
            text = rng.choice(_PAGE_TEXTS if from_page else _USER_TEXTS)
            if attachments_every and n % attachments_every == 0:
                kind = ("image", "video", "file")[(n // attachments_every) % 3]
                extension = {"image": "jpg", "video": "mp4", "file": "pdf"}[kind]
                url = f"https://cdn.fakegraph.example/{ids.page_id}/c{c}/m{n}.{extension}"
                attachments = [_attachment({"type": kind, "url": url}, ids)]
                text = ""
            messages.append(
                Message(ids.mid(), from_page, text, first + i * step, attachments, i in unsent)
            )
        conversations.append(Conversation(ids.conversation(), ids.user(), name, username, messages))
    return conversations


def script(page: PageHistory, page_name: str) -> dict[str, Any]:
    """The page's history as the control API shows it (and takes it back)."""
    return {
        "ok": True,
        "page_id": page.page_id,
        "platform": page.platform,
        "page_name": page_name,
        "conversations": [
            {
                "id": c.id,
                "user": {"id": c.user_id, "name": c.name, "username": c.username},
                "updated_time_ms": c.messages[-1].created_time_ms,
                "messages": [_script_message(m) for m in c.messages],
            }
            for c in page.conversations
        ],
    }


def _script_message(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "from": "page" if message.from_page else "user",
        "text": message.text,
        "created_time_ms": message.created_time_ms,
        "attachments": [vars(a).copy() for a in message.attachments],
        "deleted": message.deleted,
    }


def _field_names(raw: str) -> set[str]:
    """The top-level names of a Graph `fields` value: `a,b{c,d},e.limit(2)` → a, b, e."""
    names, depth, start = set(), 0, 0
    for i, char in enumerate(raw + ","):
        depth += {"{": 1, "(": 1, "}": -1, ")": -1}.get(char, 0)
        if char == "," and depth <= 0:
            found = _FIELD_NAME.match(raw[start:i])
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
                shown["updated_time"] = _iso(conversation.messages[-1].created_time_ms)
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
                shown["created_time"] = _iso(message.created_time_ms)
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
        _check_unique(history, others)
        for conversation in history.conversations:
            for message in conversation.messages:
                message.seq = self.state.next_seq()
        self.state.pages[history.page_id] = history
        return JSONResponse(script(history, self._page_name(history)))

    def _ids(self, body: Mapping[str, Any], seed: Any) -> _Ids:
        return _Ids(seed, _platform(body), _digit_id(body, "page_id"))

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
                _string(body, "page_name"),
                [_conversation(c, ids) for c in conversations],
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
            conversations = _generated(body, ids, self._now_ms())
            history = PageHistory(
                ids.page_id, ids.platform, _string(body, "page_name"), conversations
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
            page = self.state.pages.get(_digit_id(body, "page_id"))
            if page is None:
                raise BadHistory("that page has no history; POST /_fake/history first")
            user_id = _digit_id(body, "user_id")
            ids = _Ids(f"{page.page_id}:{self.state.next_seq()}", page.platform, page.page_id)
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
                "message": _script_message(message),
                "delivered": status is not None,
                "status": status,
            }
        )

    async def _deliver(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            page = self.state.pages.get(_digit_id(body, "page_id"))
            if page is None:
                raise BadHistory("that page has no history; POST /_fake/history first")
            target = EchoTarget(
                gateway_url=_string(body, "gateway_url").rstrip("/"),
                app_secret=_string(body, "app_secret"),
                app_id=str(body.get("app_id") or self.app_id),
                instagram_app_secret=_string(body, "instagram_app_secret"),
            )
            if not target.gateway_url.startswith(("http://", "https://")):
                raise BadHistory("gateway_url (http or https) is required")
            if not target.app_secret or not target.app_id.isdigit():
                raise BadHistory("app_secret is required and app_id is digits")
            chosen = _chosen(page, body)
            skip_every = _int(body, "skip_every", 0, 0, MAX_GENERATED)
            per_post = _int(body, "per_post", 1, 1, MAX_PER_POST)
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
