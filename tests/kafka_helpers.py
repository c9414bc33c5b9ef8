"""Reading whole topics in tests."""

from __future__ import annotations

from rtml.kafka import read_topic as drain

__all__ = ["drain"]


def features(**values: float) -> dict[str, float]:
    """A whole feature set, as rtml writes one (every name the model reads, each within its
    bounds), with `values` over it: records missing a feature are refused."""
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS

    plain = {name: min(max(0.01, low), high) for name, (low, high) in FEATURE_BOUNDS.items()}
    return plain | values
