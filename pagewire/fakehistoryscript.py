"""The fake Graph's scripted history: pages, conversations, messages and attachments, how a
script is read from JSON or generated from a seed, and how it is written back.

pagewire.fakehistory serves it over HTTP (the Conversations API and the control routes);
this module has no HTTP in it.
"""

from __future__ import annotations

import base64
import mimetypes
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pagewire.fakesend import EchoTarget

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
FIELD_NAME = re.compile(r"\s*([A-Za-z_]+)")


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


class Ids:
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


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms / 1000))


def string_field(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadHistory(f"{key} must be a string")
    return value


def int_field(body: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadHistory(f"{key} must be an integer from {low} to {high}")
    return value


def digit_id(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.isdigit():
        raise BadHistory(f"{key} (a string of digits) is required")
    return value


def platform_of(body: Mapping[str, Any]) -> str:
    platform = string_field(body, "platform", FACEBOOK).lower()
    if platform not in (FACEBOOK, INSTAGRAM):
        raise BadHistory("platform must be facebook or instagram")
    return platform


def _attachment(raw: Any, ids: Ids) -> Attachment:
    if not isinstance(raw, dict):
        raise BadHistory("an attachment must be an object")
    kind = string_field(raw, "type")
    if kind not in ATTACHMENT_TYPES:
        raise BadHistory(f"attachment type must be one of {', '.join(ATTACHMENT_TYPES)}")
    url = string_field(raw, "url")
    if not url.startswith(("http://", "https://")):
        raise BadHistory("an attachment needs an http(s) url")
    name = string_field(raw, "name") or url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    guessed = mimetypes.guess_type(name)[0]
    return Attachment(
        type=kind,
        url=url,
        id=string_field(raw, "id") or ids.attachment(),
        name=name or f"{kind}.bin",
        mime_type=string_field(raw, "mime_type") or guessed or _DEFAULT_MIME[kind],
        size=int_field(raw, "size", ids.rng.randrange(2_000, 5_000_000), 0, 2**53),
        preview_url=string_field(raw, "preview_url")
        or f"{url}{'&' if '?' in url else '?'}preview=1",
    )


def message_from_json(raw: Any, ids: Ids, now_ms: int | None) -> Message:
    """A scripted message (`created_time_ms` defaults to `now_ms`, None: required); raises
    BadHistory."""
    if not isinstance(raw, dict):
        raise BadHistory("a message must be an object")
    sender = string_field(raw, "from", "user")
    if sender not in ("user", "page"):
        raise BadHistory('from must be "user" or "page"')
    attachments = raw.get("attachments") or []
    if not isinstance(attachments, list):
        raise BadHistory("attachments must be a list")
    deleted = raw.get("deleted", False)
    if not isinstance(deleted, bool):
        raise BadHistory("deleted must be true or false")
    message = Message(
        id=string_field(raw, "id") or ids.mid(),
        from_page=sender == "page",
        text=string_field(raw, "text"),
        created_time_ms=int_field(raw, "created_time_ms", now_ms, 0, 2**53),
        attachments=[_attachment(a, ids) for a in attachments],
        deleted=deleted,
    )
    if not (message.text or message.attachments or message.deleted):
        raise BadHistory(f"message {message.id} needs a text or attachments")
    return message


def conversation_from_json(raw: Any, ids: Ids) -> Conversation:
    if not isinstance(raw, dict):
        raise BadHistory("a conversation must be an object")
    user = raw.get("user")
    if not isinstance(user, dict):
        raise BadHistory("every conversation needs a user object")
    user_id = digit_id(user, "id")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadHistory(f"the conversation with {user_id} needs at least one message")
    conversation_id = string_field(raw, "id") or ids.conversation()
    if conversation_id.isdigit() or "/" in conversation_id:
        raise BadHistory("a conversation id is not all digits and has no '/' (t_…, aWdf…)")
    parsed = sorted(
        (message_from_json(m, ids, None) for m in messages), key=lambda m: m.created_time_ms
    )
    return Conversation(
        id=conversation_id,
        user_id=user_id,
        name=string_field(user, "name") or f"User {user_id[-4:]}",
        username=string_field(user, "username") or f"user{user_id[-4:]}",
        messages=parsed,
    )


def check_unique(history: PageHistory, others: Iterable[PageHistory]) -> None:
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


def generated(body: Mapping[str, Any], ids: Ids, now_ms: int) -> list[Conversation]:
    """The seeded conversations of a /_fake/history/generate body."""
    count = int_field(body, "conversations", 3, 1, 1000)
    each = int_field(body, "messages", 150, 1, MAX_GENERATED)
    if count * each > MAX_GENERATED:
        raise BadHistory(f"at most {MAX_GENERATED} messages in all")
    newest = int_field(body, "newest_ms", now_ms, 0, 2**53)
    step = int_field(body, "step_ms", 60_000, 1, 86_400_000)
    attachments_every = int_field(body, "attachments_every", 10, 0, MAX_GENERATED)
    page_every = int_field(body, "page_every", 3, 0, MAX_GENERATED)
    deleted = int_field(body, "deleted", 1, 0, MAX_GENERATED)
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
                "messages": [script_message(m) for m in c.messages],
            }
            for c in page.conversations
        ],
    }


def script_message(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "from": "page" if message.from_page else "user",
        "text": message.text,
        "created_time_ms": message.created_time_ms,
        "attachments": [vars(a).copy() for a in message.attachments],
        "deleted": message.deleted,
    }
