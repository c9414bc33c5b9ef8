"""Hundreds of symbols on one machine: backfill, the feature pipeline and the warm start at 3,
100 and 500 symbols over the same two days, with the same number of trades at each size
(fewer per candle as symbols grow), each in a fresh process so its peak RSS is its own."""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid
from typing import Any

from bench.children import backfill_child, pipeline_child, warm_start_child
from bench.figure import Figure
from rtml.kafka import Topics, ensure_topics, make_producer
from rtml.pipelines.features.feed import publish
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings

SIZES = (3, 100, 500)
DAYS = 2
CANDLES = DAYS * 1440
TRADES = 500 * CANDLES  # one a candle at 500 symbols; 167 a candle at 3


def _in_child(target: Any, *args: Any) -> tuple[float, float, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    result: tuple[float, float, int] = queue.get(timeout=3600)
    child.join(120)
    return result


def _env(settings: Settings) -> dict[str, str]:
    return settings.as_env(
        "state_dir", "kafka_port", "redis_port", "mlflow_port", "symbols", "topic_prefix"
    )


def measure(settings: Settings, n: int) -> dict[str, tuple[float, float, int]]:
    """Backfill, then warm start, over one market of `n` symbols; the pipeline over another."""
    tag = uuid.uuid4().hex[:4]
    start = (time.time() // 60 - CANDLES - 10) * 60
    per_candle = TRADES / (n * CANDLES)
    stored = settings.model_copy(update={"symbols": tuple(f"B{k}x{tag}" for k in range(n))})
    out = {"backfill": _in_child(backfill_child, _env(stored), CANDLES, per_candle, start)}
    out["warm start"] = _in_child(warm_start_child, _env(stored))
    live = settings.model_copy(
        update={
            "symbols": tuple(f"P{k}x{tag}" for k in range(n)),
            "topic_prefix": f"scale{tag}.",
        }
    )
    topics = Topics.of(live)
    ensure_topics(live, topics.with_dlqs())
    market = SyntheticMarket(live.symbols, seed=2, start_ts=start, trades_per_candle=per_candle)
    sent = publish(make_producer(live), topics.trades, market.candles_of_trades(CANDLES)).trades
    out["pipeline"] = _in_child(pipeline_child, _env(live), sent)
    for name, (value, rss, count) in out.items():
        print(f"  {n} symbols, {name}: {value:.1f}, {rss:.0f} MB, {count}", file=sys.stderr)
    return out


def throughput(settings: Settings, n: int, trades: int = 1_200_000, per_candle: int = 20) -> float:
    """The feature pipeline's trades/s over `trades` of `n` symbols at `per_candle` trades a
    candle: the same work per trade (a candle, its features and label every `per_candle`
    trades) at any symbol count."""
    tag = uuid.uuid4().hex[:4]
    candles = trades // (n * per_candle)
    live = settings.model_copy(
        update={"symbols": tuple(f"T{k}x{tag}" for k in range(n)), "topic_prefix": f"tput{tag}."}
    )
    topics = Topics.of(live)
    ensure_topics(live, topics.with_dlqs())
    start = (time.time() // 60 - candles - 10) * 60
    market = SyntheticMarket(live.symbols, seed=3, start_ts=start, trades_per_candle=per_candle)
    sent = publish(make_producer(live), topics.trades, market.candles_of_trades(candles)).trades
    rate, rss, _ = _in_child(pipeline_child, _env(live), sent)
    print(
        f"  {n} symbols, {per_candle} a candle: {rate:.0f} trades/s, {rss:.0f} MB", file=sys.stderr
    )
    return rate


def bench_symbols(settings: Settings) -> list[Figure]:
    runs = {n: measure(settings, n) for n in SIZES}
    small, middle, large = (runs[n] for n in SIZES)
    few, many = throughput(settings, SIZES[0]), throughput(settings, SIZES[2])
    figures = [
        Figure(
            f"feature pipeline per trade at {SIZES[2]} symbols, 20 trades a candle",
            many,
            "trades/s",
            f"{SIZES[0]} symbols",
            few,
            many / few,
            ">= 0.9",
        ),
        Figure(
            f"feature pipeline at {SIZES[2]} symbols x {DAYS} days, 1 trade a candle",
            large["pipeline"][0],
            "trades/s",
            f"{SIZES[0]} symbols x {DAYS} days, 167 a candle",
            small["pipeline"][0],
            large["pipeline"][0] / small["pipeline"][0],
            "for the record: a candle, its features and label every trade",
        ),
    ]
    for name in ("backfill", "pipeline", "warm start"):
        figures.append(
            Figure(
                f"{name} peak RSS, {SIZES[2]} symbols x {DAYS} days",
                large[name][1],
                "MB",
                f"{SIZES[1]} symbols",
                middle[name][1],
                large[name][1] / middle[name][1],
                f"<= 2 and <= 1,024 MB ({SIZES[0]} symbols: {small[name][1]:.0f} MB)",
            )
        )
    return figures
