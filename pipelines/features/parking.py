"""Which symbols a feature pipeline member holds, on which `trades` partition, and what it put
aside of the symbols of partitions that left.

What is put aside (each symbol's open windows, and rows not yet stored) is taken up again only
when those partitions come back from a broker that forgot `trades`: the new topic cannot replay
their trades. After any other rebalance the new owner replays them from the commit, and what
was put aside goes.
"""

from __future__ import annotations

import logging

from .processor import FeatureProcessor, Outputs, Parked

log = logging.getLogger(__name__)


class Parking:
    def __init__(self) -> None:
        self.resumed: dict[str, int] = {}  # symbol -> the trades partition it resumed on
        # symbol -> its partition, for what the sink still buffers of partitions that left
        self.held: dict[str, int] = {}
        self.parked: dict[str, Parked] = {}
        self.rows = Outputs()  # what they had not stored yet
        self.trades_id: str | None = None  # the `trades` incarnation they were parked in

    def symbols_of(self, partitions: set[int]) -> set[str]:
        return {s for s, p in self.resumed.items() if p in partitions}

    def resume(self, symbol: str, partition: int) -> None:
        self.resumed[symbol] = self.held[symbol] = partition

    def keep_held(self, assignment: set[int]) -> None:
        self.held = {s: p for s, p in self.held.items() if p in assignment}

    def leave(self, gone: set[str], processor: FeatureProcessor, rows: Outputs) -> None:
        """The symbols of partitions that left: their open windows and unstored `rows` aside."""
        for symbol in gone:
            if (parked := processor.park(symbol)) is not None:
                self.parked[symbol] = parked
            self.held[symbol] = self.resumed.pop(symbol)
        self.rows.extend(rows)

    def unpark(
        self, trades_id: str | None, assignment: set[int], processor: FeatureProcessor
    ) -> Outputs:
        """Symbols of partitions that are back after a broker restart resume where they were,
        open windows and all; the rows they had not stored are returned, to be written
        before they go on. After any other rebalance what was parked goes."""
        parked, self.parked = self.parked, {}
        rows, self.rows = self.rows, Outputs()
        if self.trades_id is None or trades_id == self.trades_id:
            self.trades_id = trades_id
            return Outputs()
        self.trades_id = trades_id
        back = {s for s, p in self.held.items() if p in assignment and s in parked}
        for symbol in back:
            processor.unpark(symbol, parked[symbol])
            self.resumed[symbol] = self.held[symbol]
        log.info("%d symbols resume as they were before the broker forgot `trades`", len(back))
        return _rows_of(rows, back)


def _rows_of(rows: Outputs, symbols: set[str]) -> Outputs:
    """The rows of `symbols` in `rows`."""
    return Outputs(
        candles=[c for c in rows.candles if c.symbol in symbols],
        sources=[s for c, s in zip(rows.candles, rows.sources, strict=True) if c.symbol in symbols],
        features=[r for r in rows.features if r.symbol in symbols],
        examples=[e for e in rows.examples if e.symbol in symbols],
    )
