"""Live trades from Kraken's WebSocket API v2 `trade` channel, with reconnect and backoff.

Kraken sends, per subscribed symbol, a snapshot of recent trades and then updates::

    {"channel": "trade", "type": "update", "data": [{"symbol": "BTC/USD", "side": "buy",
      "price": 64000.1, "qty": 0.01, "ord_type": "market", "trade_id": 123,
      "timestamp": "2026-11-22T10:00:00.123456Z"}]}

Heartbeats, status and subscription acknowledgements carry no trades and are skipped.

>>> list(trades_from_message('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD",'
...     '"side":"sell","price":10.5,"qty":2,"trade_id":7,"timestamp":"1970-01-01T00:01:00Z"}]}'))
[Trade(symbol='BTC/USD', trade_id='7', price=10.5, size=2.0, side='sell', ts=60.0)]
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence

from rtml.records import BadRecord, Trade, decode_object, parse_trade

log = logging.getLogger(__name__)

KRAKEN_WS_URL = "wss://ws.kraken.com/v2"


def subscribe_message(symbols: Sequence[str], snapshot: bool = False) -> str:
    return json.dumps(
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": list(symbols), "snapshot": snapshot},
        }
    )


def trades_from_message(raw: str | bytes) -> Iterator[Trade | BadRecord]:
    """The trades in one WebSocket message; a malformed trade, or a message that is not a JSON
    object, is yielded as BadRecord. The message is decoded by the one guard every consumer
    uses (`decode_object`: size, depth and integers bounded), so no message stops the feed.

    >>> [b.kind for b in trades_from_message('{"channel": "trade", "data": 7}')]
    ['wrong_type']
    >>> [b.kind for b in trades_from_message("[" * 5_000 + "]" * 5_000)]
    ['too_deep']
    """
    try:
        message = decode_object(raw)
    except BadRecord as exc:
        yield BadRecord(exc.kind, f"websocket message: {exc}")
        return
    if message.get("channel") != "trade":
        return
    data = message.get("data") or []
    if not isinstance(data, list):
        yield BadRecord("wrong_type", f"trade data is not a list: {data!r:.80}")
        return
    for item in data:
        if not isinstance(item, dict):
            yield BadRecord("wrong_type", f"trade entry is not an object: {item!r:.80}")
            continue
        record = {
            "symbol": item.get("symbol"),
            "trade_id": item.get("trade_id"),
            "price": item.get("price"),
            "size": item.get("qty"),
            "side": item.get("side"),
            "ts": item.get("timestamp"),
        }
        try:
            yield parse_trade({k: v for k, v in record.items() if v is not None})
        except BadRecord as exc:
            yield exc


def stream(
    symbols: Sequence[str],
    url: str = KRAKEN_WS_URL,
    stop: threading.Event | None = None,
    max_backoff_s: float = 30.0,
    open_timeout_s: float = 10.0,
) -> Iterator[Trade | BadRecord]:
    """Trades forever (until `stop`), reconnecting with exponential backoff on any failure."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    stop = stop or threading.Event()
    backoff = 0.5
    while not stop.is_set():
        try:
            with connect(url, open_timeout=open_timeout_s) as ws:
                ws.send(subscribe_message(symbols))
                log.info("subscribed to %s trades at %s", ",".join(symbols), url)
                backoff = 0.5
                while not stop.is_set():
                    try:
                        raw = ws.recv(timeout=1.0)
                    except TimeoutError:
                        continue
                    yield from trades_from_message(raw)
        except (OSError, WebSocketException, TimeoutError) as exc:
            if stop.is_set():
                return
            log.warning("trade feed %s lost (%s); reconnecting in %.1f s", url, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
