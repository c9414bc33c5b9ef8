"""The online store's circuit breaker: one probe while Redis is away, no request waits on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StoreDown(ConnectionError):
    """The online store failed moments ago and has not answered a probe since."""


class OutageBreaker:
    """After the online store fails, its error is answered at once, and a thread probes the
    store until it answers again: `GET /predict` reads on the event loop, and a hung store
    must not hold every request for its timeout.

    >>> calls = []
    >>> breaker = OutageBreaker(lambda: calls.append(1), (ConnectionError,), every_s=0.01)
    >>> breaker.check()  # closed: go ahead
    >>> breaker.failed(ConnectionError("refused"))
    >>> breaker.wait_closed(5.0)  # the probe answered
    True
    >>> breaker.check()
    """

    def __init__(
        self,
        probe: Callable[[], None],
        errors: tuple[type[BaseException], ...],
        every_s: float = 0.2,
    ) -> None:
        self.probe, self.errors, self.every_s = probe, errors, every_s
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._closed.set()

    def check(self) -> None:
        error = self.error
        if error is not None:  # a new exception each time: re-raising one would grow its traceback
            raise StoreDown(str(error))

    def failed(self, error: BaseException) -> None:
        with self._lock:
            if self.error is not None:
                return  # a probe is already running
            self.error = error
            self._closed.clear()
        threading.Thread(target=self._probe, name="online-store-probe", daemon=True).start()

    def _probe(self) -> None:
        while True:
            time.sleep(self.every_s)
            try:
                self.probe()
            except self.errors as exc:
                self.error = exc
                continue
            except Exception as exc:  # an unexpected answer is still not "back"
                log.warning("online store probe: %s", exc)
                continue
            with self._lock:
                self.error = None
                self._closed.set()
            return

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)
