"""Which labelled examples the trainer learns: event-time sanity, with plain values only."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtml.event_time import FutureRule
from rtml.records import BadRecord, Example
from rtml.settings import Settings

from ..features.targets import Target, target


@dataclass
class Admission:
    """The rules an example passes before it is learned; `admit` raises BadRecord with the
    reason otherwise."""

    known_symbols: frozenset[str]
    label: Target
    horizon: int
    least_span: float  # a label is H candles after its features at the earliest
    most_span: float  # and at most H candles, each silence between them bounded
    exact_span: bool  # every window has a candle (`flat`): exactly H windows
    future: FutureRule = field(repr=False)

    @classmethod
    def of(cls, settings: Settings) -> Admission:
        return cls(
            # every configured symbol: this shard's are learned, other shards' are skipped
            known_symbols=frozenset(settings.symbols).union(*settings.shards.values()),
            label=target(settings.target),
            horizon=settings.horizon,
            least_span=settings.horizon * settings.candle_seconds,
            # with `skip`, each of the H steps bridges a silence of at most RTML_MAX_SILENCE_S
            # (a longer one restarts the series): MSFT's five trading days span up to 13 days
            most_span=settings.horizon * (settings.max_silence_bound_s + settings.candle_seconds),
            exact_span=settings.gap_policy == "flat",
            # the labels it learns are one series (the learner's watermark is global)
            future=FutureRule(settings.max_future_bound_s, settings.max_silence_bound_s),
        )

    def admit(self, ex: Example, watermark: float, settled: bool) -> Example:
        """Event-time sanity: the symbol is configured, the label came a horizon after its
        features (not sooner; and not later where every window has a candle), the label time
        is not far ahead, and the target within the target's own bounds (the schema bounds
        each feature and every target alike).

        An example from the year 2286 would otherwise become every later example's "seen
        before" and the model's `trained_through`. One whose features date from long before
        its label (`ts` = 1) would be learned as if its target were the next H candles'.
        """
        if ex.symbol not in self.known_symbols:
            raise BadRecord(
                "unknown_symbol",
                f"{ex.symbol!r:.60} is not in RTML_SYMBOLS (or RTML_SHARDS); add it to learn it",
            )
        self.future.jumped("", ex.label_ts, watermark, settled, ex.symbol)
        low, high = self.label.bounds
        if not low <= ex.target <= high:  # a return's bounds admit what no volatility can be
            raise BadRecord(
                "out_of_range",
                f"{ex.symbol}@{ex.ts}: a {self.label.name} target {ex.target:g} is outside "
                f"[{low:g}, {high:g}]",
            )
        span, least = ex.label_ts - ex.ts, self.least_span
        if span < least:
            raise BadRecord(
                "leak",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; a label is "
                f"known {self.horizon} candles ({least} s) later at the earliest",
            )
        if self.exact_span and span > least * (1 + 1e-9):
            # every window has a candle (a flat one where nothing traded), so the label of a
            # `flat` market is exactly H windows after its features; with `skip` it is H
            # candles that exist, however long the market was closed between them
            raise BadRecord(
                "stale",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; with "
                f"RTML_GAP_POLICY=flat the label is {self.horizon} candles "
                f"({least} s) after them",
            )
        if span > self.most_span:
            raise BadRecord(
                "stale",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; "
                f"{self.horizon} candles span at most {self.most_span:g} s, each "
                "silence between them no longer than RTML_MAX_SILENCE_S",
            )
        return ex
