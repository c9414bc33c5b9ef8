"""Where trades come from: a simulated market (here), a replay file (`files`), or a live
exchange feed (`kraken`, `feed`)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from rtml.records import Trade

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Regime:
    """How the market's returns behave for a stretch of candles.

    A candle's log return is a fresh shock of standard deviation `volatility` plus
    `persistence` times a sum over the last `MEMORY` candles: with positive persistence
    (momentum, a trending market) the sum of their returns, so moves continue; with negative
    persistence (mean reversion, a range-bound market) the sum of their shocks, so each shock
    is given back over the candles that follow.
    """

    name: str
    persistence: float
    volatility: float
    volume_scale: float


MEMORY = 5
"""Candles of the past a regime's persistence acts on."""

REGIMES = (
    Regime("calm-momentum", 0.18, 0.0010, 1.0),
    Regime("calm-reversion", -0.2, 0.0015, 1.0),
    Regime("volatile-momentum", 0.18, 0.0015, 2.5),
    Regime("volatile-reversion", -0.2, 0.0025, 2.5),
)
"""Momentum and reversion in calm and volatile markets. Reversion has the larger shocks, so
the size of recent moves alone does not tell the regimes apart: a model must learn which one
it is in."""


class SyntheticMarket:
    """A seeded multi-symbol market whose regimes switch: concept drift by construction.

    The regime is market-wide (every symbol switches at once, as crypto markets tend to move
    together); each symbol draws its own noise. Within a regime a candle's return depends on
    the symbol's recent returns (momentum or mean reversion) and volume rises with volatility,
    so recent returns and volume predict the next returns; when the regime switches, that
    relation flips or changes scale. Regimes last `min_regime`..`max_regime` candles. Trades
    arrive at random times inside each candle and their path ends at the candle's close.
    `start_prices` continues a stored history.

    >>> m = SyntheticMarket(["A", "B"], seed=7, start_ts=0, trades_per_candle=4)
    >>> first = list(m.candles_of_trades(2))
    >>> len({t.symbol for t in first}) == 2 and all(t.price > 0 for t in first)
    True
    >>> [t.ts for t in first] == sorted(t.ts for t in first)
    True
    >>> list(SyntheticMarket(["A", "B"], seed=7, start_ts=0, trades_per_candle=4)
    ...      .candles_of_trades(2)) == first
    True
    >>> [name for _, name in m.regime_log] == [m.regime.name]
    True
    """

    def __init__(
        self,
        symbols: Iterable[str],
        seed: int = 0,
        candle_seconds: int = 60,
        start_ts: float | None = None,
        trades_per_candle: float = 20,
        min_regime: int = 240,
        max_regime: int = 600,
        start_price: float = 100.0,
        start_prices: Mapping[str, float] | None = None,
    ) -> None:
        self.symbols = list(symbols)
        self.candle_seconds = candle_seconds
        now = time.time() if start_ts is None else start_ts
        self.start_ts = math.floor(now / candle_seconds) * candle_seconds
        self.trades_per_candle = trades_per_candle
        self.min_regime, self.max_regime = min_regime, max_regime
        self._rng = random.Random(seed)
        prices = start_prices or {}
        self._log_price = {
            s: math.log(prices.get(s, start_price * (1 + i))) for i, s in enumerate(self.symbols)
        }
        self._returns = {s: deque([0.0] * MEMORY, maxlen=MEMORY) for s in self.symbols}
        self._shocks = {s: deque([0.0] * MEMORY, maxlen=MEMORY) for s in self.symbols}
        self.regime: Regime = REGIMES[0]
        self._regime_left = 0
        self._next_id = dict.fromkeys(self.symbols, 0)
        self.candle_index = 0
        self.regime_log: list[tuple[float, str]] = []
        """(start time, regime name) at every switch, for plots."""

    def _switch_if_due(self, ts: float) -> None:
        if self._regime_left <= 0:
            current = self.regime if self.regime_log else None
            self.regime = self._rng.choice([r for r in REGIMES if r != current])
            self._regime_left = self._rng.randint(self.min_regime, self.max_regime)
            self.regime_log.append((ts, self.regime.name))
        self._regime_left -= 1

    def _candle_trades(self, symbol: str, start: float) -> list[Trade]:
        rng = self._rng
        regime = self.regime
        returns, shocks = self._returns[symbol], self._shocks[symbol]
        shock = rng.gauss(0.0, regime.volatility)
        past = returns if regime.persistence > 0 else shocks
        ret = shock + regime.persistence * sum(past)
        returns.append(ret)
        shocks.append(shock)
        n = max(1, int(rng.expovariate(1.0 / self.trades_per_candle)) + 1)
        times = sorted(start + rng.random() * self.candle_seconds for _ in range(n))
        open_log = self._log_price[symbol]
        trades = []
        prev = open_log
        for i, ts in enumerate(times):
            drift = open_log + ret * (i + 1) / n
            noise = rng.gauss(0.0, regime.volatility * 0.2) if i < n - 1 else 0.0
            log_p = drift + noise
            size = rng.lognormvariate(0.0, 0.5) * regime.volume_scale * (1 + 200 * abs(ret))
            self._next_id[symbol] += 1
            trades.append(
                Trade(
                    symbol,
                    str(self._next_id[symbol]),
                    round(math.exp(log_p), 6),
                    round(size, 6),
                    "buy" if log_p >= prev else "sell",
                    round(ts, 6),
                )
            )
            prev = log_p
        self._log_price[symbol] = open_log + ret
        return trades

    def candles_of_trades(self, candles: int | None = None) -> Iterator[Trade]:
        """Trades of all symbols in event-time order, for `candles` windows (None: forever)."""
        produced = 0
        while candles is None or produced < candles:
            start = self.start_ts + self.candle_index * self.candle_seconds
            self._switch_if_due(start)
            batch: list[Trade] = []
            for symbol in self.symbols:
                batch.extend(self._candle_trades(symbol, start))
            batch.sort(key=lambda t: t.ts)
            yield from batch
            self.candle_index += 1
            produced += 1
