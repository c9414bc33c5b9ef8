"""Trades to candles, features and labelled examples: the pure step both runners share.

The live feature pipeline feeds it trades from Kafka; backfill feeds it trades from a file or
the simulator. Neither does anything the other does not, so training and serving see the same
features.

A label for the candle closing at t is made only when candle t+H closes, and an example pairs
it with the features of t, known at t: nothing from the future leaks into a feature.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rtml.records import Example, FeatureRow, Trade
from rtml.settings import Settings

from .candles import CandleBuilder
from .indicators import HISTORY, Candle, compute_features, model_inputs
from .targets import TARGETS, Target, target


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@dataclass
class Outputs:
    candles: list[Candle] = field(default_factory=list)
    # the (partition, offset) of the trade that closed each candle, None if none did
    sources: list[tuple[int, int] | None] = field(default_factory=list)
    features: list[FeatureRow] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.candles.extend(other.candles)
        self.sources.extend(other.sources)
        self.features.extend(other.features)
        self.examples.extend(other.examples)

    def __bool__(self) -> bool:
        return bool(self.candles or self.features or self.examples)


@dataclass
class Parked:
    """What a processor held for one symbol, put aside (`FeatureProcessor.park`)."""

    series: Any
    state: Any


@dataclass
class _SymbolState:
    history: deque[Candle]
    # (close time, close price, features or None during warm-up) of the last H candles
    pending: deque[tuple[float, float, dict[str, float] | None]]


class FeatureProcessor:
    """Stateful per symbol; feed it trades (or closed candles) in arrival order."""

    def __init__(
        self,
        candle_seconds: int,
        allowed_lateness: float,
        horizon: int,
        max_future_s: float = math.inf,
        gap_policy: str = "flat",
        max_silence_s: float | None = None,
        label: Target = TARGETS["return"],
        price_resets: Mapping[str, float] | None = None,
    ) -> None:
        self.horizon = horizon
        self.target = label
        self.builder = CandleBuilder(
            candle_seconds,
            allowed_lateness,
            max_future_s=max_future_s,
            gap_policy=gap_policy,
            max_silence_s=max_silence_s,
            price_resets=price_resets,
        )
        self._state: dict[str, _SymbolState] = {}

    @classmethod
    def of(cls, settings: Settings) -> FeatureProcessor:
        """The processor `settings` describe: candle length, lateness, horizon, gap policy and
        the event-time bounds."""
        return cls(
            settings.candle_seconds,
            settings.allowed_lateness_s,
            settings.horizon,
            settings.max_future_s,
            settings.gap_policy,
            max_silence_s=settings.max_silence_s,
            label=target(settings.target),
            price_resets=settings.price_resets,
        )

    def on_trade(
        self, trade: Trade, position: tuple[int, int] | None = None, into: Outputs | None = None
    ) -> Outputs:
        """What `trade` led to, added to `into` (a new Outputs by default) and returned: a
        loop that gathers a batch's outputs passes its own, and most trades add nothing.
        Raises BadRecord for late and duplicate trades."""
        out = Outputs() if into is None else into
        candles = self.builder.add(trade, position)
        return self.on_candles(candles, position, out) if candles else out

    def close_idle(self, idle_s: float) -> Outputs:
        """Close the windows of symbols that have not traded for `idle_s` (clock time)."""
        return self.on_candles(self.builder.close_idle(idle_s))

    def flush(self, watermark: float) -> Outputs:
        """Close the windows a watermark of `watermark` closes (at the end of a finite input)."""
        return self.on_candles(self.builder.advance(watermark))

    def _state_of(self, symbol: str) -> _SymbolState:
        state = self._state[symbol] = _SymbolState(
            deque(maxlen=HISTORY), deque(maxlen=self.horizon + 1)
        )
        return state

    def _reset_between(self, last: Candle, candle: Candle) -> bool:
        reset = self.builder.price_resets.get(candle.symbol)
        return reset is not None and last.start < reset <= candle.start

    def on_candles(
        self,
        candles: list[Candle],
        source: tuple[int, int] | None = None,
        into: Outputs | None = None,
    ) -> Outputs:
        out, max_gap = Outputs() if into is None else into, self.builder.max_silence_bound_s
        out.candles.extend(candles)
        out.sources.extend([source] * len(candles))
        for candle in candles:
            state = self._state.get(candle.symbol)
            if state and state.history and candle.start - state.history[-1].end > max_gap:
                state = None  # a silence the series does not bridge: it starts again
            elif state and state.history and self._reset_between(state.history[-1], candle):
                state = None  # a declared redenomination: returns across it mean nothing
            if state is None:
                state = self._state_of(candle.symbol)
            state.history.append(candle)
            values = compute_features(state.history, self.horizon)
            if values is not None:
                out.features.append(FeatureRow(candle.symbol, candle.end, values, source))
            state.pending.append((candle.end, candle.close, values))
            if len(state.pending) == self.horizon + 1:
                ts, _, features = state.pending[0]
                if features is not None:
                    closes = [close for _, close, _ in state.pending]
                    out.examples.append(
                        Example(
                            candle.symbol,
                            ts,
                            candle.end,
                            model_inputs(features),
                            self.target.label(closes),
                        )
                    )
        return out

    def forget(self, symbol: str) -> None:
        """Drop `symbol`'s candles, windows and history (its partition moved elsewhere)."""
        self.builder.forget(symbol)
        self._state.pop(symbol, None)

    def park(self, symbol: str) -> Parked | None:
        """Let go of `symbol` as `forget` does, but return what was held: when its partition
        comes back because the broker forgot the topic (and with it the trades of windows
        still open), `unpark` resumes it where it was."""
        series = self.builder.take(symbol)
        state = self._state.pop(symbol, None)
        return None if series is None and state is None else Parked(series, state)

    def unpark(self, symbol: str, parked: Parked) -> None:
        self.forget(symbol)
        if parked.series is not None:
            self.builder.put(symbol, parked.series)
        if parked.state is not None:
            self._state[symbol] = parked.state

    def resume(self, symbol: str, candles: list[Candle]) -> None:
        """Resume `symbol` from its newest stored candles (oldest first), warm-up ones too.

        Its history and the features of its last H candles are computed again from them, as
        they were when those candles closed: what comes next is what an uninterrupted run
        would have built.
        """
        self.forget(symbol)
        if not candles:
            return
        state = self._state_of(symbol)
        for candle in candles[-(HISTORY + self.horizon) :]:
            state.history.append(candle)
            features = compute_features(state.history, self.horizon)
            state.pending.append((candle.end, candle.close, features))
        self.builder.restore(symbol, candles[-1].end, candles[-1].close)

    def restore(self, symbol: str, rows: list[tuple[float, dict[str, float]]]) -> None:
        """Resume `symbol` from its newest stored feature rows (oldest first).

        Rows carry each candle's close and volume, which is all the history that features and
        labels read of past candles.
        """
        if not rows:
            return
        seconds = self.builder.seconds
        state = self._state_of(symbol)
        for ts, values in rows[-HISTORY:]:
            close = values["close"]
            state.history.append(
                Candle(
                    symbol, ts - seconds, ts, close, close, close, close, values["volume"], close, 0
                )
            )
        for ts, values in rows[-self.horizon :]:
            state.pending.append((ts, values["close"], values))
        last_ts, last = rows[-1]
        self.builder.restore(symbol, last_ts, last["close"])
