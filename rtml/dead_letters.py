"""Dead letters: what a rejected record becomes on its DLQ, built the same way every time."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from rtml.kafka import Sink, dlq, encode, send

DLQ_RAW_BYTES = 16 * 1024
"""How much of a rejected value its dead-letter record keeps (JSON escaping may double it)."""


DLQ_KEY_BYTES = 1024
"""How much of a rejected record's key its dead letter keeps: a key is the producer's to
choose, and one of a megabyte would make the dead letter too large for the broker."""


REPLAY_HEADER = "rtml.replay-of"
"""The header `rtml dlq replay` puts on a record it brings back: the dead letter it came
from. A record rejected again keeps it in its new letter (`replay_of`), so a replay does not
bring its own re-rejections back."""


def letter(
    reason: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    origin: str = "",
    replay_of: str | None = None,
) -> tuple[bytes | None, bytes]:
    """The dead letter of a rejected record: (key, value), the same bytes for the same record
    and reason, so a replay can tell a letter it already sent.

    The letter carries the first `DLQ_RAW_BYTES` of the raw value (and its full size), so it
    always fits the broker's message limit, however large or escape-heavy the original. A
    value that is not UTF-8 is kept exactly as well (`raw_base64`), for `rtml dlq replay`.
    The key is kept up to `DLQ_KEY_BYTES`; a longer one is marked cut (`key_truncated`), and
    a record that had none says so (`key_null`) and is keyed by the partition it came from
    (`origin` up to the `@`), so the dead letters of one partition stay in order.

    >>> import orjson
    >>> key, value = letter("too_large: ...", b'"' * 600_000, key=b"k" * 2000, origin="t[0]@7")
    >>> sent = orjson.loads(value)
    >>> len(sent["raw"]), sent["raw_bytes"], sent["raw_truncated"], len(key), sent["key_bytes"]
    (16384, 600000, True, 1024, 2000)
    >>> key, value = letter("not_json: x", b"{", origin="t[3]@7")
    >>> key, orjson.loads(value)["key_null"]
    (b't[3]', True)
    """
    data = value or b""
    head = data[:DLQ_RAW_BYTES]
    record: dict[str, Any] = {
        "reason": reason[:1000],
        "origin": origin,
        "raw": head.decode("utf-8", errors="replace"),
        "raw_bytes": len(data),
        "raw_truncated": len(data) > DLQ_RAW_BYTES,
    }
    if len(data) <= DLQ_RAW_BYTES:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:  # `raw` is lossy for people; this is the exact value
            record["raw_base64"] = base64.b64encode(data).decode()
    if key is None:
        record["key_null"] = True
        key = origin.rsplit("@", 1)[0].encode() if origin else None
    elif len(key) > DLQ_KEY_BYTES:
        record["key_bytes"] = len(key)
        record["key_truncated"] = True
        key = key[:DLQ_KEY_BYTES]
    if replay_of:
        record["replay_of"] = replay_of[:200]
    return key, encode(record)


def dead_letter(
    producer: Sink,
    topic: str,
    reason: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    origin: str = "",
    replay_of: str | None = None,
) -> None:
    """Send a rejected record to `topic`'s DLQ as its `letter`: its reason, where it came from,
    a bounded copy of its value.

    >>> import orjson
    >>> class Sink:
    ...     def produce(self, topic, key, value): self.sent = orjson.loads(value)
    >>> sink = Sink()
    >>> dead_letter(sink, "t", "not_positive: ...", b'{"price": 0}', key=b"A", origin="t[0]@7")
    >>> sink.sent["reason"], sink.sent["origin"]
    ('not_positive: ...', 't[0]@7')
    """
    key, value = letter(reason, value, key=key, origin=origin, replay_of=replay_of)
    send(producer, dlq(topic), value, key=key)


def replay_of(headers: Any) -> str | None:
    """The dead letter a record was replayed from (its `REPLAY_HEADER`), if any.

    >>> replay_of([("rtml.replay-of", b"trades.dlq[0]@4")]), replay_of(None)
    ('trades.dlq[0]@4', None)
    """
    for name, header in headers if isinstance(headers, list) else []:
        if name == REPLAY_HEADER and isinstance(header, bytes):
            return header.decode(errors="replace")
    return None


def replay_value(dead: Mapping[str, Any]) -> bytes | None:
    """The exact value a dead-letter record was made from, or None when only a truncated copy
    was kept.

    >>> import orjson
    >>> class Sink:
    ...     def produce(self, topic, key, value): self.sent = orjson.loads(value)
    >>> sink = Sink()
    >>> dead_letter(sink, "t", "not_json: ...", b"\\xff\\xfe{", origin="t[0]@7")
    >>> sink.sent["raw"], replay_value(sink.sent)
    ('\ufffd\ufffd{', b'\\xff\\xfe{')
    """
    if dead.get("raw_truncated"):
        return None
    if "raw_base64" in dead:
        try:
            return base64.b64decode(str(dead["raw_base64"]), validate=True)
        except ValueError:  # binascii.Error: not a copy rtml wrote
            return None
    return str(dead.get("raw", "")).encode()
