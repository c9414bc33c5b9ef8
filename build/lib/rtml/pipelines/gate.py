"""The validation gate: whether a candidate version may become the champion that is served.

>>> gate(0.010, 0.012, None, max_mae=0.05, tolerance=0.05).promote
True
>>> gate(0.013, 0.012, None, max_mae=0.05, tolerance=0.05).reason
'rolling MAE 0.013 does not beat the naive baseline 0.012'
>>> gate(0.0110, 0.02, 0.0100, max_mae=0.05, tolerance=0.05).promote
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str


def gate(
    candidate_mae: float,
    baseline_mae: float,
    champion_mae: float | None,
    max_mae: float,
    tolerance: float,
) -> GateDecision:
    """All errors are rolling MAEs over the same recent examples.

    A candidate passes when its error is finite and at most `max_mae`, beats the naive
    baseline, and is not worse than the champion's by more than `tolerance` (a fraction).
    """
    if not math.isfinite(candidate_mae):
        return GateDecision(False, "no finite rolling MAE yet")
    if candidate_mae > max_mae:
        return GateDecision(
            False, f"rolling MAE {candidate_mae:.3g} is above MAX_MAE {max_mae:.3g}"
        )
    if candidate_mae >= baseline_mae:
        return GateDecision(
            False,
            f"rolling MAE {candidate_mae:.3g} does not beat the naive baseline {baseline_mae:.3g}",
        )
    if champion_mae is not None and math.isfinite(champion_mae):
        limit = champion_mae * (1 + tolerance)
        if candidate_mae > limit:
            return GateDecision(
                False,
                f"rolling MAE {candidate_mae:.3g} is worse than the champion's "
                f"{champion_mae:.3g} by more than {tolerance:.0%}",
            )
    return GateDecision(True, f"rolling MAE {candidate_mae:.3g} passed")
