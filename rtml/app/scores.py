"""A run's scores: its `predictions` joined with its `examples`, beside the alternatives."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtml.kafka import Topics, read_messages
from rtml.pipelines.features.indicators import FEATURE_BOUNDS, FEATURE_NAMES, TARGET_BOUNDS
from rtml.pipelines.features.targets import target
from rtml.records import BadRecord, Example, Prediction, examples_reader, parse_prediction
from rtml.settings import Settings


@dataclass
class Evaluation:
    """Every scored example of a run: the served prediction beside the alternatives."""

    ts: list[float] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    static: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    """The target's naive forecast (no change, or the last H candles' volatility)."""
    versions: list[int] = field(default_factory=list)
    """The served model version of each example, in event-time order."""
    features: list[dict[str, float]] = field(default_factory=list)
    label_ts: list[float] = field(default_factory=list)
    trained_through: list[float] = field(default_factory=list)
    """The newest label time the served model had learned (NaN for the baseline)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Records of the topics that could not be scored, by topic and class (`no_prediction`
    where the model gave none): not rtml's, or spoiled."""

    def mae(self, predictions: list[float]) -> float:
        errors = [abs(p - t) for p, t in zip(predictions, self.target, strict=True)]
        return sum(errors) / len(errors) if errors else math.nan

    def summary(self) -> dict[str, float]:
        learned = sum(v != 0 for v in self.versions)
        return {
            "examples": float(len(self.target)),
            "served_mae": self.mae(self.served),
            "static_mae": self.mae(self.static),
            "naive_mae": self.mae(self.naive),
            "model_share": learned / len(self.versions) if self.versions else math.nan,
        }


def evaluate(settings: Settings, static: Any) -> Evaluation:
    """Join the run's `predictions` with its `examples`; predict each with `static` too.
    Each record is read as its consumers read it; one that is not rtml's, or is spoiled, is
    counted in `refused` and left out."""
    topics = Topics.of(settings)
    naive = target(settings.target).naive
    out = Evaluation()
    examples: dict[tuple[str, float], Example] = {}
    reader = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
    for _, raw in read_messages(settings, topics.examples, 60):
        try:
            parsed = reader.read(raw)
        except BadRecord as exc:
            out.refused[f"examples {exc.kind}"] += 1
            continue
        examples[parsed.symbol, parsed.ts] = parsed
    predictions: list[Prediction] = []
    for _, raw in read_messages(settings, topics.predictions, 60):
        try:
            predictions.append(parse_prediction(raw))
        except BadRecord as exc:
            out.refused[f"predictions {exc.kind}"] += 1
    seen: set[tuple[str, float]] = set()
    for p in sorted(predictions, key=lambda p: (p.ts, p.symbol)):
        key = (p.symbol, p.ts)
        if key in seen or (ex := examples.get(key)) is None:
            continue  # a redelivered prediction, or its target not known yet
        seen.add(key)
        out.ts.append(p.ts)
        out.symbol.append(p.symbol)
        out.target.append(ex.target)
        out.served.append(p.prediction)
        out.static.append(float(static.predict_one(ex.features)))
        out.naive.append(naive(ex.features))
        out.versions.append(p.version)
        out.features.append(ex.features)
        out.label_ts.append(ex.label_ts)
        out.trained_through.append(p.trained_through)
    return out


def plot(
    ev: Evaluation,
    curves: dict[str, list[float]],
    path: Path,
    loss: Callable[[float, float], float],
    bins: int = 40,
) -> dict[str, list[float]]:
    """Each curve's loss over the naive forecast's on the same examples, over event time, in
    `bins` bins of scored examples: below 1 beats naive, and equal curves stay apart from its
    flat line instead of hiding under it. Returns the ratios drawn, by curve."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.pyplot as plt

    order = sorted(range(len(ev.ts)), key=lambda i: ev.ts[i])
    size = max(1, len(order) // bins)
    parts = [order[b : b + size] for b in range(0, len(order), size)]
    xs: list[Any] = [datetime.fromtimestamp(ev.ts[part[len(part) // 2]], UTC) for part in parts]

    def mean_loss(predictions: list[float], part: list[int]) -> float:
        return sum(loss(predictions[i], ev.target[i]) for i in part) / len(part)

    naive = [mean_loss(curves["naive"], part) for part in parts]
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.axhline(1.0, color="#7f7f7f", linewidth=1.5, label="naive (= 1)")
    drawn = {}
    for name, predictions in curves.items():
        if name == "naive":
            continue
        ys = drawn[name] = [
            mean_loss(predictions, part) / base if base > 0 else math.nan
            for part, base in zip(parts, naive, strict=True)
        ]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel("event time of the features (UTC)")
    ax.set_ylabel("loss / naive's loss, same examples")
    ax.set_title("Loss over time relative to the naive forecast (below 1 beats it)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn
