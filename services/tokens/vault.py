"""The token vault: stores, opens, rotates and audits page tokens; one transaction per call.

Plaintext exists only in the callers' stack frames and in the DecryptToken
response; everything that holds it masks its repr. Every put, decrypt, delete,
mark and key change writes an audit record — in the same transaction when it
succeeds (no change without its record, no token handed out unrecorded), in a
transaction of its own when it fails.

Which key seals new tokens: the key ring's `primary` until the first rotation;
from then on the primary recorded in the tokens schema (`key_ring_state`), so
every replica agrees whatever its copy of the key ring file says. Puts and
rewrap batches read it under a shared row lock and a rotation changes it under
an exclusive one, so once a rotation's switch has committed no replica seals
with the old key, and the rewrap that follows leaves no token behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import DataLoss, FailedPrecondition, NotFound, PagewireError
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.tokens import store
from services.tokens.keyring import KeyRing, KeyRingError, generate_keyring
from services.tokens.sealing import FORMAT_CURRENT, FORMAT_LEGACY, Cipher, Sealed

__all__ = [
    "Cipher",
    "Decrypted",
    "KeyRing",
    "KeyRingError",
    "Sealed",
    "TokenInfo",
    "TokenVault",
    "generate_keyring",
]

log = logging.getLogger("pagewire.tokens")

ACTIVE = "ACTIVE"
REAUTH_REQUIRED = "REAUTH_REQUIRED"
INTERNAL = "internal"  # the caller name when the vault is used in-process

PUT, DECRYPT, DELETE, MARK_INVALID = "PUT", "DECRYPT", "DELETE", "MARK_INVALID"
ROTATE, REMOVE_KEY = "ROTATE", "REMOVE_KEY"
OK = "OK"

DEFAULT_BATCH = 200
MAX_BATCH = 5000
_REWRAP_PASSES = 3  # a pass can miss rows a concurrent put re-sealed behind it; rarely twice
_FAILED_PAGES_SHOWN = 20


@dataclass(frozen=True)
class Decrypted:
    """A decrypted token and its status; the token is masked in repr."""

    token: Secret
    status: str


@dataclass(frozen=True)
class TokenInfo:
    """Everything known about a stored token except the token."""

    status: str
    reason: str
    key_id: str
    graph_code: int
    graph_subcode: int
    created_at_ms: int
    updated_at_ms: int
    expires_at_ms: int
    format_version: int = FORMAT_CURRENT


@dataclass(frozen=True)
class Rotation:
    """What a rotation did."""

    previous_primary: str
    primary: str
    rewrapped: int
    failed: int
    failed_pages: list[tuple[str, str]] = field(default_factory=list)
    key_ring_file_updated: bool = False


@dataclass(frozen=True)
class KeyInfo:
    """One key id: in the ring or not, primary or not, how many tokens it seals."""

    key_id: str
    primary: bool
    in_key_ring: bool
    tokens: int
    legacy_tokens: int
    retired: bool
    retired_at_ms: int


@dataclass(frozen=True)
class KeyReport:
    primary: str
    keys: list[KeyInfo]


@dataclass(frozen=True)
class Removal:
    key_ring_file_updated: bool
    note: str


@dataclass(frozen=True)
class AuditItem:
    id: int
    at_ms: int
    caller: str
    action: str
    platform: str
    page_id: str
    outcome: str
    detail: str
    on_behalf_of: str = ""


@dataclass(frozen=True)
class StartupReport:
    """What the composition root checks before serving."""

    primary: str
    recorded_primary: str | None
    unknown_key_ids: list[str]
    retired_in_ring: list[str]


class TokenVault:
    """Stores, opens, forgets, flags, rotates and audits page tokens."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: Cipher) -> None:
        self._sessions = sessions
        self._cipher = cipher

    # --- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    @asynccontextmanager
    async def _audited(
        self, caller: str, action: str, platform: str = "", page_id: str = ""
    ) -> AsyncIterator[None]:
        """Records a failure of the block (its status and safe message), then re-raises."""
        try:
            yield
        except PagewireError as exc:
            await self.record(caller, action, platform, page_id, exc.status, str(exc))
            raise

    async def _audit(
        self,
        session: AsyncSession,
        caller: str,
        action: str,
        platform: str = "",
        page_id: str = "",
        detail: str = "",
        on_behalf_of: str = "",
    ) -> None:
        await store.add_audit(
            session,
            caller=caller,
            action=action,
            platform=platform,
            page_id=page_id,
            outcome=OK,
            detail=detail,
            now=now_ms(),
            on_behalf_of=on_behalf_of,
        )

    async def record(
        self,
        caller: str,
        action: str,
        platform: str,
        page_id: str,
        outcome: str,
        detail: str = "",
    ) -> None:
        """An audit record in a transaction of its own (refusals, failures); never raises."""
        try:
            async with self._transaction() as session:
                await store.add_audit(
                    session,
                    caller=caller,
                    action=action,
                    platform=platform,
                    page_id=page_id,
                    outcome=outcome,
                    detail=detail,
                    now=now_ms(),
                )
        except PagewireError as exc:
            log.warning(
                "audit record not written",
                extra={"action": action, "outcome": outcome, "error": str(exc)},
            )

    async def _primary(self, session: AsyncSession, lock: str | None = None) -> str:
        recorded = await store.primary_key_id(session, lock=lock)
        return recorded or self._cipher.primary_key_id

    # --- tokens ---------------------------------------------------------------------------

    async def put(
        self,
        platform: str,
        page_id: str,
        token: Secret,
        expires_at_ms: int,
        *,
        caller: str = INTERNAL,
    ) -> str:
        """Encrypts and stores (or replaces) the token, ACTIVE again; returns the key id."""
        async with self._audited(caller, PUT, platform, page_id):
            async with self._transaction() as session:
                primary = await self._primary(session, lock="share")
                sealed = self._cipher.seal(platform, page_id, token, primary)
                await store.upsert_token(
                    session,
                    platform=platform,
                    page_id=page_id,
                    key_id=sealed.key_id,
                    format=sealed.format,
                    sealed=sealed.blob,
                    expires_at_ms=expires_at_ms,
                    now=now_ms(),
                )
                await self._audit(session, caller, PUT, platform, page_id, f"key {sealed.key_id}")
        return sealed.key_id

    async def decrypt(
        self, platform: str, page_id: str, *, caller: str = INTERNAL, on_behalf_of: str = ""
    ) -> Decrypted:
        """The token in plaintext (masked in repr); recorded before it is returned, with the
        identity whose call made `caller` ask for it (a sender's, for a reply)."""
        async with self._audited(caller, DECRYPT, platform, page_id):
            async with self._transaction() as session:
                row = await store.get_token(session, platform, page_id)
                if row is None:
                    raise NotFound(f"no token stored for {platform} page {page_id}")
                token = self._cipher.open(
                    platform, page_id, row.sealed, key_id=row.key_id, format=row.format
                )
                status = row.status
                await self._audit(
                    session,
                    caller,
                    DECRYPT,
                    platform,
                    page_id,
                    f"key {row.key_id}",
                    on_behalf_of=on_behalf_of,
                )
        return Decrypted(token, status)

    async def delete(self, platform: str, page_id: str, *, caller: str = INTERNAL) -> bool:
        async with self._audited(caller, DELETE, platform, page_id):
            async with self._transaction() as session:
                deleted = await store.delete_token(session, platform, page_id)
                detail = "deleted" if deleted else "nothing stored"
                await self._audit(session, caller, DELETE, platform, page_id, detail)
        return deleted

    async def status(self, platform: str, page_id: str) -> TokenInfo:
        async with self._transaction() as session:
            row = await store.get_token(session, platform, page_id)
        if row is None:
            raise NotFound(f"no token stored for {platform} page {page_id}")
        return TokenInfo(
            status=row.status,
            reason=row.reason,
            key_id=row.key_id,
            graph_code=row.graph_code,
            graph_subcode=row.graph_subcode,
            created_at_ms=row.created_at_ms,
            updated_at_ms=row.updated_at_ms,
            expires_at_ms=row.expires_at_ms,
            format_version=row.format,
        )

    async def mark_invalid(
        self,
        platform: str,
        page_id: str,
        reason: str,
        graph_code: int,
        graph_subcode: int,
        *,
        caller: str = INTERNAL,
    ) -> str:
        """Flags the token REAUTH_REQUIRED; a later put makes it ACTIVE again."""
        async with self._audited(caller, MARK_INVALID, platform, page_id):
            async with self._transaction() as session:
                found = await store.mark_invalid(
                    session,
                    platform,
                    page_id,
                    reason=reason,
                    graph_code=graph_code,
                    graph_subcode=graph_subcode,
                    now=now_ms(),
                )
                if not found:
                    raise NotFound(f"no token stored for {platform} page {page_id}")
                detail = f"graph {graph_code}/{graph_subcode}: {reason}"
                await self._audit(session, caller, MARK_INVALID, platform, page_id, detail)
        return REAUTH_REQUIRED

    # --- keys -----------------------------------------------------------------------------

    async def rotate(
        self,
        new_key_id: str = "",
        *,
        generate: bool = False,
        batch_size: int = DEFAULT_BATCH,
        caller: str = INTERNAL,
    ) -> Rotation:
        """Makes `new_key_id` (or a generated key) the primary, then rewraps every token.

        The switch commits first, so puts seal with the new key from then on; the
        rewrap then walks the rows still on another key (or in the legacy format)
        in batches of `batch_size`, one short transaction each, while every other
        call keeps being served. Calling it again with the same key resumes an
        interrupted rewrap.
        """
        async with self._audited(caller, ROTATE):
            async with self._transaction() as session:
                before = await self._primary(session)
            file_updated = False
            if generate:
                target = self._cipher.generate_key()
                file_updated = True
            else:
                target = new_key_id
                self._cipher.reload(force=True)  # the operator just added it to the Secret
                if not self._cipher.knows(target):
                    raise FailedPrecondition(
                        f"key {target!r} is not in the key ring: add it to the key ring file"
                        " (the Secret) first — the service re-reads the file — then rotate"
                    )
            async with self._transaction() as session:
                # Read again under the lock: another rotation may have committed meanwhile.
                previous = await store.primary_key_id(session, lock="update") or before
                if target in await store.retired(session):
                    raise FailedPrecondition(
                        f"key {target!r} was retired and cannot become the primary again"
                    )
                await store.set_primary(session, target, caller, now_ms())
                # Recorded with the switch itself: an interrupted rewrap still left a trace.
                await self._audit(
                    session, caller, ROTATE, detail=f"primary {previous} -> {target}; rewrapping"
                )
            log.info("primary key set", extra={"previous": previous, "primary": target})
            rewrapped, failed = await self._rewrap_all(max(1, min(batch_size, MAX_BATCH)))
        detail = f"primary {previous} -> {target}; rewrapped {rewrapped}; failed {len(failed)}"
        await self.record(caller, ROTATE, "", "", OK, detail)
        log.info(
            "rotation finished",
            extra={"primary": target, "rewrapped": rewrapped, "failed": len(failed)},
        )
        return Rotation(
            previous_primary=previous,
            primary=target,
            rewrapped=rewrapped,
            failed=len(failed),
            failed_pages=sorted(failed)[:_FAILED_PAGES_SHOWN],
            key_ring_file_updated=file_updated,
        )

    async def _rewrap_all(self, batch_size: int) -> tuple[int, set[tuple[str, str]]]:
        rewrapped = 0
        failed: set[tuple[str, str]] = set()
        for _ in range(_REWRAP_PASSES):
            after: tuple[str, str] | None = None
            while True:
                count, after, batch_failed = await self._rewrap_batch(after, batch_size)
                rewrapped += count
                failed |= batch_failed
                if after is None:
                    break
            async with self._transaction() as session:
                primary = await self._primary(session)
                remaining = await store.count_stale(session, primary, FORMAT_CURRENT)
            if remaining <= len(failed):
                break
        return rewrapped, failed

    async def _rewrap_batch(
        self, after: tuple[str, str] | None, batch_size: int
    ) -> tuple[int, tuple[str, str] | None, set[tuple[str, str]]]:
        """One transaction: the next stale rows, locked, opened and sealed with the primary.

        Returns (rewrapped, where the next batch starts or None at the end, pages that failed).
        """
        failed: set[tuple[str, str]] = set()
        async with self._transaction() as session:
            primary = await self._primary(session, lock="share")
            if not self._cipher.knows(primary):
                raise FailedPrecondition(
                    f"the primary key {primary!r} is not in this replica's key ring"
                )
            rows = await store.stale_batch(
                session,
                primary=primary,
                current_format=FORMAT_CURRENT,
                after=after,
                limit=batch_size,
            )
            if not rows:
                return 0, None, failed
            updates: list[dict[str, object]] = []
            for row in rows:
                try:
                    token = self._cipher.open(
                        row.platform, row.page_id, row.sealed, key_id=row.key_id, format=row.format
                    )
                    sealed = self._cipher.seal(row.platform, row.page_id, token, primary)
                except (DataLoss, FailedPrecondition) as exc:
                    log.error(
                        "token not rewrapped",
                        extra={"platform": row.platform, "page_id": row.page_id, "error": str(exc)},
                    )
                    failed.add((row.platform, row.page_id))
                    continue
                updates.append(
                    {
                        "platform": row.platform,
                        "page_id": row.page_id,
                        "key_id": sealed.key_id,
                        "format": sealed.format,
                        "sealed": sealed.blob,
                    }
                )
            await store.rewrap(session, updates)
        return len(updates), (rows[-1].platform, rows[-1].page_id), failed

    async def keys(self) -> KeyReport:
        """Every key id of the ring or of a stored token, with counts: when may a key go?"""
        self._cipher.reload(force=True)
        async with self._transaction() as session:
            counts = await store.usage(session)
            retired = await store.retired(session)
            primary = await self._primary(session)
        ring = self._cipher.keyring
        key_ids = set(ring.keys) | {key_id for key_id, _ in counts} | set(retired) | {primary}
        infos = []
        for key_id in sorted(key_ids):
            tokens = sum(n for (k, _), n in counts.items() if k == key_id)
            infos.append(
                KeyInfo(
                    key_id=key_id,
                    primary=key_id == primary,
                    in_key_ring=key_id in ring.keys,
                    tokens=tokens,
                    legacy_tokens=counts.get((key_id, FORMAT_LEGACY), 0),
                    retired=key_id in retired,
                    retired_at_ms=retired.get(key_id, 0),
                )
            )
        return KeyReport(primary, infos)

    async def remove_key(self, key_id: str, *, caller: str = INTERNAL) -> Removal:
        """Retires a key nothing uses; drops it from the key ring file when that is writable."""
        async with self._audited(caller, REMOVE_KEY):
            async with self._transaction() as session:
                # The exclusive lock orders this against a rotation that would pick the key.
                primary = await self._primary(session, lock="update")
                if key_id == primary:
                    raise FailedPrecondition(
                        f"key {key_id!r} is the primary key; rotate to another key first"
                    )
                in_use = await store.count_with_key(session, key_id)
                if in_use:
                    raise FailedPrecondition(
                        f"key {key_id!r} still seals {in_use} stored token(s); run"
                        " `pagewire tokens rotate` until `pagewire tokens keys` shows 0"
                    )
                retired = await store.retired(session)
                if key_id not in self._cipher.keyring.keys and key_id not in retired:
                    raise NotFound(f"key {key_id!r} is not in the key ring")
                await store.retire(session, key_id, caller, now_ms())
                await self._audit(session, caller, REMOVE_KEY, detail=f"key {key_id} retired")
        file_updated = self._cipher.drop_key(key_id, primary)
        if file_updated:
            note = f"key {key_id} removed from the key ring file"
        else:
            note = (
                f"no stored token uses key {key_id}: delete it from the key ring"
                " (the Secret behind PAGEWIRE_KEYRING_FILE, or PAGEWIRE_KEYRING)"
            )
        log.info("key retired", extra={"key_id": key_id, "key_ring_file_updated": file_updated})
        return Removal(file_updated, note)

    async def audit(
        self, *, platform: str = "", page_id: str = "", before_id: int = 0, limit: int = 50
    ) -> list[AuditItem]:
        async with self._transaction() as session:
            records = await store.list_audit(
                session, platform=platform, page_id=page_id, before_id=before_id, limit=limit
            )
        return [
            AuditItem(
                r.id,
                r.at_ms,
                r.caller,
                r.action,
                r.platform,
                r.page_id,
                r.outcome,
                r.detail,
                r.on_behalf_of,
            )
            for r in records
        ]

    # --- start-up -------------------------------------------------------------------------

    async def unknown_key_ids(self) -> list[str]:
        """Key ids that seal stored tokens but are missing from the key ring."""
        async with self._transaction() as session:
            in_use = await store.key_ids_in_use(session)
        return [key_id for key_id in in_use if not self._cipher.knows(key_id)]

    async def startup_report(self) -> StartupReport:
        """The primary in force, stored key ids the ring lacks, retired keys still in it."""
        async with self._transaction() as session:
            recorded = await store.primary_key_id(session)
            in_use = await store.key_ids_in_use(session)
            retired = await store.retired(session)
        ring = self._cipher.keyring
        return StartupReport(
            primary=recorded or ring.primary,
            recorded_primary=recorded,
            unknown_key_ids=[k for k in in_use if k not in ring.keys],
            retired_in_ring=sorted(k for k in retired if k in ring.keys),
        )
