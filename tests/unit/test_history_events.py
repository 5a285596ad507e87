"""Graph's Conversations API messages as events: the same ids and shapes a webhook gives."""

from __future__ import annotations

import httpx

from pagewire.contract import Platform
from pagewire.graph.ratelimit import app_usage_hold_s
from pagewire.history import GAP_REPAIR, HISTORY, marker_event, message_event, person_of
from pagewire.normalize import normalize_envelope
from pagewire.proto import events_pb2

PAGE = "109384756201938"
USER = "6254519281234567"


def graph_message(**fields: object) -> dict:  # type: ignore[type-arg]
    item = {
        "id": "m_abc123",
        "created_time": "2026-05-07T14:10:45+0000",
        "from": {"name": "Ana Morales", "email": f"{USER}@facebook.com", "id": USER},
        "to": {"data": [{"name": "Acme Shoes", "id": PAGE}]},
        "message": "¿Lo tienen en talla M? 🙂",
    }
    item.update(fields)
    return item


def test_an_inbound_message_gets_the_id_its_webhook_gets() -> None:
    event = message_event(
        Platform.FACEBOOK, PAGE, graph_message(), origin=HISTORY, received_at_ms=1
    )
    assert event is not None
    webhook = {
        "object": "page",
        "entry": [
            {
                "id": PAGE,
                "time": 1778163045000,
                "messaging": [
                    {
                        "sender": {"id": USER},
                        "recipient": {"id": PAGE},
                        "timestamp": 1778163045000,
                        "message": {"mid": "m_abc123", "text": "¿Lo tienen en talla M? 🙂"},
                    }
                ],
            }
        ],
    }
    (delivered,) = normalize_envelope(webhook, received_at_ms=1)
    assert event.id == delivered.id == "m_abc123"
    assert (event.user_id, event.direction) == (delivered.user_id, delivered.direction)
    assert event.timestamp_ms == delivered.timestamp_ms == 1778163045000
    assert event.message.text == delivered.message.text
    assert event.origin == events_pb2.ORIGIN_HISTORY and delivered.origin == 0


def test_the_pages_own_message_is_outbound_to_the_person_like_an_echo() -> None:
    item = graph_message(
        **{"from": {"name": "Acme Shoes", "id": PAGE}, "to": {"data": [{"id": USER}]}}
    )
    event = message_event(Platform.FACEBOOK, PAGE, item, origin=GAP_REPAIR, received_at_ms=1)
    assert event is not None
    assert event.direction == events_pb2.OUTBOUND and event.user_id == USER
    assert event.message.is_echo and event.origin == events_pb2.ORIGIN_GAP_REPAIR


def test_attachments_and_stickers_are_kept() -> None:
    item = graph_message(
        message="",
        attachments={
            "data": [
                {
                    "id": "1",
                    "mime_type": "image/jpeg",
                    "name": "a.jpg",
                    "image_data": {"url": "https://cdn.example/a.jpg"},
                },
                {"id": "2", "mime_type": "video/mp4", "video_data": {"url": "https://v/b.mp4"}},
                {
                    "id": "3",
                    "mime_type": "application/pdf",
                    "name": "c.pdf",
                    "file_url": "https://f/c.pdf",
                },
            ]
        },
        sticker="https://cdn.example/sticker.png",
    )
    event = message_event(Platform.FACEBOOK, PAGE, item, origin=HISTORY, received_at_ms=1)
    assert event is not None
    assert [(a.type, a.url) for a in event.message.attachments] == [
        ("image", "https://cdn.example/a.jpg"),
        ("video", "https://v/b.mp4"),
        ("file", "https://f/c.pdf"),
        ("sticker", "https://cdn.example/sticker.png"),
    ]
    assert event.message.attachments[0].title == "a.jpg"


def test_a_message_without_id_or_time_is_not_imported() -> None:
    for item in (graph_message(id=""), graph_message(created_time="yesterday")):
        assert (
            message_event(Platform.FACEBOOK, PAGE, item, origin=HISTORY, received_at_ms=1) is None
        )


def test_the_conversations_person_fills_in_what_the_message_leaves_out() -> None:
    item = graph_message(**{"from": {"id": PAGE}, "to": {"data": []}})
    event = message_event(
        Platform.FACEBOOK, PAGE, item, origin=HISTORY, received_at_ms=1, user_id=USER
    )
    assert event is not None and event.user_id == USER


def test_a_nul_in_the_text_cannot_make_the_router_refuse_it() -> None:
    event = message_event(
        Platform.FACEBOOK, PAGE, graph_message(message="a\x00b"), origin=HISTORY, received_at_ms=1
    )
    assert event is not None and event.message.text == "a\ufffdb"


def test_person_of_skips_the_page_and_reads_instagram_usernames() -> None:
    facebook = [{"name": "Acme Shoes", "id": PAGE}, {"name": "Ana Morales", "id": USER}]
    assert person_of(facebook, PAGE) == (USER, "Ana Morales")
    instagram = [{"username": "acme.shoes", "id": "1784"}, {"username": "ana.m", "id": "99"}]
    assert person_of(instagram, "1784") == ("99", "ana.m")
    assert person_of([{"id": PAGE}], PAGE) == ("", "")


def test_the_marker_id_changes_only_with_the_newest_message() -> None:
    def marker(newest: str) -> events_pb2.Event:
        return marker_event(
            Platform.FACEBOOK,
            PAGE,
            "t_1",
            USER,
            "Ana",
            messages=3,
            newest=(newest,),
            updated_time_ms=5,
            received_at_ms=9,
        )

    assert marker("m_3").id == marker("m_3").id
    assert marker("m_3").id != marker("m_4").id
    event = marker("m_3")
    assert event.WhichOneof("kind") == "history" and event.origin == events_pb2.ORIGIN_HISTORY
    assert event.history.conversation_id == "t_1" and event.history.user_name == "Ana"


def test_app_usage_near_the_top_slows_every_call() -> None:
    def hold(usage: str | None) -> float:
        headers = {"X-App-Usage": usage} if usage is not None else {}
        return app_usage_hold_s(httpx.Response(200, headers=headers))

    assert hold(None) == 0
    assert hold('{"call_count":28,"total_time":25,"total_cputime":25}') == 0
    assert hold('{"call_count":91,"total_time":25,"total_cputime":25}') == 5
    assert hold('{"call_count":28,"total_time":100,"total_cputime":25}') == 60
    assert hold("not json") == 0
