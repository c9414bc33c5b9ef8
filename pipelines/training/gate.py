"""The validation gate: whether a candidate version may take the place of what is served.

What is served is the champion, or the naive forecast while there is none (the incumbent). The
gate compares losses over the same examples, each scored as serving would have scored it: the
candidate's prediction is the one the model made when the example's features were new, before
any label overlapping its own was learned (see `Learner.recent`). Targets of consecutive
examples overlap, so losses are correlated: blocks of consecutive examples, not single
examples, are the samples, and the paired difference's mean over its block standard error is
read as a Student t with `blocks - 1` degrees of freedom.

The trainer tests at every checkpoint, hundreds of times a run, so a fixed margin would let a
version no better than the incumbent through sooner or later. The gate spends a budget
instead: the k-th test against one incumbent is made at level `alpha * 6 / (pi^2 k^2)`, and
those levels sum to `alpha`. However many checkpoints a run has, and however they depend on
each other (a union bound), the chance that a version no better than the incumbent is ever
promoted over it is at most `alpha` (RTML_GATE_ALPHA), for as long as that incumbent serves.

>>> naive = [0.010, 0.012, 0.011, 0.009, 0.0105] * 40
>>> gate([e * 0.8 for e in naive], naive, None, z=spent_z(0.05, 1)).promote
True
>>> alike = [e * (1 + 0.05 * (i % 3 - 1)) for i, e in enumerate(naive)]
>>> gate(alike, naive, None, z=spent_z(0.05, 1)).reason[:41]
'loss 0.0105 does not beat the naive forec'
>>> better = [e * 0.8 for e in naive]
>>> gate(better, naive, [e * 0.79 for e in naive], z=spent_z(0.05, 1)).promote
False

The champion is scored only on examples it has not learned from (NaN elsewhere): on the
examples before its training cut its losses would flatter it, and no candidate could catch
up with a champion that stopped following a drifting market.

>>> unseen = [math.nan] * 160 + [e * 0.79 for e in naive[:40]]
>>> gate(better, naive, unseen, z=2.0).reason.split("; ")[1]
'only 40 examples the champion has not learned from, too few to compare: it stays'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

MIN_EXAMPLES = 50
"""Fewer scored examples than this decide nothing."""

BLOCKS = 20
"""Blocks of consecutive examples a comparison is made of."""

LATELY = (100,)
"""The newest examples looked at on their own as well: a version that errs more than naive
on the newest of them is failing now (the market turned), whatever its earlier record says."""


def spent_z(alpha: float, test: int, blocks: int = BLOCKS) -> float:
    """The margin of the `test`-th test (1, 2, ...) against one incumbent, in block standard
    errors: the Student t quantile at `1 - alpha * 6 / (pi^2 test^2)`.

    >>> round(spent_z(0.05, 1), 2), round(spent_z(0.05, 10), 2), round(spent_z(0.05, 200), 2)
    (1.99, 4.1, 6.86)
    """
    if alpha >= 1:
        return -math.inf  # no gate: every version tested passes
    level = alpha * 6.0 / (math.pi**2 * max(test, 1) ** 2)
    return float(student_t.ppf(1.0 - level, max(blocks - 1, 1)))


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
        return z == -math.inf or self.mean + z * self.se < 0

    def sigmas(self) -> str:
        """By how many standard errors `a` erred less than `b`."""
        return f"{-self.mean / self.se:.1f}" if self.se > 0 else "inf" if self.mean < 0 else "0"

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


def _unfit(
    candidate: Sequence[float], naive: Sequence[float], z_lately: float
) -> GateDecision | None:
    """Why a candidate cannot pass whatever it is compared with (too few or infinite losses,
    or behind the naive forecast on the newest examples), or None."""
    if len(candidate) < MIN_EXAMPLES:
        return GateDecision(False, f"only {len(candidate)} examples scored as served yet")
    loss = sum(candidate) / len(candidate)
    if not math.isfinite(loss):
        return GateDecision(False, "no finite loss yet")
    failing = loses_lately(candidate, naive, z_lately)
    if failing:
        return GateDecision(
            False, f"loss {loss:.3g} errs more than the naive forecast's on the newest {failing}"
        )
    return None


def gate(
    candidate: Sequence[float],
    naive: Sequence[float],
    champion: Sequence[float] | None,
    z: float,
    z_lately: float = 2.0,
) -> GateDecision:
    """Losses of the candidate, the naive forecast and the champion on the same examples.

    A candidate passes when it has at least `MIN_EXAMPLES` finite losses, beats the incumbent
    (the champion where there is one, else the naive forecast) by `z` block standard errors,
    and does not err more than the naive forecast on the newest examples by `z_lately`.
    """
    refused = _unfit(candidate, naive, z_lately)
    if refused is not None:
        return refused
    loss = sum(candidate) / len(candidate)
    if champion is None:
        vs_naive = paired(candidate, naive, BLOCKS)
        if not vs_naive.beats(z):
            return GateDecision(
                False,
                f"loss {loss:.3g} does not beat the naive forecast {sum(naive) / len(naive):.3g} "
                f"by {z:.2f} SE (difference {vs_naive.mean:.2g} +- {vs_naive.se:.2g})",
            )
        return GateDecision(
            True,
            f"loss {loss:.3g} beats the naive forecast by {vs_naive.sigmas()} SE "
            f"(needed {z:.2f}; {vs_naive.better}/{vs_naive.blocks} blocks better)",
        )
    theirs, ours = unseen_by(champion, candidate)
    if len(theirs) < MIN_EXAMPLES:
        return GateDecision(
            False,
            f"loss {loss:.3g}; only {len(theirs)} examples the champion has not learned from, "
            "too few to compare: it stays",
        )
    champion_loss = sum(theirs) / len(theirs)
    if not math.isfinite(champion_loss):
        return GateDecision(True, f"loss {loss:.3g}; the champion's loss is infinite")
    vs_champion = paired(ours, theirs, BLOCKS)
    if not vs_champion.beats(z):
        return GateDecision(
            False,
            f"loss {sum(ours) / len(ours):.3g} does not beat the champion's {champion_loss:.3g} "
            f"by {z:.2f} SE (difference {vs_champion.mean:.2g} +- {vs_champion.se:.2g})",
        )
    return GateDecision(
        True,
        f"loss {sum(ours) / len(ours):.3g} beats the champion's {champion_loss:.3g} by "
        f"{vs_champion.sigmas()} SE (needed {z:.2f})",
    )


def refresh(
    candidate: Sequence[float],
    naive: Sequence[float],
    champion: Sequence[float] | None,
    z: float,
) -> GateDecision:
    """Whether a fresher checkpoint of the learner that serves may take its place.

    The learner earned the place by the test above: its losses as served, which are the
    losses of a model refreshed every horizon, beat the incumbent's. Its next checkpoints are
    the same learner, knowing more; they follow the market as the test assumed, unless one
    errs more than the champion on the examples the champion has not learned from, by `z`
    block standard errors. Where the market turned, a fresher checkpoint is let through even
    if it errs more than the naive forecast for now: it has seen more of the turn than the
    one serving, and whether the naive forecast should serve instead is the retirement
    test's to say (`champion_fails`).

    >>> naive = [0.010, 0.012, 0.011, 0.009, 0.0105] * 40
    >>> refresh([e * 0.9 for e in naive], naive, [e * 0.9 for e in naive], z=2.0).promote
    True
    >>> refresh([e * 1.5 for e in naive], naive, [e * 0.9 for e in naive], z=2.0).promote
    False
    """
    if len(candidate) < MIN_EXAMPLES:
        return GateDecision(False, f"only {len(candidate)} examples scored as served yet")
    loss = sum(candidate) / len(candidate)
    if not math.isfinite(loss):
        return GateDecision(False, "no finite loss yet")
    if champion is not None and z >= 0:  # a negative margin: every refresh is let through
        theirs, ours = unseen_by(champion, candidate)
        if len(theirs) >= MIN_EXAMPLES and paired(ours, theirs, BLOCKS).loses(z):
            return GateDecision(
                False,
                f"loss {sum(ours) / len(ours):.3g} errs more than the champion's "
                f"{sum(theirs) / len(theirs):.3g} it would refresh",
            )
    return GateDecision(True, f"loss {loss:.3g}: a fresher checkpoint of the learner that serves")


def champion_fails(champion: Sequence[float], naive: Sequence[float], z: float) -> bool:
    """The champion errs more than the naive forecast by `z` block standard errors: serving
    the naive forecast instead is better.

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
    """The champion's losses and `other`'s on the examples the champion has not learned
    from (the others are NaN in `champion`)."""
    keep = [i for i, e in enumerate(champion) if not math.isnan(e)]
    return [champion[i] for i in keep], [other[i] for i in keep]
