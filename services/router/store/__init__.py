"""The router's store: every SQL statement the router runs, one module per concern.

models (the tables), log (append, claims, settling), state (the apply's reads and
writes, the one writer of messages), feed (the change feed), pages (the router's
page table and purge tombstones), reads (every query readers make), sends (the
outbound record), profiles (contact profiles), purge, fences.
"""

from services.router.store.models import (
    AccountCursor,
    Base,
    Change,
    Contact,
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    MessageMark,
    OutboundSend,
    PurgedPage,
    Reaction,
    RouterPage,
)

__all__ = [
    "AccountCursor",
    "Base",
    "Change",
    "Contact",
    "Conversation",
    "EventLog",
    "Message",
    "MessageEdit",
    "MessageMark",
    "OutboundSend",
    "PurgedPage",
    "Reaction",
    "RouterPage",
]
