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

The champion is scored only on examples it has not learned from (NaN elsewhere): on the
examples before its training cut its errors would flatter it, and no candidate could catch
up with a champion that stopped following a drifting market.

>>> unseen = [math.nan] * 60 + [e * 0.79 for e in naive[:40]]
>>> gate(better, naive, unseen, max_mae=0.05, z=2.0).reason.split("; ")[1]
'only 40 examples the champion has not learned from, too few to compare: it stays'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_EXAMPLES = 50
"""Fewer scored examples than this decide nothing."""

LATELY = (100,)
"""The newest examples looked at on their own as well: a version that errs more than naive
on the newest of them is failing now (the market turned), whatever its earlier record says."""


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
    failing = loses_lately(candidate, naive, z)
    if failing:
        return GateDecision(
            False,
            f"MAE {mae:.3g} beats the naive baseline over the window but errs more than it on "
            f"the newest {failing} examples",
        )
    passed = f"MAE {mae:.3g} passed ({vs_naive.better}/{vs_naive.blocks} blocks beat naive)"
    if champion is not None:
        theirs, ours = unseen_by(champion, candidate)
        if len(theirs) < MIN_EXAMPLES:
            return GateDecision(
                False,
                f"{passed}; only {len(theirs)} examples the champion has not learned from, "
                "too few to compare: it stays",
            )
        vs_champion = paired(ours, theirs)
        champion_mae = sum(theirs) / len(theirs)
        if not math.isfinite(champion_mae):
            return GateDecision(True, f"{passed}; the champion's error is infinite")
        if not vs_champion.beats(z if z_champion is None else z_champion):
            return GateDecision(
                False,
                f"MAE {mae:.3g} does not beat the champion's {champion_mae:.3g} "
                f"(difference {vs_champion.mean:.2g} +- {vs_champion.se:.2g})",
            )
    return GateDecision(True, passed)


def champion_fails(champion: Sequence[float], naive: Sequence[float], z: float) -> bool:
    """The champion errs more than the naive baseline by `z` block standard errors: serving
    the baseline instead is better.

    >>> champion_fails([0.01] * 60, [0.01] * 60, z=2.0)
    False
    >>> champion_fails([0.02 + 0.001 * (i % 3) for i in range(60)], [0.01] * 60, z=2.0)
    True
    """
    theirs, naive_unseen = unseen_by(champion, naive)
    return bool(loses_lately(theirs, naive_unseen, z))


def loses_lately(a: Sequence[float], b: Sequence[float], z: float) -> int:
    """How many of the newest examples `a` errs more than `b` on by `z` block standard errors
    (the newest `LATELY`, then all of them); 0 when it does not.

    >>> calm, turned = [0.01] * 400, [0.03 + 0.001 * (i % 3) for i in range(100)]
    >>> loses_lately(calm + turned, [0.01] * 400 + [0.01] * 100, z=2.0)
    100
    >>> loses_lately([0.01] * 500, [0.01] * 500, z=2.0)
    0
    """
    if len(a) < MIN_EXAMPLES or z < 0:  # a negative margin: every version is let through
        return 0
    for n in (*(n for n in LATELY if n < len(a)), len(a)):
        if paired(a[-n:], b[-n:]).loses(z):
            return n
    return 0


def unseen_by(champion: Sequence[float], other: Sequence[float]) -> tuple[list[float], list[float]]:
    """The champion's errors and `other`'s on the examples the champion has not learned
    from (the others are NaN in `champion`)."""
    keep = [i for i, e in enumerate(champion) if not math.isnan(e)]
    return [champion[i] for i in keep], [other[i] for i in keep]
