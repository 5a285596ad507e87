"""A user's message and the Page's echo of a reply take the same conversation lock."""

from __future__ import annotations

import json
from pathlib import Path

from pagewire.normalize import normalize_envelope
from services.router.keys import key_of as conversation_key
from services.router.keys import lock_name


def events_of(fixtures_dir: Path, name: str):  # type: ignore[no-untyped-def]
    return normalize_envelope(json.loads((fixtures_dir / "meta" / name).read_bytes()))


def test_echo_and_inbound_share_the_lock(fixtures_dir: Path) -> None:
    (inbound,) = events_of(fixtures_dir, "01_text_message.json")
    (echo,) = events_of(fixtures_dir, "03_echo_from_our_app.json")
    (inbox_echo,) = events_of(fixtures_dir, "04_echo_page_inbox_no_app_id.json")
    assert echo.message.is_echo and not inbound.message.is_echo
    assert conversation_key(inbound) == conversation_key(echo) == conversation_key(inbox_echo)
    assert lock_name(conversation_key(echo)) == "facebook:109384756201938:7294015836620194"


def test_instagram_echo_and_inbound_share_the_lock(fixtures_dir: Path) -> None:
    (inbound,) = events_of(fixtures_dir, "12_instagram_text.json")
    (echo,) = events_of(fixtures_dir, "13_instagram_echo.json")
    assert lock_name(conversation_key(inbound)) == lock_name(conversation_key(echo))
    assert lock_name(conversation_key(echo)).startswith("instagram:17841405822304914:")


def test_different_users_and_platforms_do_not_share(fixtures_dir: Path) -> None:
    batch = events_of(fixtures_dir, "02_batch_two_pages_two_messages.json")
    assert len({lock_name(conversation_key(e)) for e in batch}) == 4
