"""What a log may show of a webhook body: ids, kinds and times, never what a person wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.gateway.redaction import redacted, redacted_json

PLANTED = "my card number is 4111 1111 1111 1111"


def test_ids_kinds_and_times_are_kept_and_everything_else_redacted() -> None:
    body = {
        "object": "page",
        "entry": [
            {
                "id": "109384756201938",
                "time": 1778163045612,
                "messaging": [
                    {
                        "sender": {"id": "7294015836620194"},
                        "recipient": {"id": "109384756201938"},
                        "timestamp": 1778163045000,
                        "message": {
                            "mid": "m_1",
                            "text": PLANTED,
                            "quick_reply": {"payload": PLANTED},
                            "attachments": [{"type": "image", "payload": {"url": PLANTED}}],
                            "reply_to": {"mid": "m_0"},
                            "app_id": "263902037430900",
                            "is_echo": True,
                        },
                    },
                    {"delivery": {"mids": ["m_1", "m_2"], "watermark": 1778163045000}},
                ],
                "changes": [
                    {
                        "field": "feed",
                        "value": {
                            "from": {"id": "6183920457712836", "name": PLANTED},
                            "item": "comment",
                            "verb": "add",
                            "message": PLANTED,
                            "post_id": "1_2",
                            "created_time": "2026-05-07T14:10:45+0000",
                        },
                    }
                ],
            }
        ],
    }
    out: Any = redacted(body)
    text = json.dumps(out)
    assert PLANTED not in text and "4111" not in text
    entry = out["entry"][0]
    message = entry["messaging"][0]["message"]
    assert message["mid"] == "m_1" and message["reply_to"] == {"mid": "m_0"}
    assert message["app_id"] == "263902037430900" and message["is_echo"] is True
    assert message["text"] == f"<redacted: {len(PLANTED)} chars>"
    assert message["attachments"][0]["type"] == "image"
    assert entry["messaging"][0]["sender"] == {"id": "7294015836620194"}
    assert entry["messaging"][1]["delivery"]["mids"] == ["m_1", "m_2"]
    value = entry["changes"][0]["value"]
    assert (entry["changes"][0]["field"], value["item"], value["verb"]) == (
        "feed",
        "comment",
        "add",
    )
    assert value["post_id"] == "1_2" and value["created_time"] == "2026-05-07T14:10:45+0000"
    assert value["from"] == {"id": "6183920457712836", "name": f"<redacted: {len(PLANTED)} chars>"}
    assert out["object"] == "page" and entry["time"] == 1778163045612


def test_no_fixture_text_survives(fixtures_dir: Path) -> None:
    for path in sorted((fixtures_dir / "meta").glob("[0-9]*.json")):
        body = json.loads(path.read_bytes())
        line = redacted_json(body, limit=10**6)
        for item in (i for e in body["entry"] for i in e.get("messaging", [])):
            text = item.get("message", {}).get("text")
            if isinstance(text, str) and len(text) > 3:
                assert text not in line and json.dumps(text)[1:-1] not in line, path.name


def test_the_json_is_compact_and_cut_at_the_limit() -> None:
    body = {"object": "page", "entry": [{"id": str(n)} for n in range(1000)]}
    line = redacted_json(body, limit=200)
    assert len(line) == 201 and line.endswith("…")
    assert redacted_json({"id": "1"}) == '{"id":"1"}'
