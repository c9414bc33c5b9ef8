"""`rtml evaluate FILE`: a market file through the real system, judged on what it served.

The file's first half is the history (backfilled into the offline store, where the trainer's
warm start finds it); the second half is replayed by the feed as fast as the system takes it,
through the feature pipeline, the trainer, the streaming predictor and the monitor, on a stack
of its own in a fresh state directory (so a re-run starts from the same clean split).

The trainer runs in event time (`RTML_CHECKPOINT_SYNC`): a checkpoint every
`checkpoint_every` examples, each gated, registered and promoted before it learns on, and each
champion change recorded at the newest label time the trainer had learned. So which version
serves which example is decided by the examples, not by how fast the replay ran. Every
prediction whose label arrived is then scored beside the alternatives, on the same examples:

- served (event time): the champion the trainer had chosen by the example's feature time, or
  the naive forecast while there was none: what a predictor that swaps at once serves;
- served (as run): what the predictors served at the time, swapping on their poll (at full
  speed they lag the trainer by some candles);
- static: the initial fit alone;
- batch refit: a fresh fit on everything labelled so far, every N candles;
- naive: the target's naive forecast; mean: each symbol's mean of the targets known at
  prediction time.

The table gives each row's loss (the target's: squared error for a return, absolute error for
a volatility) overall and per half, its ratio to naive's with the block standard error, the
MAE beside it, the blocks of consecutive examples where it beats naive, and the rank
correlation of its predictions with the targets. Below it: the share of the examples each
version served, how often the champion changed, and the served predictions whose model had
learned a label from after their feature time (there should be none).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from rtml import checkpoints, registry
from rtml.app.demo import Demo, DemoRun, own_stack
from rtml.app.scores import Evaluation, plot
from rtml.app.stack import Stack
from rtml.pipelines.features.targets import Target, target
from rtml.pipelines.market.files import Reading
from rtml.pipelines.training.dataset import fit, offline_examples
from rtml.pipelines.training.gate import paired
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import build_model
from rtml.pipelines.training.retrain import trained_through
from rtml.records import Example
from rtml.settings import Settings

BLOCKS = 20
"""Blocks of consecutive examples for the standard error and the "blocks better" count."""


EVENT_TIME_CHECKPOINTS = 50
"""Examples between the trainer's checkpoints in an evaluation (each gated in event time)."""


@dataclass(frozen=True)
class Row:
    name: str
    loss: float
    """Mean of the target's loss."""
    first_half: float
    second_half: float
    ratio_to_naive: float
    """`loss` over naive's on the same examples."""
    ratio_se: float
    """Block standard error of `ratio_to_naive`."""
    mae: float
    mae_ratio_to_naive: float
    better_blocks: int
    blocks: int
    rank_correlation: float
    """Spearman's rank correlation of the predictions with the targets (NaN if constant)."""


def _mean_loss(label: Target, predictions: Sequence[float], targets: Sequence[float]) -> float:
    losses = [label.loss(p, t) for p, t in zip(predictions, targets, strict=True)]
    return sum(losses) / len(losses) if losses else math.nan


def _rank_correlation(predictions: Sequence[float], targets: Sequence[float]) -> float:
    if len(set(predictions)) < 2 or len(set(targets)) < 2:
        return math.nan
    return float(spearmanr(predictions, targets).statistic)


def batch_refit(
    ev: Evaluation,
    history: list[Example],
    start: float,
    settings: Settings,
    every: int,
    progress: Callable[[str], None] = lambda _: None,
) -> list[float]:
    """Predictions of a model refit from scratch every `every` candles of the stream, on the
    history and every stream example labelled by then; says how far it is every 10 s."""
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
    said = time.monotonic()
    for ts, x in zip(ev.ts, ev.features, strict=True):
        block = bisect.bisect_right(cutoffs, ts) - 1
        if time.monotonic() - said >= 10.0:
            said = time.monotonic()
            progress(f"   batch refit {block + 1} of {len(cutoffs)}")
        if block != current:
            cutoff = cutoffs[block] if block >= 0 else start
            known = stream[: bisect.bisect_right(labelled, cutoff)]
            learner = Learner(
                build_model(settings.model, settings.model_params, settings.target),
                target=settings.target,
            )
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


def table(
    label: Target, targets: Sequence[float], naive: Sequence[float], curves: dict[str, list[float]]
) -> list[Row]:
    """Each curve's loss overall and per half, against the naive forecast on the same rows."""
    half = len(targets) // 2
    naive_losses = [label.loss(p, t) for p, t in zip(naive, targets, strict=True)]
    naive_loss = sum(naive_losses) / len(naive_losses) if naive_losses else math.nan
    naive_mae = sum(abs(p - t) for p, t in zip(naive, targets, strict=True)) / max(len(naive), 1)
    rows = []
    for name, predictions in curves.items():
        losses = [label.loss(p, t) for p, t in zip(predictions, targets, strict=True)]
        diff = paired(losses, naive_losses, BLOCKS)
        loss = sum(losses) / len(losses) if losses else math.nan
        mae = sum(abs(p - t) for p, t in zip(predictions, targets, strict=True)) / max(
            len(predictions), 1
        )
        rows.append(
            Row(
                name,
                loss,
                _mean_loss(label, predictions[:half], targets[:half]),
                _mean_loss(label, predictions[half:], targets[half:]),
                loss / naive_loss if naive_loss else math.nan,
                diff.se / naive_loss if naive_loss else math.nan,
                mae,
                mae / naive_mae if naive_mae else math.nan,
                diff.better,
                diff.blocks,
                _rank_correlation(predictions, targets),
            )
        )
    return rows


def served_in_event_time(
    ev: Evaluation, changes: list[tuple[float, str | None]], models: dict[str, Any]
) -> tuple[list[float], list[str], int]:
    """What a predictor that swaps the moment the trainer decides would have served: for each
    example, the newest champion chosen at a label time at or before its feature time (the
    naive forecast before the first, and after a retirement). Returns the predictions, the
    version of each ("0": naive), and how many came from a model whose newest learned label
    is after the example's feature time (a leak: 0 by construction, counted all the same
    from what each version says it learned)."""
    stamps = [at for at, _ in changes]
    predictions, versions, leaks = [], [], 0
    for ts, x, naive in zip(ev.ts, ev.features, ev.naive, strict=True):
        at = bisect.bisect_right(stamps, ts) - 1
        version = changes[at][1] if at >= 0 else None
        if version is None:
            predictions.append(naive)
            versions.append("0")
            continue
        model, through = models[version]
        leaks += through > ts
        predictions.append(float(model.predict_one(x)))
        versions.append(version)
    return predictions, versions, leaks


def champion_models(settings: Settings, changes: list[tuple[float, str | None]]) -> dict[str, Any]:
    """Each version that was champion, loaded from the registry, with the newest label time
    it learned."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar a version
    out: dict[str, Any] = {}
    for _, version in changes:
        if version is not None and version not in out:
            loaded = registry.load_version(settings, version)
            out[version] = (loaded.model, trained_through(loaded))
    return out


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
        f"{'':32} {'loss':>10} {'1st half':>10} {'2nd half':>10} {'x naive':>8} "
        f"{'+- SE':>7} {'MAE':>10} {'x naive':>8} {'better':>7} {'rank r':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r.name:32} {r.loss:10.3g} {r.first_half:10.3g} {r.second_half:10.3g} "
            f"{r.ratio_to_naive:8.3f} {r.ratio_se:7.3f} {r.mae:10.6f} "
            f"{r.mae_ratio_to_naive:8.3f} {r.better_blocks:>4}/{r.blocks:<2} "
            f"{r.rank_correlation:7.3f}"
        )
    return lines


@dataclass
class Report:
    source: str
    target: str
    horizon: int
    loss: str
    examples: int
    symbols: list[str]
    rows: list[Row]
    lag_candles_median: float | None
    lag_candles_p90: float | None
    baseline_share: float
    """Share of the scored examples the naive forecast served (in event time)."""
    served_share: dict[str, float]
    """Share of the scored examples each version served in event time ("0": naive)."""
    champion_changes: int
    """Champion changes the trainer's gate made over the stream."""
    leaks: int
    """Served predictions (in event time) whose model learned a label after their features."""
    leaks_as_run: int
    """The same among the predictions the predictors served as the run went."""
    refit_every: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def lines(self) -> list[str]:
        learned = [v for v in self.served_share if v != "0"]
        shares = (
            f"a learned model {1 - self.baseline_share:.0%} of the examples ({len(learned)} "
            f"versions), the naive forecast {self.baseline_share:.0%}"
        )
        out = [
            f"== rtml evaluate {self.source}: {self.examples:,} scored examples "
            f"({', '.join(self.symbols)}), target {self.target} over H={self.horizon} candles, "
            f"loss: {self.loss}",
            *format_table(self.rows),
            "   x naive: the loss over naive's on the same examples (below 1 beats it); +- SE: "
            "block standard error of that ratio; better: blocks of consecutive examples where "
            "the loss is below naive's; rank r: Spearman's correlation with the target",
            f"   served (event time): {shares}; the champion changed {self.champion_changes} "
            f"times; predictions from a model that had learned a later label: {self.leaks} "
            f"(as run: {self.leaks_as_run})",
        ]
        if self.lag_candles_median is not None:
            out.append(
                f"   as run, the served model's lag: median {self.lag_candles_median:.0f} candles, "
                f"90th percentile {self.lag_candles_p90:.0f} (newest label learned to prediction)"
            )
        return out


def score(
    demo: Demo, ev: Evaluation, refit_every: int, progress: Callable[[str], None] = print
) -> tuple[Report, dict[str, list[float]]]:
    start = demo.stream_start
    if start is None or not ev.ts:
        raise ValueError("the run scored no examples")
    settings = demo.settings
    label = target(settings.target)
    history = [ex for ex in offline_examples(settings) if ex.label_ts <= start]
    changes = registry.champion_changes(settings, checkpoints.trainer_run_id(settings))
    served, versions, leaks = served_in_event_time(ev, changes, champion_models(settings, changes))
    progress(f"== scoring {len(ev.ts):,} examples: batch refit every {refit_every} candles")
    curves = {
        "served (event time)": served,
        "served (as run)": ev.served,
        "static (initial fit)": ev.static,
        f"batch refit every {refit_every} candles": batch_refit(
            ev, history, start, settings, refit_every, progress
        ),
        "naive": ev.naive,
        "mean of known targets": expanding_mean(ev, history),
    }
    lags = lag_in_candles(ev)
    quantiles = statistics.quantiles(lags, n=10) if len(lags) >= 2 else None
    counts = Counter(versions)
    return Report(
        source=demo.source_name,
        target=label.name,
        horizon=settings.horizon,
        loss=label.loss_name,
        examples=len(ev.ts),
        symbols=sorted(set(ev.symbol)),
        rows=table(label, ev.target, ev.naive, curves),
        lag_candles_median=statistics.median(lags) if lags else None,
        lag_candles_p90=quantiles[-1] if quantiles else None,
        baseline_share=counts["0"] / len(versions),
        served_share={v: n / len(versions) for v, n in counts.items()},
        champion_changes=len(changes),
        leaks=leaks,
        leaks_as_run=sum(t > ts for t, ts in zip(ev.trained_through, ev.ts, strict=True)),
        refit_every=refit_every,
    ), curves


def evaluate_file(
    settings: Settings,
    source: Path,
    reading: Reading | None = None,
    refit_every: int = 60,
    speed: float = 0.0,
    register_interval_s: float | None = None,
    out: Callable[[str], None] = print,
) -> Report:
    """Run `source` through a stack of its own; print and write the table, JSON and a PNG."""
    run_id = time.strftime("%Y%m%d%H%M%S")
    folder = settings.state / "evaluations" / run_id
    local = own_stack(settings, folder).model_copy(
        update={
            "checkpoint_sync": True,
            "checkpoint_every": EVENT_TIME_CHECKPOINTS,
            # every champion stays in the registry: the table loads each to score it
            "keep_versions": 1_000_000,
            "register_interval_s": 0.0 if register_interval_s is None else register_interval_s,
        }
    )
    out(f"== evaluating {source} in {folder} (a stack of its own; stopped at the end)")
    demo = Demo(
        local, DemoRun(source=str(source), speed=speed, reading=reading, own_ports=True), out=out
    )
    demo.check_source()  # before anything starts
    try:
        ev = demo.run(None, until_done=True)
        report, curves = score(demo, ev, refit_every, out)  # reads the registry: before `down`
    finally:
        Stack(local).down()
    (folder / "evaluation.json").write_text(json.dumps(report.to_json(), indent=2))
    (folder / "evaluation.txt").write_text("\n".join(report.lines()) + "\n")
    plot(ev, curves, folder / "evaluation.png", target(local.target).loss)
    for line in report.lines():
        out(line)
    out(f"   written: {folder}/evaluation.json, evaluation.txt, evaluation.png")
    return report
