"""The fake Graph API's Send API: message ids, and the webhooks Meta would send back.

`POST /{page-id}/messages` answers `{"recipient_id", "message_id"}` (or only the
recipient for a sender action). When told where the gateway is (`/_fake/echo`),
it also posts the signed echo of every accepted message to it, early (while the
Send API call is still being answered) or late, and keeps retrying it until the
gateway answers 200, as Meta would. The comment webhooks of pagewire.fakecomments
go the same way (`post_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

ECHO_ATTEMPTS = 40
INSTAGRAM_PATH = "/webhooks/instagram"


@dataclass
class EchoTarget:
    """Where and how to deliver the webhooks a Page sends back (echoes, comment changes)."""

    gateway_url: str
    app_secret: str
    app_id: str
    mode: str = "late"  # early: posted while the call is answered; late: after it
    delay_s: float = 0.3
    # Accounts whose echoes go to /webhooks/instagram (the fake serves both hosts alike).
    instagram_pages: frozenset[str] = frozenset()
    # Whether comment actions (replies, hide, delete) and /_fake/comment post webhooks too.
    comments: bool = True
    # Signs what goes to /webhooks/instagram when the Instagram app has its own secret.
    instagram_app_secret: str = ""

    def secret_for(self, path: str) -> str:
        if path == INSTAGRAM_PATH and self.instagram_app_secret:
            return self.instagram_app_secret
        return self.app_secret


def echo_target_from_json(body: Any, default_app_id: str) -> EchoTarget:
    """A /_fake/echo body as an EchoTarget; raises ValueError, KeyError or TypeError."""
    if not isinstance(body, dict):
        raise TypeError("body must be a JSON object")
    mode = str(body.get("mode", "late"))
    if mode not in ("early", "late"):
        raise ValueError("mode must be early or late")
    delay_s = float(body.get("delay_s", 0.3))
    if delay_s < 0:
        raise ValueError("delay_s must not be negative")
    return EchoTarget(
        gateway_url=str(body["gateway_url"]).rstrip("/"),
        app_secret=str(body["app_secret"]),
        app_id=str(body.get("app_id", default_app_id)),
        mode=mode,
        delay_s=delay_s,
        instagram_pages=frozenset(str(p) for p in body.get("instagram_pages", [])),
        comments=bool(body.get("comments", True)),
        instagram_app_secret=str(body.get("instagram_app_secret", "")),
    )


@dataclass
class SendState:
    """Messages accepted by the fake Send API, and the deliveries back in flight."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    echo: EchoTarget | None = None
    echo_statuses: list[int] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        self.sent.clear()
        self.echo = None
        self.echo_statuses.clear()


def json_param(value: Any) -> Any:
    """A Graph parameter that holds JSON: a form field's string, or a JSON body's object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _echo_body(
    platform: str, page_id: str, user_id: str, mid: str, message: dict, app_id: str
) -> bytes:
    echoed: dict[str, Any] = {"mid": mid, "is_echo": True, "app_id": int(app_id)}
    for key in ("text", "metadata", "quick_replies"):
        if key in message:
            echoed[key] = message[key]
    if "attachment" in message:
        echoed["attachments"] = [message["attachment"]]
    now = int(time.time() * 1000)
    return json.dumps(
        {
            "object": "instagram" if platform == "instagram" else "page",
            "entry": [
                {
                    "id": page_id,
                    "time": now,
                    "messaging": [
                        {
                            "sender": {"id": page_id},
                            "recipient": {"id": user_id},
                            "timestamp": now,
                            "message": echoed,
                        }
                    ],
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


async def _deliver(
    statuses: list[int], target: EchoTarget, path: str, body: bytes, tried: asyncio.Event
) -> None:
    secret = target.secret_for(path).encode()
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for attempt in range(ECHO_ATTEMPTS):
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(
                        f"{target.gateway_url}{path}",
                        content=body,
                        headers={
                            "X-Hub-Signature-256": signature,
                            "Content-Type": "application/json",
                        },
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        return
                tried.set()
                await asyncio.sleep(min(0.1 * 2**attempt, 1.0))  # Meta's retry, not a test wait
    finally:
        tried.set()


def deliver_soon(
    state: SendState,
    target: EchoTarget,
    path: str,
    body: bytes,
    statuses: list[int],
    delay_s: float = 0.0,
) -> asyncio.Event:
    """Starts posting `body` (signed) after `delay_s`, retried until a 200; the event is
    set once the first attempt has been answered (or has failed)."""
    tried = asyncio.Event()

    async def run() -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        await _deliver(statuses, target, path, body, tried)

    task = asyncio.create_task(run())
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    return tried


async def post_back(
    state: SendState, target: EchoTarget, path: str, body: bytes, statuses: list[int]
) -> None:
    """Sends what a Page sends back after an accepted call, as `target.mode` says.

    Late: posted `delay_s` after the call is answered. Early: the caller's answer waits
    until the gateway has answered the first attempt (at most `delay_s`), so the webhook
    is there before the caller learns the call succeeded, as can happen at Meta.
    """
    if target.mode != "early":
        deliver_soon(state, target, path, body, statuses, target.delay_s)
        return
    tried = deliver_soon(state, target, path, body, statuses)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tried.wait(), target.delay_s)


async def accept_message(
    state: SendState,
    params: dict[str, Any],
    page_id: str,
    user_id: str,
    message: dict[str, Any],
    *,
    instagram: bool | None = None,
    echo_page_id: str = "",
    comment_id: str = "",
) -> dict[str, Any]:
    """Records an accepted message, posts its echo back, and returns the Send API's answer.

    `instagram` (None: as `/_fake/echo`'s instagram_pages say) picks the echo's webhook;
    `echo_page_id` is the account the echo names when it is not `page_id` (a private reply
    to an Instagram comment); `comment_id` marks a private reply.
    """
    mid = "m_fake" + secrets.token_urlsafe(24)
    sent = {
        "page_id": page_id,
        "user_id": user_id,
        "mid": mid,
        "message": message,
        "messaging_type": str(params.get("messaging_type", "")),
        "tag": str(params.get("tag", "")),
    }
    if comment_id:
        sent["comment_id"] = comment_id
    state.sent.append(sent)
    target = state.echo
    if target is not None:
        if instagram is None:
            instagram = page_id in target.instagram_pages
        path = INSTAGRAM_PATH if instagram else "/webhooks/facebook"
        body = _echo_body(
            "instagram" if instagram else "page",
            echo_page_id or page_id,
            user_id,
            mid,
            message,
            target.app_id,
        )
        await post_back(state, target, path, body, state.echo_statuses)
    return {"recipient_id": user_id, "message_id": mid}


async def answer_send(
    state: SendState, form: dict[str, Any], page_id: str
) -> dict[str, Any] | None:
    """The Send API's answer; None when the request is malformed (a 100 error)."""
    recipient = json_param(form.get("recipient", ""))
    if not isinstance(recipient, dict) or recipient.get("id") is None:
        return None
    user_id = str(recipient["id"])
    if "sender_action" in form:
        state.sent.append({"page_id": page_id, "user_id": user_id, "action": form["sender_action"]})
        return {"recipient_id": user_id}
    message = json_param(form.get("message", ""))
    if not isinstance(message, dict):
        return None
    return await accept_message(state, form, page_id, user_id, message)
