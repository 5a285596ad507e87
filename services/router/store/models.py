"""The router's tables (its schema alone), as SQLAlchemy models.

Idempotence is a property of the database: every insert is an
INSERT … ON CONFLICT DO NOTHING against a unique constraint, so a redelivered
event, a retried POST or a second router replica can never add a second row.
The statements live beside this module, one module per concern.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    """The router's own metadata; no other service's tables live here."""


class Contact(Base):
    """A person as seen by one page: their PSID or IGSID."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("platform", "page_id", "user_id", name="uq_contacts_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    # The profile Graph gave (fetched after commit, at most once per refresh period).
    name: Mapped[str] = mapped_column(Text, default="")
    first_name: Mapped[str] = mapped_column(Text, default="")
    last_name: Mapped[str] = mapped_column(Text, default="")
    username: Mapped[str] = mapped_column(Text, default="")
    profile_pic: Mapped[str] = mapped_column(Text, default="")
    profile_error: Mapped[str] = mapped_column(Text, default="")
    profile_checked_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class Conversation(Base):
    """A page and a person on one platform, owned by the page's account."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "user_id", name="uq_conversations_key"),
        Index("ix_conversations_account_recent", "account_id", "last_event_ms"),
        Index("ix_conversations_page_recent", "page_id", "last_event_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_event_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    delivery_watermark_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    read_watermark_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # Fence of the last lock holder that wrote this conversation (guarantee 5).
    fence: Mapped[int] = mapped_column(BigInteger, default=0)
    thread_owner_app_id: Mapped[str] = mapped_column(String(64), default="")
    thread_owner_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # The person's latest action: the Send API's windows are counted from it.
    last_inbound_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class Message(Base):
    """A message or an echo; `mid` is unique per page."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "mid", name="uq_messages_mid"),
        Index("ix_messages_order", "conversation_id", "timestamp_ms", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    mid: Mapped[str] = mapped_column(String(512))
    direction: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    attachments_json: Mapped[str] = mapped_column(Text, default="[]")
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    is_echo: Mapped[bool] = mapped_column(Boolean, default=False)
    app_id: Mapped[str] = mapped_column(String(64), default="")
    metadata_: Mapped[str] = mapped_column("metadata", Text, default="")
    quick_reply_payload: Mapped[str] = mapped_column(Text, default="")
    reply_to_mid: Mapped[str] = mapped_column(String(512), default="")
    status: Mapped[str] = mapped_column(String(16))
    standby: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16), default="message")
    payload: Mapped[str] = mapped_column(Text, default="")
    original_text: Mapped[str] = mapped_column(Text, default="")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    is_unsupported: Mapped[bool] = mapped_column(Boolean, default=False)
    reply_to_story_url: Mapped[str] = mapped_column(Text, default="")
    referral_json: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[int] = mapped_column(Integer, default=0)
    error_subcode: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str] = mapped_column(String(128), default="")
    # The certificate identity whose SendMessage produced this outgoing message.
    sent_by: Mapped[str] = mapped_column(String(128), default="")
    # webhook (live traffic and the router's own sends), history (imported from the
    # Conversations API) or gap_repair (found there, never delivered as a webhook).
    origin: Mapped[str] = mapped_column(String(16), default="webhook", server_default="webhook")


class OutboundSend(Base):
    """A send, recorded before Graph is called, so a retry never sends twice."""

    __tablename__ = "outbound_sends"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "idempotency_key", name="uq_outbound_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    request_hash: Mapped[str] = mapped_column(String(64))
    # PENDING (Graph being called), ACCEPTED, REJECTED or UNKNOWN.
    state: Mapped[str] = mapped_column(String(16))
    mids_json: Mapped[str] = mapped_column(Text, default="[]")
    messaging_type: Mapped[str] = mapped_column(String(32), default="")
    tag: Mapped[str] = mapped_column(String(32), default="")
    error_code: Mapped[int] = mapped_column(Integer, default=0)
    error_subcode: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")
    # The certificate identity that asked for the send.
    sent_by: Mapped[str] = mapped_column(String(128), default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)


class MessageEdit(Base):
    """One edit of a message, kept even when it arrives before the message."""

    __tablename__ = "message_edits"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "event_id", name="uq_message_edits_event"),
        Index("ix_message_edits_mid", "platform", "page_id", "mid"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    mid: Mapped[str] = mapped_column(String(512))
    event_id: Mapped[str] = mapped_column(String(512))
    num_edit: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)


class Reaction(Base):
    """A person's latest reaction to a message (the newest event wins, whatever the order)."""

    __tablename__ = "reactions"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "mid", "user_id", name="uq_reactions_person"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    mid: Mapped[str] = mapped_column(String(512))
    user_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    reaction: Mapped[str] = mapped_column(String(32))
    emoji: Mapped[str] = mapped_column(String(64))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(512))


class MessageMark(Base):
    """A fact about a mid that may arrive before the message: delivered, read, deleted."""

    __tablename__ = "message_marks"

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    mid: Mapped[str] = mapped_column(String(512), primary_key=True)
    mark: Mapped[str] = mapped_column(String(16), primary_key=True)


class AccountCursor(Base):
    """The last change cursor handed out for an account."""

    __tablename__ = "account_cursors"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_cursor: Mapped[int] = mapped_column(BigInteger)


class Change(Base):
    """One entry of an account's change feed; cursors are gap-free and in commit order."""

    __tablename__ = "changes"
    __table_args__ = (UniqueConstraint("account_id", "cursor", name="uq_changes_cursor"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64))
    cursor: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    event_row_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    committed_at_ms: Mapped[int] = mapped_column(BigInteger)
    # For comment changes: the comment (or the thread, for a post's reactions).
    comment_row_id: Mapped[int | None] = mapped_column(ForeignKey("comments.id"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("comment_threads.id"))


class EventLog(Base):
    """The event log: every item received, in append order, with where it stands.

    An Ingest appends (`pending`); the apply stage claims pending entries for a lease,
    applies them and marks them `applied` (or `parked`, for a page not connected).
    The unique key on the event id is what makes ingest exactly-once.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "event_id", name="uq_events_event_id"),
        Index("ix_events_conversation", "conversation_id", "timestamp_ms"),
        Index(
            "ix_events_pending",
            "id",
            postgresql_where="state = 'pending'",
            sqlite_where="state = 'pending'",
        ),
        Index(
            "ix_events_parked",
            "platform",
            "page_id",
            "id",
            postgresql_where="state = 'parked'",
            sqlite_where="state = 'parked'",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    standby: Mapped[bool] = mapped_column(Boolean, default=False)
    raw_json: Mapped[str] = mapped_column(Text, default="")
    received_at_ms: Mapped[int] = mapped_column(BigInteger)
    # When the append committed (the ACK): the apply lag counts from here.
    stored_at_ms: Mapped[int] = mapped_column(BigInteger)
    # The normalized event without its raw JSON (kept above), serialized: what is applied.
    event: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # pending, applied or parked.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # A claim by an apply worker: another may take the entry once this has passed.
    lease_until_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    applied_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # The W3C traceparent of the Ingest that appended it: the apply batch links to it.
    trace_parent: Mapped[str] = mapped_column(String(64), default="")
    # Normalize the raw item again before applying it (an upgrade, `events reprocess`).
    renormalize: Mapped[bool] = mapped_column(Boolean, default=False)


class RouterPage(Base):
    """A page's account as subscriptions last told the router (RouteParked), or '' once it
    was disconnected or purged (PageDisconnected, PurgePage): its events are parked.

    Read in every apply transaction, so a move or a disconnect reaches every replica
    before its next apply; a page not here at all (connected before this table existed)
    is asked of subscriptions once and kept.
    """

    __tablename__ = "pages"

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    # The version of subscriptions' last notice taken (0: none carried one).
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class PurgedPage(Base):
    """A purge's tombstone: events of the page up to this Meta time are dropped at the
    append, so Meta redelivering a purged body stores nothing again."""

    __tablename__ = "purged_pages"

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    purged_at_ms: Mapped[int] = mapped_column(BigInteger)


class CommentThread(Base):
    """The comments of one post (Facebook) or piece of media (Instagram) of a page."""

    __tablename__ = "comment_threads"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "post_id", name="uq_comment_threads_post"),
        Index("ix_comment_threads_account_recent", "account_id", "last_activity_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    post_id: Mapped[str] = mapped_column(String(512))
    media_product_type: Mapped[str] = mapped_column(String(64), default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    # Meta time of the newest item of the thread.
    last_activity_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    comment_count: Mapped[int] = mapped_column(Integer, default=0)
    # Fence of the last batch that wrote the thread (guarantee 5, as for conversations).
    fence: Mapped[int] = mapped_column(BigInteger, default=0)


class Comment(Base):
    """One comment, folded from every item about it whatever their order."""

    __tablename__ = "comments"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "comment_id", name="uq_comments_comment"),
        Index("ix_comments_thread", "thread_id", "created_time_ms"),
        Index("ix_comments_author", "platform", "page_id", "author_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("comment_threads.id"))
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    comment_id: Mapped[str] = mapped_column(String(512))
    parent_id: Mapped[str] = mapped_column(String(512), default="")
    author_id: Mapped[str] = mapped_column(String(128), default="")
    author_name: Mapped[str] = mapped_column(Text, default="")
    # The newest edit's text (the original when never edited); empty once removed.
    text: Mapped[str] = mapped_column(Text, default="")
    original_text: Mapped[str] = mapped_column(Text, default="")
    created_time_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # (Meta time, event id) of the newest edit folded in; 0 when never edited.
    edited_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    edit_event_id: Mapped[str] = mapped_column(String(512), default="")
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    # (Meta time, event id) of the newest hide or unhide.
    hidden_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    hidden_event_id: Mapped[str] = mapped_column(String(512), default="")
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # The Page itself wrote it (a reply from Meta's inbox, or one sent through Pagewire).
    from_page: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only seen as a mention of the account (Instagram `mentions`).
    mention: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether its `add` came (an edit or hide seen first leaves a placeholder).
    seen_add: Mapped[bool] = mapped_column(Boolean, default=False)
    field: Mapped[str] = mapped_column(String(64), default="")
    media_product_type: Mapped[str] = mapped_column(String(64), default="")
    ad_id: Mapped[str] = mapped_column(String(512), default="")
    ad_title: Mapped[str] = mapped_column(Text, default="")
    attachment_url: Mapped[str] = mapped_column(Text, default="")
    # The certificate identity whose ReplyToComment wrote it, for the Page's own replies.
    sent_by: Mapped[str] = mapped_column(String(128), default="")
    stored_at_ms: Mapped[int] = mapped_column(BigInteger)


class CommentEdit(Base):
    """One edit of a comment, kept even when it arrives before the comment."""

    __tablename__ = "comment_edits"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "event_id", name="uq_comment_edits_event"),
        Index("ix_comment_edits_comment", "platform", "page_id", "comment_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    comment_id: Mapped[str] = mapped_column(String(512))
    event_id: Mapped[str] = mapped_column(String(512))
    text: Mapped[str] = mapped_column(Text)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)


class PostReaction(Base):
    """A person's newest reaction to a post (or to a comment on it)."""

    __tablename__ = "post_reactions"
    __table_args__ = (
        UniqueConstraint(
            "platform", "page_id", "post_id", "comment_id", "user_id", name="uq_post_reactions"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    post_id: Mapped[str] = mapped_column(String(512))
    # "" for a reaction on the post itself.
    comment_id: Mapped[str] = mapped_column(String(512), default="")
    user_id: Mapped[str] = mapped_column(String(128))
    user_name: Mapped[str] = mapped_column(Text, default="")
    reaction_type: Mapped[str] = mapped_column(String(32))
    # add, edit or remove: a removed reaction is kept (it may be newer than an add).
    verb: Mapped[str] = mapped_column(String(16))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(512))


class CommentAction(Base):
    """A reply or moderation of a comment, recorded before Graph is called (idempotency)."""

    __tablename__ = "comment_actions"
    __table_args__ = (
        UniqueConstraint("platform", "page_id", "idempotency_key", name="uq_comment_actions_key"),
        Index("ix_comment_actions_comment", "platform", "page_id", "comment_id", "action"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    page_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    comment_id: Mapped[str] = mapped_column(String(512))
    # reply, private_reply, hide, unhide, delete.
    action: Mapped[str] = mapped_column(String(16))
    request_hash: Mapped[str] = mapped_column(String(64))
    # PENDING (Graph being called), ACCEPTED, REJECTED or UNKNOWN.
    state: Mapped[str] = mapped_column(String(16))
    # What Graph returned: the new comment's id, or the private reply's mid.
    result_id: Mapped[str] = mapped_column(String(512), default="")
    error_code: Mapped[int] = mapped_column(Integer, default=0)
    error_subcode: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str] = mapped_column(Text, default="")
    sent_by: Mapped[str] = mapped_column(String(128), default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
