"""Sources to Kafka (`rtml feed`) and sources straight to the offline store (`rtml backfill`)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tqdm import tqdm

from rtml import feature_store as fs
from rtml.dead_letters import dead_letter
from rtml.errors import ConfigError
from rtml.kafka import encode, send
from rtml.records import BadRecord, FeatureRow, Trade
from rtml.settings import Settings

from .processor import FeatureProcessor, Outputs
from .sink import FeatureSink, PipelineStats

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)


def publish(
    producer: Producer,
    topic: str,
    trades: Iterable[Trade | BadRecord],
    stop: threading.Event | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> PipelineStats:
    """Produce trades to `topic` keyed by symbol; bad source records go to its DLQ."""
    stats = PipelineStats()
    bar = tqdm(total=limit, unit="trade", disable=not progress, desc="feed")
    for item in trades:
        if stop is not None and stop.is_set():
            break
        if isinstance(item, BadRecord):
            stats.rejected[item.kind] += 1
            dead_letter(producer, topic, str(item), None, origin="source")
        else:
            # a replay outruns any broker: a full queue waits for deliveries (send)
            send(producer, topic, encode(item.to_json()), item.symbol.encode())
            stats.trades += 1
            bar.update()
        producer.poll(0)
        if limit is not None and stats.trades >= limit:
            break
    bar.close()
    producer.flush(30)
    return stats


def _not_configured(symbol: str, unknown: dict[str, None]) -> BadRecord:
    """A backfill's `unknown_symbol`; the first few such symbols are kept in `unknown`."""
    if len(unknown) < NAMED_UNKNOWN:
        unknown[symbol[:60]] = None
    reason = "is not in RTML_SYMBOLS (or RTML_SHARDS); add it to backfill it"
    return BadRecord("unknown_symbol", f"{symbol!r:.60} {reason}")


def _none_configured(configured: Iterable[str], unknown: list[str]) -> ConfigError:
    named = ", ".join(unknown) + (", ..." if len(unknown) == NAMED_UNKNOWN else "")
    return ConfigError(
        f"none of the trades is of a configured symbol ({', '.join(sorted(configured))}): "
        f"they are of {named}; set RTML_SYMBOLS to the ones to backfill, e.g. "
        f"RTML_SYMBOLS={','.join(unknown)}"
    )


LOGGED_PER_CLASS = 10
"""A backfill logs this many skipped records of each class; the rest are counted (the last
line gives every class's count)."""
NAMED_UNKNOWN = 5
"""Where none of a backfill's symbols is configured, how many of them its error names."""


def backfill(
    settings: Settings,
    trades: Iterable[Trade | BadRecord],
    total: int | None = None,
    part_rows: int = 100_000,
    write_online: bool = True,
) -> PipelineStats:
    """Build offline features and targets from `trades` with the live pipeline's own code.

    Rejected records are counted and logged (there is no topic to dead-letter them to); the
    newest features of each symbol are written online at the end so serving can start. As in
    the live pipeline, only the configured symbols are built (`unknown_symbol` for the rest:
    a file of a million symbols would otherwise hold a million windows open); where none of
    the input is of a configured symbol, ConfigError names the ones it holds.
    """
    processor = FeatureProcessor.of(settings)
    configured = frozenset(settings.symbols).union(*settings.shards.values())
    unknown: dict[str, None] = {}  # the first few not configured, in order, to name them
    sink = FeatureSink(settings, store=None, producer=None)
    stats = PipelineStats()
    latest: dict[str, FeatureRow] = {}
    # idempotent: a row whose (symbol, event time) the store holds is not written again, so
    # the same history twice gives the same offline store (the first write of a key wins)
    stored_features = fs.stored_keys(settings.offline_dir / fs.FEATURES_DATASET)
    stored_targets = fs.stored_keys(settings.offline_dir / fs.TARGETS_DATASET)
    stored_candles = fs.stored_keys(settings.offline_dir / fs.CANDLES_DATASET)

    def take(out: Outputs) -> None:
        stats.candles += len(out.candles)
        if stored_features or stored_targets or stored_candles:
            features = [r for r in out.features if (r.symbol, r.ts) not in stored_features]
            examples = [e for e in out.examples if (e.symbol, e.ts) not in stored_targets]
            candles = [c for c in out.candles if (c.symbol, c.end) not in stored_candles]
            stats.already_stored += len(out.features) - len(features)
            stats.already_stored += len(out.examples) - len(examples)
            out = Outputs(candles=candles, features=features, examples=examples)
        sink.write(out)
        stats.features += len(out.features)
        stats.examples += len(out.examples)
        latest.update((r.symbol, r) for r in out.features)
        if sink.pending_offline >= part_rows:
            sink.flush_offline()

    def skipped(exc: BadRecord, where: str) -> None:
        stats.rejected[exc.kind] += 1
        n = stats.rejected[exc.kind]
        if n <= LOGGED_PER_CLASS:  # a file of a million bad rows is not a million log lines
            more = " (later ones of this class are counted, not logged)"
            log.warning(
                "backfill skipped %s: %s%s", where, exc, more if n == LOGGED_PER_CLASS else ""
            )

    for item in tqdm(trades, total=total, unit="trade", desc="backfill", mininterval=1.0):
        if isinstance(item, BadRecord):
            skipped(item, "a bad record")
            continue
        if item.symbol not in configured:
            skipped(_not_configured(item.symbol, unknown), "a trade")
            continue
        stats.trades += 1
        try:
            take(processor.on_trade(item))
        except BadRecord as exc:
            skipped(exc, f"{item.symbol}@{item.ts}")
    if unknown and not stats.trades:
        raise _none_configured(configured, list(unknown))
    take(processor.flush(math.inf))
    sink.flush_offline()
    if write_online and latest:
        online = FeatureSink(settings, fs.open_store(settings), producer=None)
        online.write_online(list(latest.values()))
    log.info("backfill done: %s", stats.line())
    return stats


def paced(trades: Iterable[Trade | BadRecord], speed: float) -> Iterator[Trade | BadRecord]:
    """Yield trades at `speed` times their event-time pace (0: as fast as possible).

    Bad records pass straight through, for the caller to dead-letter.
    """
    if speed <= 0:
        yield from trades
        return
    first_event: float | None = None
    began = time.monotonic()
    for trade in trades:
        if isinstance(trade, BadRecord):
            yield trade
            continue
        if first_event is None:
            first_event = trade.ts
        wait = (trade.ts - first_event) / speed - (time.monotonic() - began)
        if wait > 0:
            time.sleep(wait)
        yield trade
