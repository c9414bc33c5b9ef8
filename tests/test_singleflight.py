"""Request coalescing: concurrent reads of one key share one call; nothing outlives the call."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rtml.serving.singleflight import SingleFlight
from tests.waiting import wait_until


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, 10, what, every_s=0.005)


def _concurrent(
    flight: SingleFlight[object], key: str, fn: Callable[[], object], n: int
) -> tuple[list[object], list[threading.Thread]]:
    """Start one leader in `fn`, then `n` followers on the same key; return what each got."""
    got: list[object] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            value: object = flight.do(key, fn)
        except Exception as exc:
            value = exc
        with lock:
            got.append(value)

    threads = [threading.Thread(target=call) for _ in range(n + 1)]
    threads[0].start()
    _wait_for(lambda: flight.in_flight() == 1, "the leader's call")
    for t in threads[1:]:
        t.start()
    _wait_for(lambda: flight.waiting(key) == n, "the followers to wait")
    return got, threads


def test_concurrent_requests_for_one_key_share_one_call() -> None:
    flight: SingleFlight[object] = SingleFlight()
    release = threading.Event()
    made: list[int] = []

    def read() -> object:
        made.append(1)
        release.wait(10)
        return {"reads": len(made)}

    got, threads = _concurrent(flight, "BTC/USD", read, n=7)
    release.set()
    for t in threads:
        t.join(10)
    assert len(got) == 8 and all(g == {"reads": 1} for g in got)
    assert made == [1]
    # nothing is kept: the next request reads again
    assert flight.do("BTC/USD", read) == {"reads": 2} and flight.in_flight() == 0


def test_an_error_reaches_every_waiter_and_is_not_kept() -> None:
    flight: SingleFlight[object] = SingleFlight()
    release = threading.Event()

    def fail() -> object:
        release.wait(10)
        raise ConnectionError("Redis is away")

    got, threads = _concurrent(flight, "ETH/USD", fail, n=3)
    release.set()
    for t in threads:
        t.join(10)
    assert len(got) == 4 and all(isinstance(g, ConnectionError) for g in got)
    assert flight.do("ETH/USD", lambda: "back") == "back"


def test_different_keys_do_not_wait_for_each_other() -> None:
    flight: SingleFlight[object] = SingleFlight()
    release = threading.Event()
    leader = threading.Thread(target=flight.do, args=("A", lambda: release.wait(10)))
    leader.start()
    _wait_for(lambda: flight.in_flight() == 1, "the call for A")
    assert flight.do("B", lambda: "b") == "b"  # returns while A's call is still in flight
    assert flight.in_flight() == 1
    release.set()
    leader.join(10)
    assert flight.in_flight() == 0


def test_requests_one_after_another_each_make_their_call() -> None:
    flight: SingleFlight[int] = SingleFlight()
    counter = iter(range(100))
    assert [flight.do("k", lambda: next(counter)) for _ in range(3)] == [0, 1, 2]
    assert flight.in_flight() == 0
