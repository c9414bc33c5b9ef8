"""Concurrent reads of one key share one call (request coalescing, "single flight").

Many clients asking for the same symbol at once would each pay a full online-store read for the
same row. Here the first request for a key makes the read; requests for that key that arrive
while it is in flight wait for it and take its result (or its error). Nothing is cached: the
next request after the read returns makes a read of its own, so a result is never older than
one read that was already under way when the request arrived.

>>> flight = SingleFlight()
>>> flight.do("BTC/USD", lambda: {"ret_1": [0.01]})
{'ret_1': [0.01]}
>>> flight.in_flight()
0
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "error", "result", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class SingleFlight(Generic[T]):
    """`do(key, fn)`: call `fn` unless a call for `key` is in flight; then share that one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[T]] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                call.waiters += 1
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            result = call.result = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return result

    def waiting(self, key: Hashable) -> int:
        """Requests waiting on the call in flight for `key` (what a test synchronises on)."""
        with self._lock:
            call = self._calls.get(key)
            return call.waiters if call is not None else 0

    def in_flight(self) -> int:
        with self._lock:
            return len(self._calls)
