"""Work the benchmarks run in child processes of their own (importable, for spawn)."""

from __future__ import annotations

import time
from typing import Any

from rtml.settings import Settings


def warm_start_child(env: dict[str, str], out: Any) -> None:
    """One warm start in a fresh process, so its peak RSS is its own."""
    import os
    import resource

    os.environ.update(env)
    from rtml.pipelines.training.dataset import warm_start
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model

    settings = Settings()
    learner = Learner(build_model(settings.model, settings.model_params, settings.target))
    began = time.perf_counter()
    dataset = warm_start(settings, learner)
    seconds = time.perf_counter() - began
    out.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, dataset.examples))


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backfill_child(
    env: dict[str, str], candles: int, trades_per_candle: float, start_ts: float, out: Any
) -> None:
    """A synthetic backfill in a fresh process: (seconds, peak RSS MB, trades)."""
    import os

    os.environ.update(env)
    from rtml.pipelines.features.feed import backfill
    from rtml.pipelines.market.sources import SyntheticMarket

    settings = Settings()
    market = SyntheticMarket(
        settings.symbols, seed=1, start_ts=start_ts, trades_per_candle=trades_per_candle
    )
    began = time.perf_counter()
    stats = backfill(settings, market.candles_of_trades(candles), write_online=False)
    out.put((time.perf_counter() - began, _peak_mb(), stats.trades))


def pipeline_child(env: dict[str, str], trades: int, out: Any) -> None:
    """The feature pipeline in a fresh process over `trades` already on `trades`:
    (trades/s from its first trade, peak RSS MB, trades read)."""
    import os
    import threading

    os.environ.update(env)
    from rtml.pipelines.features.feature_pipeline import FeaturePipeline

    pipeline = FeaturePipeline(Settings(), group_id=f"scale-{os.getpid()}", commit_interval_s=5.0)
    thread = threading.Thread(target=pipeline.run, kwargs={"max_seconds": 900})
    began = time.perf_counter()
    thread.start()
    while pipeline.stats.trades == 0 and time.perf_counter() - began < 300:
        time.sleep(0.005)
    first = time.perf_counter()
    while pipeline.stats.trades < trades and time.perf_counter() - began < 900:
        time.sleep(0.02)
    elapsed = time.perf_counter() - first
    pipeline.stop.set()
    thread.join(120)
    out.put((pipeline.stats.trades / elapsed, _peak_mb(), pipeline.stats.trades))
