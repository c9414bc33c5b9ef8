"""The validation gate: whether a candidate version may become the champion that is served.

The gate compares errors over the same examples, each scored as serving would have scored it:
the candidate's prediction is the one the model made when the example's features were new,
before any label overlapping its own was learned (see `Learner.recent`). A candidate passes
only when it beats the naive baseline (no change) *and* the champion by more than `z` block
standard errors of the paired differences. Targets of consecutive examples overlap, so errors
are correlated: blocks of consecutive examples, not single examples, are the samples.

>>> naive = [0.010, 0.012, 0.011, 0.009] * 25
>>> gate([e * 0.8 for e in naive], naive, None, max_mae=0.05, z=2.0).promote
True
>>> gate([e + 0.001 for e in naive], naive, None, max_mae=0.05, z=2.0).reason[:44]
'MAE 0.0115 does not beat the naive baseline '
>>> better = [e * 0.8 for e in naive]
>>> gate(better, naive, [e * 0.79 for e in naive], max_mae=0.05, z=2.0).promote
False
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_EXAMPLES = 50
"""Fewer scored examples than this decide nothing."""


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Paired:
    """The mean of paired differences `a - b` and its block standard error."""

    mean: float
    se: float
    blocks: int
    better: int
    """Blocks where `a` erred less than `b`."""

    def beats(self, z: float) -> bool:
        """`a` erred less than `b` by more than `z` standard errors."""
        return self.mean + z * self.se < 0

    def loses(self, z: float) -> bool:
        """`a` erred more than `b` by more than `z` standard errors."""
        return self.mean - z * self.se > 0


def paired(a: Sequence[float], b: Sequence[float], blocks: int = 10) -> Paired:
    """Compare two error series over the same examples, in `blocks` consecutive blocks.

    >>> p = paired([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 4.0], blocks=2)
    >>> p.mean, round(p.se, 3), p.blocks, p.better
    (-0.5, 0.0, 2, 2)
    """
    n = len(a)
    if n != len(b):
        raise ValueError(f"paired errors need equal lengths, got {n} and {len(b)}")
    blocks = max(1, min(blocks, n))
    if n == 0:
        return Paired(math.nan, math.nan, 0, 0)
    size = n // blocks
    means = []
    for i in range(blocks):
        end = n if i == blocks - 1 else (i + 1) * size
        part = range(i * size, end)
        means.append(sum(a[j] - b[j] for j in part) / len(part))
    mean = sum(a[j] - b[j] for j in range(n)) / n
    se = statistics.stdev(means) / math.sqrt(blocks) if blocks > 1 else math.inf
    return Paired(mean, se, blocks, sum(m < 0 for m in means))


def gate(
    candidate: Sequence[float],
    naive: Sequence[float],
    champion: Sequence[float] | None,
    max_mae: float,
    z: float,
    z_champion: float | None = None,
) -> GateDecision:
    """Errors of the candidate, the naive baseline and the champion on the same examples.

    A candidate passes when it has at least `MIN_EXAMPLES` finite errors, its MAE is at most
    `max_mae`, and it beats the naive baseline by `z` block standard errors and the champion
    by `z_champion` (`z` by default).
    """
    if len(candidate) < MIN_EXAMPLES:
        return GateDecision(False, f"only {len(candidate)} examples scored as served yet")
    mae = sum(candidate) / len(candidate)
    if not math.isfinite(mae):
        return GateDecision(False, "no finite MAE yet")
    if mae > max_mae:
        return GateDecision(False, f"MAE {mae:.3g} is above MAX_MAE {max_mae:.3g}")
    vs_naive = paired(candidate, naive)
    if not vs_naive.beats(z):
        return GateDecision(
            False,
            f"MAE {mae:.3g} does not beat the naive baseline {sum(naive) / len(naive):.3g} "
            f"(difference {vs_naive.mean:.2g} +- {vs_naive.se:.2g})",
        )
    if champion is not None:
        vs_champion = paired(candidate, champion)
        champion_mae = sum(champion) / len(champion)
        if not math.isfinite(champion_mae):
            return GateDecision(True, f"MAE {mae:.3g} passed; the champion's error is infinite")
        if not vs_champion.beats(z if z_champion is None else z_champion):
            return GateDecision(
                False,
                f"MAE {mae:.3g} does not beat the champion's {champion_mae:.3g} "
                f"(difference {vs_champion.mean:.2g} +- {vs_champion.se:.2g})",
            )
    return GateDecision(
        True, f"MAE {mae:.3g} passed ({vs_naive.better}/{vs_naive.blocks} blocks beat naive)"
    )


def champion_fails(champion: Sequence[float], naive: Sequence[float], z: float) -> bool:
    """The champion errs more than the naive baseline by `z` block standard errors: serving
    the baseline instead is better.

    >>> champion_fails([0.01] * 60, [0.01] * 60, z=2.0)
    False
    >>> champion_fails([0.02 + 0.001 * (i % 3) for i in range(60)], [0.01] * 60, z=2.0)
    True
    """
    if len(champion) < MIN_EXAMPLES:
        return False
    return paired(champion, naive).loses(z)
