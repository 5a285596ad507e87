"""The fake Graph API's Send API: message ids, and the echo webhook Meta would send back.

`POST /{page-id}/messages` answers `{"recipient_id", "message_id"}` (or only the
recipient for a sender action). When told where the gateway is (`/_fake/echo`),
it also posts the signed echo of every accepted message to it, early (while the
Send API call is still being answered) or late, and keeps retrying it until the
gateway answers 200, as Meta would.
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


@dataclass
class EchoTarget:
    """Where and how to deliver echoes."""

    gateway_url: str
    app_secret: str
    app_id: str
    mode: str = "late"  # early: posted while the send is answered; late: after it
    delay_s: float = 0.3
    # Accounts whose echoes go to /webhooks/instagram (the fake serves both hosts alike).
    instagram_pages: frozenset[str] = frozenset()


@dataclass
class SendState:
    """Messages accepted by the fake Send API, and the echo deliveries in flight."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    echo: EchoTarget | None = None
    echo_statuses: list[int] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        self.sent.clear()
        self.echo = None
        self.echo_statuses.clear()


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


async def _deliver(state: SendState, target: EchoTarget, path: str, body: bytes) -> None:
    signature = "sha256=" + hmac.new(target.app_secret.encode(), body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(timeout=10) as client:
        for attempt in range(ECHO_ATTEMPTS):
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(
                    f"{target.gateway_url}{path}",
                    content=body,
                    headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
                )
                state.echo_statuses.append(response.status_code)
                if response.status_code == 200:
                    return
            await asyncio.sleep(min(0.1 * 2**attempt, 1.0))  # Meta's retry, not a test wait


async def answer_send(
    state: SendState, form: dict[str, str], page_id: str
) -> dict[str, Any] | None:
    """The Send API's answer; None when the request is malformed (a 100 error)."""
    try:
        recipient = json.loads(form.get("recipient", ""))
        user_id = str(recipient["id"])
    except (ValueError, KeyError, TypeError):
        return None
    if "sender_action" in form:
        state.sent.append({"page_id": page_id, "user_id": user_id, "action": form["sender_action"]})
        return {"recipient_id": user_id}
    try:
        message = json.loads(form.get("message", ""))
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    mid = "m_fake" + secrets.token_urlsafe(24)
    state.sent.append(
        {
            "page_id": page_id,
            "user_id": user_id,
            "mid": mid,
            "message": message,
            "messaging_type": form.get("messaging_type", ""),
            "tag": form.get("tag", ""),
        }
    )
    target = state.echo
    if target is not None:
        instagram = page_id in target.instagram_pages
        path = "/webhooks/instagram" if instagram else "/webhooks/facebook"
        body = _echo_body(
            "instagram" if instagram else "page", page_id, user_id, mid, message, target.app_id
        )

        async def echo() -> None:
            if target.mode == "late":
                await asyncio.sleep(target.delay_s)
            await _deliver(state, target, path, body)

        task = asyncio.create_task(echo())
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        if target.mode == "early":
            # The echo is on its way before the sender gets its answer, as can happen at Meta.
            await asyncio.sleep(target.delay_s)
    return {"recipient_id": user_id, "message_id": mid}
