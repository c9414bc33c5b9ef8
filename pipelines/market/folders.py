"""A folder of market files replayed as one market, in event time.

History often comes a file a day or a month (Binance's `BTCUSDT-trades-2024-01-01.zip`,
HistData's monthly files, a vendor's daily exports), and a file a symbol. A folder of them is
replayed as the one market they hold: the trades of all its files in event time. A first pass
reads each file once for the time of its first trade; then each file is read again when the
replay reaches that time and let go when it ends, so a year of daily files holds about one
day in memory, and files that overlap in time (one a symbol) are merged.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Generator, Iterator
from pathlib import Path

from tqdm import tqdm

from rtml.errors import ConfigError
from rtml.records import BadRecord, Trade

from .files import AS_IS, Reading, file_kind, read_table, replay

log = logging.getLogger(__name__)


def replay_files(folder: Path) -> list[Path]:
    """The files of `folder` a replay reads (not its subfolders, not hidden files), by name;
    a ConfigError when it holds none, saying which kinds are read."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            file_kind(path)
        except ConfigError:
            log.warning("%s is not a replay file rtml reads: left out", path)
            continue
        found.append(path)
    if not found:
        raise ConfigError(
            f"{folder} holds no replay file: put CSV, JSON, Parquet or Arrow files of trades "
            "or candles in it (compressed or zipped too)"
        )
    return found


def _first_time(path: Path, reading: Reading) -> float:
    """When the first trade or candle of `path` is: -inf when none of its times is readable
    (its rows are refused when it is replayed)."""
    first = read_table(path, reading, say=lambda _: None).frame["_start"].min()
    return float(first) if not math.isnan(first) else -math.inf


def _next_trade(stream: Iterator[Trade | BadRecord]) -> Generator[BadRecord, None, Trade | None]:
    """Yields the stream's refused records up to its next trade, and returns that trade (None
    at its end)."""
    for item in stream:
        if isinstance(item, Trade):
            return item
        yield item
    return None


def replay_folder(
    folder: Path, reading: Reading = AS_IS, candle_seconds: int = 60
) -> Iterator[Trade | BadRecord]:
    """The trades of every replay file in `folder`, in event time across files (each file's
    own are in event time already), and each file's refused rows as it yields them."""
    paths = replay_files(folder)
    starts = sorted(
        (_first_time(path, reading), i, path)
        for i, path in enumerate(tqdm(paths, desc=f"reading {folder.name}'s files", disable=None))
    )
    log.info("%s: %d files, replayed as one market in event time", folder, len(paths))
    waiting = iter(starts)
    upcoming = next(waiting, None)
    order = itertools.count()
    heap: list[tuple[float, int, Trade, Iterator[Trade | BadRecord]]] = []
    while upcoming is not None or heap:
        # a file starts once the replay reaches its first trade: files apart in time are
        # read one after the other, files that overlap are merged
        while upcoming is not None and (not heap or upcoming[0] <= heap[0][0]):
            stream = replay(upcoming[2], reading, candle_seconds)
            trade = yield from _next_trade(stream)
            if trade is not None:
                heapq.heappush(heap, (trade.ts, next(order), trade, stream))
            upcoming = next(waiting, None)
        if heap:
            _, _, trade, stream = heapq.heappop(heap)
            yield trade
            after = yield from _next_trade(stream)
            if after is not None:
                heapq.heappush(heap, (after.ts, next(order), after, stream))
