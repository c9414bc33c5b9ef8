"""Trades in and features out: `feed`, `features`, `backfill`, `formats`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rtml.app.commands.options import (
    install_signal_handlers,
    reachable_or_exit,
    reading_options,
    source_option,
    target_options,
    trade_source,
    trades_per_candle,
)
from rtml.pipelines.market.presets import PRESETS
from rtml.settings import Settings

if TYPE_CHECKING:
    from rtml.pipelines.market.files import Reading


@click.command()
@source_option
@click.option("--seed", default=0, show_default=True)
@click.option("--candles", type=int, default=None, help="Stop after this many synthetic candles.")
@click.option("--speed", default=1.0, show_default=True, help="Times real time; 0: max speed.")
@click.option("--limit", type=int, default=None, help="Stop after this many trades.")
@click.option(
    "--start-ts", type=float, default=None, help="Event time of the first synthetic candle [now]."
)
@click.option(
    "--continue",
    "continue_history",
    is_flag=True,
    help="Synthetic: start where the offline store ends, at each symbol's last close.",
)
@trades_per_candle
@click.pass_obj
@reading_options
def feed(
    settings: Settings,
    source: str,
    reading: Reading,
    seed: int,
    candles: int | None,
    speed: float,
    limit: int | None,
    start_ts: float | None,
    continue_history: bool,
    trades_per_candle: float,
) -> None:
    """Produce trades from a source to the `trades` topic."""
    from rtml.kafka import Topics, ensure_topics, make_producer
    from rtml.pipelines.features.feed import paced, publish

    stop = threading.Event()
    install_signal_handlers(stop)
    topics = Topics.of(settings)
    ensure_topics(settings, topics.with_dlqs())
    start_prices = None
    if continue_history:
        from rtml import feature_store as fs

        start_ts, start_prices = fs.history_end(settings)
        if start_ts is None:
            click.echo("the offline store is empty: the synthetic market starts now", err=True)
    items = trade_source(
        settings, source, seed, candles, start_ts, reading, stop, start_prices, trades_per_candle
    )
    if source == "synthetic" or Path(source).exists():
        items = paced(items, speed)
    producer = make_producer(settings)
    stats = publish(producer, topics.trades, items, stop=stop, limit=limit, progress=True)
    click.echo(stats.line())


@click.command()
@click.option("--group", default="rtml-features", show_default=True, help="Consumer group.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def features(settings: Settings, group: str, duration: float | None) -> None:
    """Run the feature pipeline: trades to candles, features and labels in Feast and Kafka."""
    reachable_or_exit(settings, "kafka", "redis")
    from rtml.pipelines.features.feature_pipeline import FeaturePipeline
    from rtml.presence import announce

    pipeline = FeaturePipeline(settings, group_id=group)
    announce(settings, "features", group=group, topics=(pipeline.topics.trades,))
    install_signal_handlers(pipeline.stop)
    click.echo(pipeline.run(max_seconds=duration).line())


@click.command()
@source_option
@click.option("--seed", default=0, show_default=True)
@click.option("--days", default=2.0, show_default=True, help="Synthetic history length.")
@click.option(
    "--start-ts", type=float, default=None, help="Event time of the first candle [days ago]."
)
@trades_per_candle
@click.pass_obj
@target_options
@reading_options
def backfill(
    settings: Settings,
    source: str,
    reading: Reading,
    seed: int,
    days: float,
    start_ts: float | None,
    trades_per_candle: float,
) -> None:
    """Build the offline store from a replay file or a synthetic history, without Kafka."""

    from rtml.pipelines.features.feed import backfill as run_backfill

    candles = None
    if source == "synthetic":
        candles = int(days * 86400 / settings.candle_seconds)
        if start_ts is None:
            start_ts = time.time() - candles * settings.candle_seconds
    items = trade_source(
        settings, source, seed, candles, start_ts, reading, threading.Event(), None,
        trades_per_candle,
    )  # fmt: skip
    click.echo(run_backfill(settings, items).line())


@click.command()
def formats() -> None:
    """The replay file formats: rtml's canonical columns and the vendors' presets."""
    from rtml.pipelines.market.files import CANDLE_COLUMNS, OPTIONAL, TRADE_COLUMNS

    def named(columns: Iterable[str]) -> str:
        return ", ".join(f"[{c}]" if c in OPTIONAL else c for c in columns)

    click.echo("canonical (the default; map yours with --column NAME=COLUMN, [optional]):")
    click.echo(f"  trades   {named(TRADE_COLUMNS)}")
    click.echo(f"  candles  {named(CANDLE_COLUMNS)}")
    click.echo(
        "  ts: epoch s, ms, us or ns, or ISO-8601; CSV (compressed too), JSON, Parquet, Arrow"
    )
    click.echo("presets (--format NAME; --format auto tries them in this order):")
    for preset in PRESETS.values():
        click.echo(f"  {preset.name:<20} {preset.kind:<8} {preset.about}")
