"""The targets rtml can learn, each declared once: its label, its naive forecast and its loss.

A target is what the candle closing at t is labelled with once candle t+H has closed:

| name | label | naive forecast | loss (gated, evaluated) |
| --- | --- | --- | --- |
| `return` | simple return, close of t to close of t+H | 0 (no change) | squared error |
| `volatility` | realised volatility of candles t+1..t+H | the last H candles' | absolute error |

The realised volatility of H candles is the square root of the sum of their squared log
returns, floored at `VOL_FLOOR`: a stretch without a price change (an illiquid hour, a halted
pair) is labelled with the floor, so a model that learns in log space stays bounded.

>>> closes = [100.0, 101.0, 99.0, 99.0]
>>> round(TARGETS["return"].label(closes), 6)
-0.01
>>> round(TARGETS["volatility"].label(closes), 6)
0.022339
>>> TARGETS["volatility"].naive({"rv_h": 0.02}), TARGETS["return"].naive({"rv_h": 0.02})
(0.02, 0.0)
>>> TARGETS["return"].loss(0.5, 0.75), TARGETS["volatility"].loss(0.5, 0.75)
(0.0625, 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from rtml.errors import ConfigError

VOL_FLOOR = 1e-6
"""The least realised volatility a label or a volatility feature takes."""

MAX_MOVE = 100.0
"""rtml's market bound: a trade is within this factor of its symbol's last close, and a
return over the feature window (15 candles) or the horizon is less than this factor. A trade
from a fat finger or a hostile producer (a price of 1e-20 or 1e25) would otherwise become
candles, features and targets that reshape the model for good."""


def realised_volatility(closes: Sequence[float]) -> float:
    """The square root of the sum of the squared log returns between `closes`, floored.

    >>> realised_volatility([100.0, 100.0, 100.0]) == VOL_FLOOR
    True
    """
    total = sum(math.log(b / a) ** 2 for a, b in pairwise(closes))
    return max(math.sqrt(total), VOL_FLOOR)


def _return_label(closes: Sequence[float]) -> float:
    return closes[-1] / closes[0] - 1.0


def _squared(prediction: float, target: float) -> float:
    return (prediction - target) ** 2


def _absolute(prediction: float, target: float) -> float:
    return abs(prediction - target)


def _no_change(features: Mapping[str, float]) -> float:
    return 0.0


def _last_volatility(features: Mapping[str, float]) -> float:
    return features.get("rv_h", VOL_FLOOR)


@dataclass(frozen=True, slots=True)
class Target:
    """One learnable target: how it is labelled, forecast naively, and scored."""

    name: str
    column: str
    """Its column in the offline store's targets (and the Feast view `candle_targets`)."""
    label: Callable[[Sequence[float]], float]
    """The label from the closes of candles t, t+1, ..., t+H."""
    naive: Callable[[Mapping[str, float]], float]
    """The naive forecast from the features of t: what is served while no model earned it."""
    loss: Callable[[float, float], float]
    """`loss(prediction, target)`: what the trainer minimises and the gate and evaluation judge."""
    loss_name: str
    bounds: tuple[float, float]
    description: str
    forgetting: float
    """The default `smoothing` of an `ols` model of it (`models.py`): the weight each older
    example keeps. Returns switch regime within hours and are learned over about 200
    examples; volatility is persistent, and learned over about 1,000."""
    naive_reads: tuple[str, ...] = ()
    """The features `naive` reads (what the monitor decodes of an example)."""

    def __reduce__(self) -> tuple[Callable[[str], Target], tuple[str]]:
        return target, (self.name,)  # pickled by name: its functions are module-level


TARGETS: dict[str, Target] = {
    "return": Target(
        "return",
        "target_return",
        _return_label,
        _no_change,
        _squared,
        "squared error",
        (1.0 / MAX_MOVE - 1.0, MAX_MOVE - 1.0),
        "the simple return from the candle's close to the close H candles later",
        0.995,
    ),
    "volatility": Target(
        "volatility",
        "target_volatility",
        realised_volatility,
        _last_volatility,
        _absolute,
        "absolute error",
        (VOL_FLOOR, math.log(MAX_MOVE) * 10.0),
        "the realised volatility of the next H candles (log returns)",
        0.999,
        ("rv_h",),
    ),
}
"""Target names for RTML_TARGET and `--target`."""


def target(name: str) -> Target:
    """The target `name`, or a ConfigError naming the choices."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown target {name!r}; RTML_TARGET (or --target) is one of {sorted(TARGETS)}"
        ) from None
