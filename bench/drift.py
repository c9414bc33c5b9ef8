"""Drift: the error of a model that keeps learning beside one that does not, as the market turns."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.figure import Figure
from rtml.app.processes import free_port
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.records import Example
from rtml.settings import Settings


def bench_drift(
    settings: Settings, seconds: float = 240.0, speed: float = 300.0, refit_every: int = 60
) -> list[Figure]:
    """Learning quality under drift, through the real system: `rtml demo` on the regime-switching
    market, then the served predictions beside (b) the initial fit alone, (c) a batch refit
    every `refit_every` candles on everything labelled so far, and (d) the naive no-change.
    """

    from rtml.app.demo import Demo, DemoRun
    from rtml.pipelines.training.dataset import fit, offline_examples
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model

    local = settings.model_copy(update={"api_port": free_port(), "monitor_port": free_port()})
    # versions at most every 2 s of wall clock: at 300x, one per 10 minutes of market time (the
    # default 120 s would be one per 10 hours, and the champion could not follow the regimes)
    demo = Demo(
        local,
        DemoRun(speed=speed, status_every=15.0, register_interval_s=2.0),
        out=lambda m: print(m, file=sys.stderr),
    )
    ev = demo.run(seconds)
    for line in demo.report(ev):
        print(line, file=sys.stderr)
    start = demo.stream_start
    assert start is not None and ev.ts, "the demo scored no examples"
    history = [ex for ex in offline_examples(demo.settings) if ex.label_ts <= start]
    stream = sorted(
        (
            Example(sym, ts, lts, x, y)
            for sym, ts, lts, x, y in zip(
                ev.symbol, ev.ts, ev.label_ts, ev.features, ev.target, strict=True
            )
        ),
        key=lambda e: e.label_ts,
    )
    step = local.candle_seconds
    refit: list[float] = []
    block, model = -1, None
    for ts, x in zip(ev.ts, ev.features, strict=True):
        b = int((ts - start) // (refit_every * step))
        if b != block:  # refit on what was labelled by the block's start
            cutoff = start + b * refit_every * step
            learner = Learner(build_model(local.model, local.model_params, local.target))
            known = [e for e in stream if e.label_ts <= cutoff]
            fit(learner, history + known, local.warm_start_epochs, progress=False)
            block, model = b, learner.model
        assert model is not None
        refit.append(float(model.predict_one(x)))
    # the learner as it would serve with no gate and no registry: each example predicted by
    # the model as it was when the example's features were new
    learner = Learner(build_model(local.model, local.model_params, local.target))
    fit(learner, history, local.warm_start_epochs, progress=False)
    ungated = []
    pending = iter(stream)
    upcoming = next(pending, None)
    for ts, x in zip(ev.ts, ev.features, strict=True):
        while upcoming is not None and upcoming.label_ts <= ts:
            learner.step(upcoming)
            upcoming = next(pending, None)
        ungated.append(float(learner.predict_one(x)))
    naive = [0.0] * len(ev.target)
    curves = {
        "incremental champion (served)": ev.served,
        "static (initial fit)": ev.static,
        f"batch refit every {refit_every} candles": refit,
        "naive (no change)": naive,
    }
    mae = {name: ev.mae(p) * 1e4 for name, p in curves.items()}
    # where the served error is lost: each curve's MAE over eight stretches of the stream
    parts = 8
    cut = [len(ev.target) * i // parts for i in range(parts + 1)]
    stretches = {
        name: [
            round(
                1e4
                * sum(abs(a - b) for a, b in zip(p[i:j], ev.target[i:j], strict=True))
                / (j - i),
                2,
            )
            for i, j in itertools.pairwise(cut)
        ]
        for name, p in {**curves, "learner, ungated and unregistered": ungated}.items()
    }
    learned = [
        round(sum(v != 0 for v in ev.versions[i:j]) / (j - i), 2)
        for i, j in itertools.pairwise(cut)
    ]
    _plot_drift(ev, curves, start, step, demo.seed, local.symbols)
    Path("bench-results/drift.json").write_text(
        json.dumps(
            {
                "mae_bp": mae,
                "ungated_learner_mae_bp": ev.mae(ungated) * 1e4,
                "stretches_mae_bp": stretches,
                "stretches_served_by_a_model": learned,
                "examples": len(ev.target),
                "stream_start": start,
            },
            indent=2,
        )
    )
    a, b_, c, d = mae.values()
    assert all(math.isfinite(v) for v in mae.values())
    return [
        Figure(
            "drift: MAE of the incremental champion",
            a,
            "bp",
            "static initial fit",
            b_,
            a / b_,
            "≤ 0.8",
        ),
        Figure(
            "drift: MAE of the incremental champion",
            a,
            "bp",
            f"batch refit every {refit_every} candles",
            c,
            a / c,
            "≤ 1",
        ),
        Figure(
            "drift: MAE of the incremental champion", a, "bp", "naive no-change", d, a / d, "< 1"
        ),
    ]


def _plot_drift(
    ev: Any,
    curves: dict[str, list[float]],
    start: float,
    step: int,
    seed: int,
    symbols: tuple[str, ...],
    bin_candles: int = 30,
) -> None:
    """MAE over time of each model, with the market's regimes shaded behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candle = [(ts - start) / step for ts in ev.ts]
    last = max(candle)
    bins = int(last // bin_candles) + 1
    fig, ax = plt.subplots(figsize=(11, 5))
    market = SyntheticMarket(symbols, seed=seed, start_ts=start, candle_seconds=step)
    for _ in market.candles_of_trades(int(last) + 1):
        pass
    switches = market.regime_log
    colors = {
        "calm-momentum": "#e8f4e8",
        "calm-reversion": "#e8ecf8",
        "volatile-momentum": "#fbe8d8",
        "volatile-reversion": "#f6dff0",
    }
    for i, (ts, name) in enumerate(switches):
        end = switches[i + 1][0] if i + 1 < len(switches) else start + (last + 1) * step
        ax.axvspan(
            (ts - start) / step,
            (end - start) / step,
            color=colors.get(name, "#eee"),
            label=f"market regime: {name}",
        )
    for name, predictions in curves.items():
        sums, counts = [0.0] * bins, [0] * bins
        for c, p, t in zip(candle, predictions, ev.target, strict=True):
            sums[int(c // bin_candles)] += abs(p - t) * 1e4
            counts[int(c // bin_candles)] += 1
        xs = [(i + 0.5) * bin_candles for i in range(bins) if counts[i]]
        ys = [sums[i] / counts[i] for i in range(bins) if counts[i]]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    ax.set_xlabel("candles since the stream began")
    ax.set_ylabel(f"MAE of the {len(symbols)} symbols, basis points ({bin_candles}-candle bins)")
    ax.set_title("Learning under drift: served incremental champion vs alternatives")
    fig.tight_layout()
    fig.savefig("bench-results/drift.png", dpi=110)
    plt.close(fig)
