"""`rtml evaluate FILE`: a market file through the real system, judged on what it served.

The file's first half is the history (backfilled into the offline store, where the trainer's
warm start finds it); the second half is replayed by the feed as fast as the system takes it,
through the feature pipeline, the trainer, the streaming predictor and the monitor, on a stack
of its own in a fresh state directory (so a re-run starts from the same clean split). Every
prediction that was served and whose label arrived is then scored beside the alternatives, on
the same examples:

- served: what the predictors served at the time (the champion, or the naive baseline while no
  version had earned it);
- static: the initial fit alone;
- batch refit: a fresh fit on everything labelled so far, every N candles;
- naive: no change; mean: each symbol's mean of the targets known at prediction time.

The table gives MAE overall and per half, the ratio to naive, and the blocks of consecutive
examples where each beats naive, with the block standard error of the difference.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rtml.app.demo import Demo, Evaluation, own_stack
from rtml.app.stack import Stack
from rtml.pipelines.gate import paired
from rtml.pipelines.learner import Learner
from rtml.pipelines.models import build_model
from rtml.pipelines.trainer import fit, offline_examples
from rtml.records import Example
from rtml.settings import Settings

BLOCKS = 20
"""Blocks of consecutive examples for the standard error and the "blocks better" count."""


@dataclass(frozen=True)
class Row:
    name: str
    mae: float
    first_half: float
    second_half: float
    ratio_to_naive: float
    ratio_se: float
    """Block standard error of `ratio_to_naive`."""
    better_blocks: int
    blocks: int


def _mae(predictions: Sequence[float], targets: Sequence[float]) -> float:
    errors = [abs(p - t) for p, t in zip(predictions, targets, strict=True)]
    return sum(errors) / len(errors) if errors else math.nan


def batch_refit(
    ev: Evaluation, history: list[Example], start: float, settings: Settings, every: int
) -> list[float]:
    """Predictions of a model refit from scratch every `every` candles of the stream, on the
    history and every stream example labelled by then."""
    stream = sorted(
        (
            Example(s, ts, lts, x, y)
            for s, ts, lts, x, y in zip(
                ev.symbol, ev.ts, ev.label_ts, ev.features, ev.target, strict=True
            )
        ),
        key=lambda e: e.label_ts,
    )
    labelled = [e.label_ts for e in stream]
    # refit points: every `every` distinct candle times of the stream
    times = sorted(set(ev.ts))
    cutoffs = times[::every]
    out: list[float] = []
    model: Any = None
    current = -1
    for ts, x in zip(ev.ts, ev.features, strict=True):
        block = bisect.bisect_right(cutoffs, ts) - 1
        if block != current:
            cutoff = cutoffs[block] if block >= 0 else start
            known = stream[: bisect.bisect_right(labelled, cutoff)]
            learner = Learner(build_model(settings.model, settings.model_params, settings.target))
            fit(learner, history + known, settings.warm_start_epochs, progress=False)
            model, current = learner.model, block
        out.append(float(model.predict_one(x)))
    return out


def expanding_mean(ev: Evaluation, history: list[Example]) -> list[float]:
    """Each symbol's mean of the targets whose labels were known when its features were."""
    known: dict[str, list[tuple[float, float]]] = {}
    for s, lts, y in [(e.symbol, e.label_ts, e.target) for e in history] + list(
        zip(ev.symbol, ev.label_ts, ev.target, strict=True)
    ):
        known.setdefault(s, []).append((lts, y))
    sums: dict[str, tuple[list[float], list[float]]] = {}
    for s, pairs in known.items():
        pairs.sort()
        total, cumulative = 0.0, []
        for _, y in pairs:
            total += y
            cumulative.append(total)
        sums[s] = ([lts for lts, _ in pairs], cumulative)
    out = []
    for s, ts in zip(ev.symbol, ev.ts, strict=True):
        stamps, cumulative = sums[s]
        n = bisect.bisect_right(stamps, ts)
        out.append(cumulative[n - 1] / n if n else 0.0)
    return out


def table(targets: Sequence[float], curves: dict[str, list[float]]) -> list[Row]:
    """MAE of each curve overall and per half, against naive (no change) on the same rows."""
    half = len(targets) // 2
    naive = [abs(t) for t in targets]
    naive_mae = sum(naive) / len(naive) if naive else math.nan
    rows = []
    for name, predictions in curves.items():
        errors = [abs(p - t) for p, t in zip(predictions, targets, strict=True)]
        diff = paired(errors, naive, BLOCKS)
        mae = sum(errors) / len(errors) if errors else math.nan
        rows.append(
            Row(
                name,
                mae,
                _mae(predictions[:half], targets[:half]),
                _mae(predictions[half:], targets[half:]),
                mae / naive_mae if naive_mae else math.nan,
                diff.se / naive_mae if naive_mae else math.nan,
                diff.better,
                diff.blocks,
            )
        )
    return rows


def lag_in_candles(ev: Evaluation) -> list[int]:
    """For each prediction a version served: the symbol's candles between the newest label the
    version had learned and the prediction (the baseline's are left out)."""
    stamps: dict[str, list[float]] = {}
    for s, ts in zip(ev.symbol, ev.ts, strict=True):
        stamps.setdefault(s, []).append(ts)
    for values in stamps.values():
        values.sort()
    out = []
    for s, ts, through in zip(ev.symbol, ev.ts, ev.trained_through, strict=True):
        if math.isfinite(through):
            column = stamps[s]
            out.append(bisect.bisect_right(column, ts) - bisect.bisect_right(column, through))
    return out


def format_table(rows: list[Row]) -> list[str]:
    lines = [
        f"{'':32} {'MAE':>10} {'1st half':>10} {'2nd half':>10} {'x naive':>8} "
        f"{'+- SE':>8} {'blocks better':>14}"
    ]
    for r in rows:
        lines.append(
            f"{r.name:32} {r.mae:10.6f} {r.first_half:10.6f} {r.second_half:10.6f} "
            f"{r.ratio_to_naive:8.3f} {r.ratio_se:8.3f} "
            f"{r.better_blocks:>7}/{r.blocks}"
        )
    return lines


@dataclass
class Report:
    source: str
    examples: int
    symbols: list[str]
    rows: list[Row]
    lag_candles_median: float | None
    lag_candles_p90: float | None
    baseline_share: float
    """Share of the scored examples the naive baseline served."""
    refit_every: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def lines(self) -> list[str]:
        out = [
            f"== rtml evaluate {self.source}: {self.examples:,} scored examples "
            f"({', '.join(self.symbols)})",
            *format_table(self.rows),
            "   x naive: MAE over naive's on the same examples (below 1 beats it); +- SE: block "
            "standard error of that ratio; blocks better: blocks of consecutive examples where "
            "the MAE is below naive's",
            f"   served by the naive baseline: {self.baseline_share:.0%} of the examples "
            "(no version had beaten it by the gate's margin)",
        ]
        if self.lag_candles_median is not None:
            out.append(
                f"   served model's lag: median {self.lag_candles_median:.0f} candles, "
                f"90th percentile {self.lag_candles_p90:.0f} (newest label learned to prediction)"
            )
        return out


def score(
    demo: Demo, ev: Evaluation, refit_every: int, progress: Callable[[str], None] = print
) -> tuple[Report, dict[str, list[float]]]:
    start = demo.stream_start
    if start is None or not ev.ts:
        raise ValueError("the run scored no examples")
    history = [ex for ex in offline_examples(demo.settings) if ex.label_ts <= start]
    progress(f"== scoring {len(ev.ts):,} examples: batch refit every {refit_every} candles")
    curves = {
        "served (champion or baseline)": ev.served,
        "static (initial fit)": ev.static,
        f"batch refit every {refit_every} candles": batch_refit(
            ev, history, start, demo.settings, refit_every
        ),
        "naive (no change)": [0.0] * len(ev.ts),
        "mean of known targets": expanding_mean(ev, history),
    }
    lags = lag_in_candles(ev)
    quantiles = statistics.quantiles(lags, n=10) if len(lags) >= 2 else None
    return Report(
        source=demo.source_name,
        examples=len(ev.ts),
        symbols=sorted(set(ev.symbol)),
        rows=table(ev.target, curves),
        lag_candles_median=statistics.median(lags) if lags else None,
        lag_candles_p90=quantiles[-1] if quantiles else None,
        baseline_share=sum(v == 0 for v in ev.versions) / len(ev.versions),
        refit_every=refit_every,
    ), curves


def plot(ev: Evaluation, curves: dict[str, list[float]], path: Path, bins: int = 40) -> None:
    """Each curve's MAE over event time, in `bins` bins of scored examples."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.pyplot as plt

    order = sorted(range(len(ev.ts)), key=lambda i: ev.ts[i])
    size = max(1, len(order) // bins)
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, predictions in curves.items():
        xs: list[Any] = []
        ys: list[float] = []
        for b in range(0, len(order), size):
            part = order[b : b + size]
            xs.append(datetime.fromtimestamp(ev.ts[part[len(part) // 2]], UTC))
            ys.append(sum(abs(predictions[i] - ev.target[i]) for i in part) / len(part))
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel("event time of the features (UTC)")
    ax.set_ylabel("MAE of the return over the horizon")
    ax.set_title("MAE over time, each model on the same served examples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_file(
    settings: Settings,
    source: Path,
    columns: dict[str, str] | None = None,
    refit_every: int = 60,
    speed: float = 0.0,
    register_interval_s: float | None = None,
    out: Callable[[str], None] = print,
) -> Report:
    """Run `source` through a stack of its own; print and write the table, JSON and a PNG."""
    run_id = time.strftime("%Y%m%d%H%M%S")
    folder = settings.state / "evaluations" / run_id
    local = own_stack(settings, folder)
    out(f"== evaluating {source} in {folder} (a stack of its own; stopped at the end)")
    demo = Demo(
        local,
        source=str(source),
        speed=speed,
        out=out,
        register_interval_s=register_interval_s,
        columns=columns,
        own_ports=True,
    )
    demo.check_source()  # before anything starts
    try:
        ev = demo.run(None, until_done=True)
    finally:
        Stack(local).down()
    report, curves = score(demo, ev, refit_every, out)
    (folder / "evaluation.json").write_text(json.dumps(report.to_json(), indent=2))
    (folder / "evaluation.txt").write_text("\n".join(report.lines()) + "\n")
    plot(ev, curves, folder / "evaluation.png")
    for line in report.lines():
        out(line)
    out(f"   written: {folder}/evaluation.json, evaluation.txt, evaluation.png")
    return report
