"""Cost against history: the warm start at 1, 4 and 16 days; the read-back at two topic sizes."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from bench.children import warm_start_child
from bench.figure import Figure
from rtml.kafka import Topics, encode, ensure_topics, make_producer, send
from rtml.pipelines.features.feed import backfill
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings


def bench_warm_start(settings: Settings, days: tuple[int, ...] = (1, 4, 16)) -> list[Figure]:
    """Warm start (point-in-time join from Feast, then the fit) on 1, 4 and 16 days of
    1-minute candles for 3 symbols; each size has its own symbols and time span."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    measured: dict[int, tuple[float, float, int]] = {}
    for n in days:
        local = settings.model_copy(update={"symbols": tuple(f"W{n}{c}" for c in "ABC")})
        start = 1_600_000_020.0 + n * 40 * 86_400  # spans never overlap
        market = SyntheticMarket(local.symbols, seed=n, start_ts=start, trades_per_candle=2)
        backfill(local, market.candles_of_trades(n * 1440), write_online=False)
        env = local.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port", "symbols")
        queue = context.Queue()
        child = context.Process(target=warm_start_child, args=(env, queue))
        child.start()
        measured[n] = queue.get(timeout=3600)
        child.join(60)
        seconds, rss, examples = measured[n]
        print(f"  {n} days: {examples} examples, {seconds:.1f} s, {rss:.0f} MB", file=sys.stderr)
    small, middle, large = (measured[n] for n in days)
    scale = f"{days[2]}d vs {days[1]}d"
    return [
        Figure(
            f"warm start seconds, {days[2]} days of 1-min candles x 3 symbols",
            large[0],
            "s",
            f"{days[1]} days",
            middle[0],
            large[0] / middle[0],
            f"{scale} <= 5 (linear is 4)",
        ),
        Figure(
            f"warm start peak RSS, {days[2]} days of 1-min candles x 3 symbols",
            large[1],
            "MB",
            f"{days[1]} days",
            middle[1],
            large[1] / middle[1],
            f"{scale} <= 5, and <= 1,536 MB",
        ),
        Figure(
            f"warm start seconds, {days[1]} days",
            middle[0],
            "s",
            f"{days[0]} day",
            small[0],
            middle[0] / small[0],
            "for the record (linear is 4)",
        ),
    ]


def bench_read_back(
    settings: Settings, sizes: tuple[int, int] = (50_000, 1_000_000), since: int = 2_000
) -> Figure:
    """What a feature pipeline reads back at an assignment (`pipelines/features/recovery.py`): its
    outputs since the commit record's starts, with 50k and 1M records already on `features`
    and the same `since` records after the last commit in both. Constant is 1."""
    from rtml.pipelines.features.recovery import Replay

    seconds = []
    for n in sizes:
        tag = uuid.uuid4().hex[:6]
        local = settings.model_copy(update={"topic_prefix": f"bench{tag}."})
        topics = Topics.of(local)
        ensure_topics(local, topics.with_dlqs())
        ends: dict[tuple[str, int], int] = {}

        def delivered(error: object, msg: Any, ends: dict[tuple[str, int], int] = ends) -> None:
            if error is None:
                where = (msg.topic(), msg.partition())
                ends[where] = max(ends.get(where, 0), msg.offset() + 1)

        producer = make_producer(local, on_delivery=delivered)
        values = {name: 0.001 for name in [*FEATURE_NAMES, "close", "volume"]}
        starts: dict[tuple[str, int], int] = {}
        for i in range(n):
            if i == n - since:
                producer.flush(120)
                starts = dict(ends)  # the commit record: where the outputs stood
            symbol = f"S{i % 10}"
            record = {"symbol": symbol, "ts": 1_700_000_000.0 + 60 * (i // 10), "features": values}
            send(producer, topics.features, encode(record), key=symbol.encode())
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(120)
        began = time.perf_counter()
        replay, _ = Replay.read(local, [topics.features], starts, timeout=300)
        seconds.append(time.perf_counter() - began)
        if replay.records != since:
            raise RuntimeError(f"read back {replay.records} records, not the {since} since")
    return Figure(
        f"read back at an assignment, {sizes[1]:,} records on the topic",
        seconds[1],
        "s",
        f"{sizes[0]:,} records",
        seconds[0],
        seconds[1] / seconds[0],
        "constant is 1 (goal <= 1.5)",
    )
