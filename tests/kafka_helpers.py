"""Reading whole topics in tests."""

from __future__ import annotations

from rtml.kafka import read_topic as drain

__all__ = ["drain"]
