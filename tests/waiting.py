"""Waiting on a condition in a test: a generous deadline, never a timing claim (speed is
measured by `make bench`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(
    condition: Callable[[], object], seconds: float, what: str, every_s: float = 0.1
) -> None:
    """Poll `condition` until it holds; fail the test saying `what` did not happen."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds:g} s waiting for {what}")
        time.sleep(every_s)
