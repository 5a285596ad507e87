"""A conversation's key and the name of its lock, shared by the apply stage and the sender.

The key is (platform, page id, user id): the user is the sender of an inbound item
and the recipient of an echo, so a person's message and the Page's echo of a reply
take the same lock. The page's own events (no person) are keyed with user "", and a
comment thread's (comments, post reactions, mentions) with "~<post or media id>".
"""

from __future__ import annotations

from pagewire.contract import Platform
from pagewire.proto import events_pb2
from services.router.planner import THREAD, Key, thread_of


def key_of(event: events_pb2.Event) -> Key:
    """A comment, post reaction or mention is keyed by its thread (post or media)."""
    platform = Platform.from_proto(event.platform).value
    post = thread_of(event)
    if post is not None:
        return (platform, event.page_id, THREAD + post)
    return (platform, event.page_id, event.user_id)


def lock_name(key: Key) -> str:
    """The lock's name inside the `pagewire:lock:{…}` hash tag."""
    platform, page_id, user_id = key
    return f"{platform.lower()}:{page_id}:{user_id}"
