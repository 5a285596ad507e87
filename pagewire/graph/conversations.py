"""The Conversations API: a page's conversations and their messages, one result page a call.

`GET /{page-id}/conversations?platform=messenger|instagram` lists conversations newest
`updated_time` first; `GET /{conversation-id}/messages` lists a conversation's messages
newest first. Both are cursor-paginated. The caller keeps the `after` cursor (it is what a
resumed import starts from), and this module never follows `paging.next`: that URL names
a host we did not choose and may carry the token in its query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagewire.graph.client import FACEBOOK, GraphClient
from pagewire.graph.errors import GraphError
from pagewire.kit.settings import Secret

# Meta's maximum `limit` for both edges.
MAX_PAGE_SIZE = 100
CONVERSATION_FIELDS = "id,updated_time,participants"
# What a stored message needs; `attachments` with its media URLs, `sticker` for stickers.
MESSAGE_FIELDS = (
    "id,created_time,from,to,message,sticker,"
    "attachments{id,mime_type,name,size,image_data,video_data,file_url}"
)


@dataclass(frozen=True)
class Conversation:
    """One conversation of the page: Graph's id, when it last changed, and the person."""

    id: str
    updated_time: object  # as Graph wrote it; pagewire.history reads it
    participants: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ResultPage:
    """One result page of an edge and the cursor of the next ('' when it was the last)."""

    items: list[dict[str, Any]]
    after: str


class ConversationsApi:
    """Reads conversations and messages over the process's one GraphClient."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    async def conversations(
        self,
        platform: str,
        page_id: str,
        token: Secret,
        *,
        after: str = "",
        limit: int = 25,
        user_id: str = "",
    ) -> tuple[list[Conversation], str]:
        """One result page of the page's conversations (newest first) and the next cursor.

        `user_id` narrows the list to that person's conversation (Meta's own filter).
        """
        params = {
            "platform": "messenger" if platform == FACEBOOK else "instagram",
            "fields": CONVERSATION_FIELDS,
            "limit": str(max(1, min(limit, MAX_PAGE_SIZE))),
        }
        if after:
            params["after"] = after
        if user_id:
            params["user_id"] = user_id
        body = await self.client.request(
            "GET",
            platform,
            f"{page_id}/conversations",
            token=token,
            params=params,
            object_id=page_id,
        )
        page = _result_page(body)
        conversations = []
        for item in page.items:
            conversation_id = item.get("id")
            if not isinstance(conversation_id, str) or not conversation_id:
                continue
            participants = item.get("participants")
            data = participants.get("data") if isinstance(participants, dict) else None
            conversations.append(
                Conversation(
                    id=conversation_id,
                    updated_time=item.get("updated_time"),
                    participants=tuple(p for p in data or () if isinstance(p, dict)),
                )
            )
        return conversations, page.after

    async def messages(
        self,
        platform: str,
        page_id: str,
        conversation_id: str,
        token: Secret,
        *,
        after: str = "",
        limit: int = MAX_PAGE_SIZE,
    ) -> ResultPage:
        """One result page of the conversation's messages, newest first, as Graph gave them."""
        params = {"fields": MESSAGE_FIELDS, "limit": str(max(1, min(limit, MAX_PAGE_SIZE)))}
        if after:
            params["after"] = after
        body = await self.client.request(
            "GET",
            platform,
            f"{_path_id(conversation_id)}/messages",
            token=token,
            params=params,
            object_id=page_id,
        )
        return _result_page(body)


def _path_id(conversation_id: str) -> str:
    """A conversation id as a path segment: Graph's ids are letters, digits, `_` and `-`
    (Instagram's are base64url); anything else could alter the path."""
    if not conversation_id or not all(c.isalnum() or c in "_-" for c in conversation_id):
        raise GraphError(http_status=0, message="not a conversation id Graph would give")
    return conversation_id


def _result_page(body: Any) -> ResultPage:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise GraphError(http_status=200, message="response has no 'data' list")
    paging = body.get("paging")
    cursors = paging.get("cursors") if isinstance(paging, dict) else None
    after = cursors.get("after") if isinstance(cursors, dict) else None
    # Graph gives an `after` cursor on the last page too; only `next` says there is more.
    more = isinstance(paging, dict) and bool(paging.get("next"))
    return ResultPage(
        items=[item for item in data if isinstance(item, dict)],
        after=after if more and isinstance(after, str) else "",
    )
