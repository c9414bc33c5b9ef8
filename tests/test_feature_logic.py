"""Trades, candles, features and labels: the pure logic, without services."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rtml.pipelines.features.candles import CandleBuilder
from rtml.pipelines.features.indicators import FEATURE_NAMES, HISTORY, WARMUP, model_inputs
from rtml.pipelines.features.processor import FeatureProcessor, Outputs
from rtml.pipelines.features.sink import candles_frame, read_candles
from rtml.pipelines.market.files import replay
from rtml.pipelines.market.sessions import candle_profile
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.records import BadRecord, Trade, parse_trade

GOOD = {"symbol": "BTC/USD", "trade_id": "1", "price": 10.0, "size": 1.0, "side": "buy", "ts": 1.0}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_json"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "price"}).encode(), "missing_field"),
        (json.dumps({**GOOD, "price": "abc"}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "size": [1]}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "side": "hold"}).encode(), "wrong_type"),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "wrong_type"),
        (b'{"symbol":"X","trade_id":"1","price":NaN,"size":1,"side":"buy","ts":1}', "not_finite"),
        (
            b'{"symbol":"X","trade_id":"1","price":1,"size":Infinity,"side":"buy","ts":1}',
            "not_finite",
        ),
        (json.dumps({**GOOD, "price": 0}).encode(), "non_positive"),
        (json.dumps({**GOOD, "size": -2}).encode(), "non_positive"),
    ],
)
def test_bad_trades_are_rejected_with_their_class(raw: bytes, kind: str) -> None:
    with pytest.raises(BadRecord) as info:
        parse_trade(raw)
    assert info.value.kind == kind


def test_iso_timestamps_are_accepted() -> None:
    trade = parse_trade({**GOOD, "ts": "2026-01-01T00:00:30Z"})
    assert trade.ts == 1767225630.0


def _t(symbol: str, tid: int, price: float, ts: float, size: float = 1.0) -> Trade:
    return Trade(symbol, str(tid), price, size, "buy", ts)


def test_late_and_duplicate_trades_are_rejected() -> None:
    b = CandleBuilder(seconds=60, allowed_lateness=10)
    b.add(_t("X", 1, 10, 5))
    b.add(_t("X", 2, 11, 65))  # watermark 55: window [0, 60) still open
    assert b.add(_t("X", 3, 12, 50)) == []  # late but within the allowed lateness
    with pytest.raises(BadRecord, match="duplicate"):
        b.add(_t("X", 2, 11, 66))
    closed = b.add(_t("X", 4, 13, 75))  # watermark 65 closes [0, 60)
    assert [(c.open, c.high, c.close, c.trades) for c in closed] == [(10, 12, 12, 2)]
    with pytest.raises(BadRecord) as info:
        b.add(_t("X", 5, 9, 59))
    assert info.value.kind == "late"


def test_a_duplicate_within_its_window_is_refused_after_100k_trades_and_ids_are_freed() -> None:
    """A trade sent twice is refused however many trades came between, and a symbol keeps the
    ids of its open windows only: once they close, its memory of ids is empty."""
    b = CandleBuilder(seconds=60, allowed_lateness=5)
    b.add(_t("X", 0, 10, 1.0))
    for i in range(1, 100_001):
        b.add(_t("X", i, 10 + i % 7, 1.0 + 50.0 * i / 100_000))
    with pytest.raises(BadRecord, match="duplicate"):
        b.add(_t("X", 0, 10, 1.0))
    assert sum(len(w.ids) for w in b._series["X"].windows.values()) == 100_001
    b.add(_t("X", 100_001, 12, 70.0))  # watermark 65 closes [0, 60)
    assert sum(len(w.ids) for w in b._series["X"].windows.values()) == 1
    with pytest.raises(BadRecord) as info:  # sent again once its window closed: late
        b.add(_t("X", 0, 10, 1.0))
    assert info.value.kind == "late"


def test_gaps_are_filled_with_flat_candles_and_vwap_is_volume_weighted() -> None:
    b = CandleBuilder(seconds=60, allowed_lateness=0)
    b.add(_t("X", 1, 10, 1, size=1))
    b.add(_t("X", 2, 20, 2, size=3))
    first = b.add(_t("X", 3, 30, 185))
    assert [(c.start, c.close, c.volume) for c in first] == [(0, 20, 4)]
    assert first[0].vwap == pytest.approx((10 + 60) / 4)
    # the gap is filled when the next real candle closes
    closed = b.add(_t("X", 4, 40, 245))
    assert [(c.start, c.close, c.volume) for c in closed] == [
        (60, 20, 0),
        (120, 20, 0),
        (180, 30, 1),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_candles_equal_each_window_computed_from_its_trades_in_any_order(seed: int) -> None:
    """Symbols interleaved, each one's trades shuffled within the allowed lateness: every
    window's candle is what its trades say (open and close by time, high, low, volume, VWAP,
    count), empty windows are flat at the previous close, and nothing is refused."""
    rng = random.Random(seed)
    seconds, lateness = 60, 120
    trades: dict[str, list[Trade]] = {}
    for symbol in ("X", "Y", "Z"):
        ts, price, made = 1_700_000_000.0 + rng.uniform(0, 60), 100.0, []
        for i in range(400):
            ts += rng.choice([0.0, rng.uniform(0, 20), rng.uniform(0, 200)])
            price *= math.exp(rng.gauss(0, 0.01))
            made.append(Trade(symbol, str(i), price, rng.uniform(0.0, 2.0), "buy", ts))
        # shuffled within a lateness window: a trade overtakes ones at most `lateness` older
        trades[symbol] = sorted(made, key=lambda t: t.ts + rng.uniform(0, lateness * 0.9))
    arrival = [t for group in zip(*trades.values(), strict=True) for t in group]
    builder = CandleBuilder(seconds=seconds, allowed_lateness=lateness)
    built = [c for t in arrival for c in builder.add(t)] + builder.advance(math.inf)
    for symbol, of_symbol in trades.items():
        windows: dict[float, list[Trade]] = {}
        for t in of_symbol:
            windows.setdefault(math.floor(t.ts / seconds) * seconds, []).append(t)
        expected, prev_close = [], None
        for start in range(int(min(windows)), int(max(windows)) + seconds, seconds):
            window = sorted(windows.get(float(start), []), key=lambda t: t.ts)
            if not window:
                assert prev_close is not None
                expected.append((start, prev_close, prev_close, prev_close, prev_close, 0.0, 0))
                continue
            volume = sum(t.size for t in window)
            prices = [t.price for t in window]
            expected.append(
                (start, prices[0], max(prices), min(prices), prices[-1], volume, len(window))
            )
            prev_close = prices[-1]
        got = [c for c in built if c.symbol == symbol]
        assert [(c.start, c.open, c.high, c.low, c.close, c.trades) for c in got] == [
            (s, o, h, lo, c, n) for s, o, h, lo, c, _, n in expected
        ]
        assert [c.volume for c in got] == pytest.approx([e[5] for e in expected])
        for candle, (start, *_) in zip(got, expected, strict=True):
            window = windows.get(float(start), [])
            if window:
                vwap = sum(t.price * t.size for t in window) / sum(t.size for t in window)
                assert candle.vwap == pytest.approx(vwap)


def test_open_positions_point_at_the_oldest_open_window() -> None:
    b = CandleBuilder(seconds=60, allowed_lateness=0)
    b.add(_t("X", 1, 10, 1), (0, 100))
    b.add(_t("Y", 2, 10, 2), (1, 7))
    b.add(_t("X", 3, 10, 30), (0, 101))
    assert b.open_positions() == {0: 100, 1: 7}
    b.add(_t("X", 4, 10, 61), (0, 102))  # closes X's first window; Y's stays open
    assert b.open_positions() == {0: 102, 1: 7}


def test_a_symbol_far_ahead_does_not_make_another_late() -> None:
    # partitions interleave: all of A's hour may arrive before B's first minute
    b = CandleBuilder(seconds=60, allowed_lateness=0)
    for i in range(60):
        b.add(_t("A", i, 10, i * 60 + 1))
    assert b.add(_t("B", 1, 10, 1)) == []
    assert [c.symbol for c in b.add(_t("B", 2, 10, 61))] == ["B"]


def _run(processor: FeatureProcessor, trades: list[Trade]) -> Outputs:
    out = Outputs()
    for trade in trades:
        out.extend(processor.on_trade(trade))
    return out


def test_labels_only_after_t_plus_h_closed_and_pair_features_of_t() -> None:
    horizon = 5
    trades = list(SyntheticMarket(["A", "B"], seed=3, start_ts=0).candles_of_trades(60))
    processor = FeatureProcessor(60, 0, horizon)
    closed_until: dict[str, float] = {}
    features_at: dict[tuple[str, float], dict[str, float]] = {}
    closes: dict[tuple[str, float], float] = {}
    examples = 0
    for trade in trades:
        out = processor.on_trade(trade)
        for c in out.candles:
            closed_until[c.symbol] = c.end
            closes[(c.symbol, c.end)] = c.close
        for row in out.features:
            features_at[(row.symbol, row.ts)] = row.values
        for ex in out.examples:
            examples += 1
            assert ex.label_ts == ex.ts + horizon * 60
            assert closed_until[ex.symbol] >= ex.label_ts  # t+H has closed
            # the model's inputs of t, without the columns kept only for monitoring
            assert ex.features == model_inputs(features_at[(ex.symbol, ex.ts)])
            assert set(ex.features) == set(FEATURE_NAMES)
            assert ex.target == pytest.approx(
                closes[(ex.symbol, ex.label_ts)] / closes[(ex.symbol, ex.ts)] - 1
            )
    # every candle from warm-up on gets a label once H more candles closed (the last one is
    # still open when the input ends)
    assert examples == 2 * (60 - 1 - (WARMUP - 1) - horizon)


def test_restored_processor_continues_exactly_like_an_uninterrupted_one() -> None:
    trades = list(SyntheticMarket(["A"], seed=11, start_ts=0).candles_of_trades(80))
    cut = next(i for i, t in enumerate(trades) if t.ts >= 40 * 60)
    whole = FeatureProcessor(60, 0, 5)
    expected = _run(whole, trades)

    first = FeatureProcessor(60, 0, 5)
    head = _run(first, trades[:cut])
    rows = [(r.ts, r.values) for r in head.features]
    resumed = FeatureProcessor(60, 0, 5)
    resumed.restore("A", rows)
    # the pipeline commits no further than the first trade of a still-open window
    replay_from = next(i for i, t in enumerate(trades) if t.ts >= rows[-1][0])
    assert replay_from < cut
    tail = _run(resumed, trades[replay_from:])

    # feature rows begin after warm-up: the 20H volatility window (100 returns) reads the
    # rows there are, fewer than an uninterrupted run had; every other feature is exact
    def short(values: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in values.items() if k != "log_rv_20h"}

    assert [short(r.values) for r in head.features + tail.features] == [
        short(r.values) for r in expected.features
    ]
    assert [(e.ts, e.target) for e in head.examples + tail.examples] == [
        (e.ts, e.target) for e in expected.examples
    ]


@pytest.mark.parametrize("cut_minute", [3, WARMUP + 1, 40])
def test_resumed_from_stored_candles_it_continues_exactly_even_in_warm_up(
    cut_minute: int,
) -> None:
    trades = list(SyntheticMarket(["A"], seed=11, start_ts=0).candles_of_trades(80))
    cut = next(i for i, t in enumerate(trades) if t.ts >= cut_minute * 60)
    expected = _run(FeatureProcessor(60, 0, 5), trades)

    head = _run(FeatureProcessor(60, 0, 5), trades[:cut])
    resumed = FeatureProcessor(60, 0, 5)
    stored = read_candles(candles_frame(head.candles))  # as the offline store holds them
    assert stored == head.candles
    resumed.resume("A", stored)
    replay_from = next(i for i, t in enumerate(trades) if t.ts >= head.candles[-1].end)
    tail = _run(resumed, trades[replay_from:])

    assert [(r.ts, r.values) for r in head.features + tail.features] == [
        (r.ts, r.values) for r in expected.features
    ]
    assert [(e.ts, e.target) for e in head.examples + tail.examples] == [
        (e.ts, e.target) for e in expected.examples
    ]


def test_features_are_finite_on_a_long_synthetic_run() -> None:
    trades = list(SyntheticMarket(["A", "B", "C"], seed=5, start_ts=0).candles_of_trades(300))
    out = _run(FeatureProcessor(60, 0, 5), trades)
    assert len(out.features) == 3 * (299 - WARMUP + 1)
    for row in out.features:
        assert set(FEATURE_NAMES) <= set(row.values)
        assert all(math.isfinite(v) for v in row.values.values())


HOSTILE = {
    "out_of_range": b'{"symbol": "X", "ts": 1' + b"0" * 400 + b"}",
    "too_deep": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "too_large": b"[" * 50_000 + b"]" * 50_000,
    "not_json": b'"' * 60_000,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_every_reader_bounds_hostile_records_with_a_class(kind: str) -> None:
    parsers: list[Callable[[bytes], object]] = [r.read for r in _readers().values()]
    for parse in parsers:
        with pytest.raises(BadRecord) as caught:
            parse(HOSTILE[kind])
        assert caught.value.kind == kind, (parse, caught.value)
    for big in (b'"' * 600_000, b"x" * 1_100_000):
        with pytest.raises(BadRecord, match="too_large"):
            parse_trade(big)


@pytest.mark.parametrize(
    ("ts", "price"),
    [
        ("2018.01.02 00:00", 10),  # MetaTrader's dotted day
        ("2018/1/2", 10),
        ("2024-01-02 10:30:00.000 GMT+0100", 10),  # Dukascopy's zone
        ("2024-01-02 09:30 UTC", 10),
        ("01/02/2024", 10),  # a day no one can order
        ("20240102093000", 10),  # a day and a time as 14 digits: milliseconds of 2611
        ("2024-01-02", 10),  # a day without its time
        (1.7e9, "42,280.5"),  # a spreadsheet's thousands
        (1.7e9, "42.280,5"),
        (1.7e9, "1.2M"),
    ],
)
def test_a_vendors_way_of_writing_a_trade_is_refused_on_the_wire(ts: object, price: object) -> None:
    """`trades` reads epoch seconds or milliseconds, or an RFC 3339 time, and plain numbers:
    what files write otherwise is their presets' to read (pipelines/market/presets.py)."""
    for raw in (
        json.dumps({**GOOD, "ts": ts, "price": price}).encode(),
        {**GOOD, "ts": ts, "price": price},
    ):
        with pytest.raises(BadRecord) as caught:
            parse_trade(raw)
        # 14 digits are milliseconds of 2611: a time from the future, not a day
        assert caught.value.kind in ("wrong_type", "out_of_range", "future"), caught.value


def _readers() -> dict[str, Any]:
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS, TARGET_BOUNDS
    from rtml.records import PREDICTIONS, TRADES, examples_reader, features_reader

    return {
        "trade": TRADES,
        "features": features_reader(FEATURE_NAMES, FEATURE_BOUNDS),
        "example": examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS),
        "prediction": PREDICTIONS,
    }


_EXAMPLE: dict[str, Any] = {
    "symbol": "X",
    "ts": 600.0,
    "label_ts": 900.0,
    "features": {name: 0.01 * (i + 1) for i, name in enumerate(FEATURE_NAMES)},
    "target": 0.02,
}
_SPOILED: list[tuple[str, object, str]] = [
    ("ts", 0.0, "non_positive"),
    ("ts", -60.0, "non_positive"),
    ("ts", 1e31, "out_of_range"),
    ("ts", 0, "non_positive"),
    ("ts", 10**30, "out_of_range"),
    ("ts", float("nan"), "not_finite"),
    ("label_ts", 600.0, "leak"),
    ("label_ts", 1e31, "out_of_range"),
    ("target", 1e31, "out_of_range"),
    ("target", float("-inf"), "not_finite"),
    ("target", True, "wrong_type"),
    ("symbol", "", "wrong_type"),
    ("symbol", 7, "wrong_type"),
    ("features", [0.01], "wrong_type"),
    ("features", {}, "missing_field"),  # an empty feature set
    ("features", {**_EXAMPLE["features"], "rsi_14": float("nan")}, "not_finite"),
    ("features", {**_EXAMPLE["features"], "rsi_14": 1.5}, "out_of_range"),
]


@pytest.mark.parametrize(("field", "value", "kind"), _SPOILED)
def test_a_record_with_one_bad_field_is_refused_with_its_class(
    field: str, value: object, kind: str
) -> None:
    readers = _readers()
    example = json.dumps({**_EXAMPLE, field: value}).encode()
    with pytest.raises(BadRecord) as caught:
        readers["example"].read(example)
    assert caught.value.kind == kind
    if field in ("ts", "symbol", "features") and kind != "leak":
        row = {
            k: v for k, v in {**_EXAMPLE, field: value}.items() if k in ("symbol", "ts", "features")
        }
        with pytest.raises(BadRecord) as caught:
            readers["features"].read(json.dumps(row).encode())
        assert caught.value.kind == kind


def test_a_record_reads_alike_however_its_keys_are_ordered_or_its_numbers_written() -> None:
    """Keys in another order, whole numbers, an extra key: the same example, with exactly the
    model's features (an extra key would become a weight for good)."""
    reader = _readers()["example"]
    own = reader.read(json.dumps(_EXAMPLE).encode())
    assert own.features == _EXAMPLE["features"]
    shuffled = dict(reversed(list(_EXAMPLE.items())))
    shuffled["features"] = dict(reversed(list(_EXAMPLE["features"].items())))
    whole = {**_EXAMPLE, "ts": 600, "label_ts": 900}
    extra = {**_EXAMPLE, "features": {**_EXAMPLE["features"], "other": 1.0}}
    for record in (shuffled, whole, extra):
        got = reader.read(json.dumps(record).encode())
        assert got == own and list(got.features) == FEATURE_NAMES
        assert all(type(v) is float for v in (got.ts, got.label_ts, *got.features.values()))


def test_a_source_dict_with_a_huge_integer_is_out_of_range() -> None:
    record = {"symbol": "X", "trade_id": 1, "price": 10**400, "size": 1, "side": "buy", "ts": 1}
    with pytest.raises(BadRecord) as caught:
        parse_trade(record)
    assert caught.value.kind == "out_of_range"


def test_a_trade_id_is_bounded_since_every_one_is_remembered() -> None:
    record = {"symbol": "X", "price": 10, "size": 1, "side": "buy", "ts": 1}
    assert parse_trade({**record, "trade_id": str(uuid.uuid4())}).trade_id
    with pytest.raises(BadRecord) as caught:
        parse_trade({**record, "trade_id": "i" * 60_000})
    assert caught.value.kind == "out_of_range" and "trade_id" in str(caught.value)


def test_a_trade_far_in_the_future_is_refused_and_leaves_the_watermark_alone() -> None:
    now = 1_000_000.0
    b = CandleBuilder(seconds=60, allowed_lateness=0, max_future_s=86_400, clock=lambda: now)
    assert b.add(Trade("X", "1", 10.0, 1.0, "buy", now - 30)) == []
    with pytest.raises(BadRecord) as caught:
        b.add(Trade("X", "2", 10.0, 1.0, "buy", 9.9e9))  # the year 2283
    assert caught.value.kind == "future"
    assert b.watermark("X") == now - 30
    closed = b.add(Trade("X", "3", 11.0, 1.0, "buy", now + 45))
    assert [c.close for c in closed] == [10.0]  # the next real trade closes the window as usual
    # a replay may run ahead of the clock, and a feed back from a long silence ahead of its
    # watermark: neither is refused
    for i, step in enumerate((0.9, 1.8, 2.7)):  # each within a day of the watermark
        b.add(Trade("X", f"r{i}", 11.0, 1.0, "buy", now + step * 86_400))
    assert b.watermark("X") == now + 2.7 * 86_400
    quiet = CandleBuilder(60, 0, max_future_s=86_400, clock=lambda: now + 30 * 86_400)
    quiet.add(Trade("Y", "1", 10.0, 1.0, "buy", now))
    quiet.add(Trade("Y", "2", 10.0, 1.0, "buy", now + 30 * 86_400))


def test_refused_trades_of_a_symbol_not_held_leave_nothing_held() -> None:
    """A refused trade is nothing: many symbols' refused trades cannot grow the builder, and a
    symbol's first taken trade starts it as if none had come before."""
    now = 1_000_000.0
    b = CandleBuilder(seconds=60, allowed_lateness=0, max_future_s=86_400, clock=lambda: now)
    for i in range(1000):
        with pytest.raises(BadRecord, match="future"):
            b.add(Trade(f"S{i}", "1", 10.0, 1.0, "buy", 9.9e9))
    assert b._series == {}
    assert b.add(Trade("S1", "1", 10.0, 1.0, "buy", now)) == []
    assert list(b._series) == ["S1"] and b.watermark("S1") == now


def test_one_stale_trade_atop_a_series_costs_one_candle_not_decades_of_flat_ones() -> None:
    """A trade dated 1970 as a symbol's first (a bad first row of a file, or the first record
    after a restart) was followed by flat candles for every minute up to the next real trade:
    30 million candles and minutes of work. A silence longer than RTML_MAX_SILENCE_S is not
    bridged: the series restarts after it, and no example spans it."""
    now, day = 1_700_000_040.0, 86_400.0  # a whole minute
    p = FeatureProcessor(60, 0, horizon=2, max_future_s=day)
    p.builder.clock = lambda: now
    out = p.on_trade(Trade("X", "old", 10.0, 1.0, "buy", 1.0))
    trades = list(SyntheticMarket(["X"], seed=3, start_ts=now - 3600).candles_of_trades(40))
    for trade in trades:
        out.extend(p.on_trade(trade))
    assert out.candles[0].start == 0.0
    assert out.candles[1].start == now - 3600  # no flat candle between the two
    assert len(out.candles) == 40  # the stale one and 39 real ones (the last is still open)
    assert out.examples and all(e.ts >= now - 3600 for e in out.examples)
    assert len(out.features) == 39 - WARMUP + 1  # features warm up again after the gap


def test_a_settled_series_refuses_a_jump_in_replay_time_and_resumes_near_the_clock() -> None:
    """In a replay of 2001, a row dated 2020 is ahead of its symbol by years but behind the
    clock. It would move the watermark there and make the rest of 2001 late: it is `future`.
    A live feed back after a longer silence is near the clock, and resumes without a bridge."""
    day, now = 86_400.0, 1_764_000_000.0
    start = 978_307_200.0  # 2001-01-01
    b = CandleBuilder(60, 0, max_future_s=day, clock=lambda: now)
    for i in range(10):
        b.add(Trade("X", str(i), 10.0, 1.0, "buy", start + 60 * i))
    with pytest.raises(BadRecord) as caught:
        b.add(Trade("X", "2020", 10.0, 1.0, "buy", 1_577_836_800.0))
    assert caught.value.kind == "future" and "newest time" in str(caught.value)
    assert b.watermark("X") == start + 540
    closed = b.add(Trade("X", "10", 11.0, 1.0, "buy", start + 600))
    assert [c.start for c in closed] == [start + 540]
    closed = b.add(Trade("X", "live", 12.0, 1.0, "buy", now - 30))  # back, near the clock
    assert [c.start for c in closed] == [start + 600]  # and no flat candle up to now
    closed = b.add(Trade("X", "live2", 12.0, 1.0, "buy", now + 60))
    assert [c.start for c in closed] == [math.floor((now - 30) / 60) * 60]


def test_a_live_deployment_refuses_a_trade_an_hour_ahead_and_still_bridges_an_hour_of_quiet() -> (
    None
):
    """With RTML_MAX_FUTURE_S at five minutes (what a live deployment sets), one trade an hour
    ahead of a live market is `future`: admitted, it would make the next hour's trades late.
    The longest silence bridged is RTML_MAX_SILENCE_S, apart: an hour without trades is still
    filled with flat candles, and the feed resumes near the clock."""
    clock = [1_764_000_000.0]
    b = CandleBuilder(60, 0, max_future_s=300, clock=lambda: clock[0], max_silence_s=86_400)
    for i in range(5):
        b.add(Trade("X", str(i), 10.0, 1.0, "buy", clock[0] - 300 + 60 * i))
    with pytest.raises(BadRecord) as caught:
        b.add(Trade("X", "ahead", 10.0, 1.0, "buy", clock[0] + 3_600))
    assert caught.value.kind == "future"
    clock[0] += 3_600  # an hour without trades
    assert len(b.add(Trade("X", "back", 11.0, 1.0, "buy", clock[0]))) == 1
    closed = b.add(Trade("X", "next", 11.0, 1.0, "buy", clock[0] + 60))
    assert [c.volume for c in closed] == [0.0] * 60 + [1.0]  # 60 flat, then the first back


def test_agreeing_trades_far_ahead_of_the_clock_cannot_carry_a_young_symbol_there() -> None:
    """A brand-new symbol has no newest time and no settled run: a few hostile trades dated
    11 days ahead, each within a day of the one before, must not become its clock, or its
    real trades would then all be `late`. Every one is `future`, however many agree."""
    day, now = 86_400.0, 1_764_000_000.0
    b = CandleBuilder(60, 0, max_future_s=day, clock=lambda: now)
    for i in range(5):
        with pytest.raises(BadRecord) as caught:
            b.add(Trade("NEW", f"h{i}", 10.0, 1.0, "buy", now + 11 * day + 600 * i))
        assert caught.value.kind == "future"
    assert b.watermark("NEW") == -math.inf
    b.add(Trade("NEW", "real", 10.0, 1.0, "buy", now - 120))  # the real market starts it
    with pytest.raises(BadRecord, match="future"):
        b.add(Trade("NEW", "hostile", 10.0, 1.0, "buy", now + 11 * day))
    assert [c.start for c in b.add(Trade("NEW", "next", 11.0, 1.0, "buy", now - 60))] == [
        math.floor((now - 120) / 60) * 60
    ]


@pytest.mark.parametrize("price", [1e29, 1e-320])
@pytest.mark.parametrize("run", [3, 10])
def test_fat_fingers_in_a_row_are_all_refused_and_the_candles_are_untouched(
    price: float, run: int
) -> None:
    """Three (or ten) trades in a row 1e29 (or 1e-320) were taken as a redenomination, and the
    candle's high, its VWAP and `range_pct` 6.5e26 went into both stores. A jump out of the
    bound is refused however often it comes; only a declared reset restarts the level."""
    trades = [Trade("X", str(i), 100.0 + i % 3, 1.0, "buy", 60.0 * i + 1) for i in range(20)]
    spoiled = (
        trades[:10]
        + [Trade("X", f"f{j}", price, 1.0, "buy", 601.0 + j) for j in range(run)]
        + trades[10:]
    )

    def candles(
        given: list[Trade], resets: dict[str, float] | None = None
    ) -> tuple[list[Any], list[str]]:
        b = CandleBuilder(60, 0, price_resets=resets)
        out, refused = [], []
        for t in given:
            try:
                out.extend(b.add(t))
            except BadRecord as exc:
                refused.append(exc.kind)
        return [*out, *b.advance(math.inf)], refused

    clean, _ = candles(trades)
    got, refused = candles(spoiled)
    assert got == clean and refused == ["out_of_range"] * run
    # a real redenomination (a 10,000-fold split at 600 s) is refused until it is declared
    split = trades[:10] + [
        Trade("X", f"s{t.trade_id}", t.price / 1e4, 1.0, "buy", t.ts) for t in trades[10:]
    ]
    _, refused = candles(split)
    assert refused == ["out_of_range"] * 10
    declared, refused = candles(split, {"X": 600.0})
    assert refused == [] and [c.close for c in declared[10:]] == [t.price for t in split[10:]]


def test_a_real_gap_in_a_replay_is_crossed_after_three_trades_that_agree() -> None:
    """A vendor's file missing a month, or a halted stock: every trade after the gap jumps
    far ahead of a settled series. Refusing them all would refuse the symbol for good: the
    third trade in a row that agrees on the jump is the market moving on, and the series
    restarts there (the first two are dead-lettered as `future`). A lone bad row between good
    ones breaks the run."""
    day, now, start = 86_400.0, 1_764_000_000.0, 978_307_200.0
    b = CandleBuilder(60, 0, max_future_s=day, clock=lambda: now)
    for i in range(10):
        b.add(Trade("X", str(i), 10.0, 1.0, "buy", start + 60 * i))
    after = start + 30 * day
    kinds: list[object] = []
    for i, ts in enumerate((after, start + 600, after + 1, after + 2, after + 70, after + 130)):
        try:
            closed = b.add(Trade("X", f"g{i}", 11.0, 1.0, "buy", ts))
            kinds.append([c.start for c in closed])
        except BadRecord as exc:
            kinds.append(exc.kind)
    # the lone jump is broken by a good trade; then two refused and the third admitted, which
    # closes the last window before the gap and bridges nothing
    assert kinds == ["future", [start + 540], "future", "future", [start + 600], [after + 60]]


def _weekday_candles(path: Path, days: int, zone: str = "") -> list[tuple[float, float]]:
    """A daily candle file of one symbol, Monday to Friday only; returns (start, close)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    rows, out = ["symbol,ts,open,high,low,close,volume"], []
    for i in range(days):
        day = start + timedelta(days=i)
        if day.weekday() >= 5:
            continue
        close = 100.0 + i + (i % 3) * 0.5
        rows.append(
            f"IDX,{day.date().isoformat()}{zone},{close - 1},{close + 1},{close - 2},{close},1000"
        )
        out.append((day.timestamp(), close))
    path.write_text("\n".join(rows) + "\n")
    return out


@pytest.mark.parametrize("zone", ["", "T00:00:00+00:00"])
def test_daily_candles_with_sessions_make_no_weekend_candle_and_h_counts_trading_days(
    tmp_path: Path, zone: str
) -> None:
    path = tmp_path / "daily.csv"
    days = _weekday_candles(path, 120, zone)
    profile = candle_profile(path)
    assert profile is not None and profile.seconds == 86_400 and profile.gap_policy == "skip"

    processor = FeatureProcessor(86_400, 0, 5, gap_policy=profile.gap_policy)
    out = Outputs()
    for trade in replay(path, candle_seconds=86_400):
        assert isinstance(trade, Trade)
        out.extend(processor.on_trade(trade))
    out.extend(processor.flush(math.inf))

    starts = [c.start for c in out.candles]
    assert starts == [start for start, _ in days]  # one candle per trading day, none other
    assert all(datetime.fromtimestamp(s, UTC).weekday() < 5 for s in starts)
    closes = dict(days)
    trading = [start for start, _ in days]
    assert out.examples
    for ex in out.examples:
        start = ex.ts - 86_400
        later = trading[trading.index(start) + 5]  # 5 trading days later, weekends skipped
        assert ex.label_ts == later + 86_400
        assert ex.target == pytest.approx(closes[later] / closes[start] - 1)

    # the same file under the flat policy invents the weekends
    flat = FeatureProcessor(86_400, 0, 5, gap_policy="flat")
    made = Outputs()
    for trade in replay(path, candle_seconds=86_400):
        assert isinstance(trade, Trade)
        made.extend(flat.on_trade(trade))
    assert len(made.candles) > len(out.candles)


def test_a_symbol_gone_quiet_closes_its_window_and_frees_the_commit() -> None:
    now = [0.0]
    b = CandleBuilder(seconds=60, allowed_lateness=0, clock=lambda: now[0])
    b.add(Trade("X", "1", 10.0, 1.0, "buy", 1_000.0), position=(0, 5))
    b.add(Trade("Y", "1", 20.0, 1.0, "buy", 1_000.0), position=(1, 6))
    now[0] = 100.0
    b.add(Trade("Y", "2", 21.0, 1.0, "buy", 1_010.0), position=(1, 7))
    assert b.open_positions() == {0: 5, 1: 6}
    now[0] = 130.0  # X has been silent for 130 s, Y for 30 s
    closed = b.close_idle(120.0)
    assert [(c.symbol, c.close) for c in closed] == [("X", 10.0)]
    assert b.open_positions() == {1: 6}  # the commit may pass X's trade now
    assert b.close_idle(120.0) == []


def test_history_reads_recent_parts_of_a_live_store_and_all_of_a_replayed_past(
    tmp_path: Path,
) -> None:
    from rtml import feature_store as fs
    from rtml.pipelines.features.resume import History
    from rtml.settings import Settings

    settings = Settings(state_dir=tmp_path, symbols=("A",), horizon=3)
    directory = settings.offline_dir / fs.CANDLES_DATASET
    past = _run(
        FeatureProcessor(60, 0, 3),
        list(SyntheticMarket(["A"], seed=2, start_ts=0).candles_of_trades(130)),
    )
    fs.append_parquet(directory, candles_frame(past.candles))
    assert History.read(settings, 3).candles["A"] == past.candles[-(HISTORY + 3) :]

    now = (datetime.now(UTC).timestamp() // 60 - 120) * 60
    live = _run(
        FeatureProcessor(60, 0, 3),
        list(SyntheticMarket(["A"], seed=2, start_ts=now).candles_of_trades(115)),
    )
    fs.append_parquet(directory, candles_frame(live.candles))
    assert History.read(settings, 3).candles["A"] == live.candles[-(HISTORY + 3) :]


HOSTILE_TIMES: list[object] = [
    "1600-01-01T00:00:00Z",
    "0001-01-01T00:00:00",
    "1677-09-21T00:12:43",
    "1677-12-31T23:59:59",
    "2262-04-12T00:00:00Z",
    "2300-01-01T00:00:00+05:00",
    "9999-12-31T00:00:00Z",
    "99999999999999999999999",
    9_300_000_000,  # seconds of the year 2264
    9.3e12,  # milliseconds of it
    1e29,
    -1.0,
    0,
    "-62135596800",
    "1e400",
    "2024-01-02T00:00:00Z",  # and times that are fine, at the edges too
    "1678-01-01T00:00:00",
    "2261-12-31T23:59:59",
    1_700_000_000,
    1_700_000_000_000,
]


@pytest.mark.parametrize("value", HOSTILE_TIMES)
def test_every_time_rtml_reads_can_be_stored(value: object) -> None:
    """A trade dated 1600, the first of its symbol, became a candle that could not be written
    to the offline store (whose timestamps hold 1677 to 2262): the write of its whole batch
    failed. Every time a trade, a features, an examples or a predictions record carries is
    either one the stores hold or refused on its own: `out_of_range` before 1678 or past the
    year 5138, `future` between (a record dated 2286 is from the future)."""
    import pandas as pd

    readers = _readers()
    features = dict(_EXAMPLE["features"])
    trade = {"symbol": "X", "trade_id": "1", "price": 1.0, "size": 1.0, "side": "buy"}
    reads = {
        "trade": lambda ts: parse_trade(trade | {"ts": ts}).ts,
        "features": lambda ts: (
            readers["features"].of({"symbol": "X", "ts": ts, "features": features}).ts
        ),
        "example": lambda ts: (
            readers["example"]
            .of({"symbol": "X", "ts": ts, "label_ts": 9.2e9, "features": features, "target": 0.0})
            .ts
        ),
        "label": lambda ts: (
            readers["example"]
            .of({"symbol": "X", "ts": 1.0, "label_ts": ts, "features": features, "target": 0.0})
            .label_ts
        ),
        "prediction": lambda ts: (
            readers["prediction"]
            .of({"symbol": "X", "ts": ts, "prediction": 0.0, "model_version": "1"})
            .ts
        ),
    }
    for kind, read in reads.items():
        try:
            seconds = read(value)
        except BadRecord:
            continue
        stored = pd.to_datetime(pd.Series([seconds]), unit="s", utc=True)  # as the sink does
        assert stored.notna().all(), (kind, value)
        assert datetime.fromtimestamp(seconds, UTC).year < 2262, (kind, value)
    if value in ("1600-01-01T00:00:00Z", "9999-12-31T00:00:00Z", 1e29):
        with pytest.raises(BadRecord, match="out_of_range"):
            parse_trade(trade | {"ts": value})
    if value in (9_300_000_000, 9.3e12, "2262-04-12T00:00:00Z"):  # the years 2262 to 5138
        with pytest.raises(BadRecord, match="future"):
            parse_trade(trade | {"ts": value})


ATOMS: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.5,
    -0.0,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    "",
    " ",
    "²",  # a digit to `isdigit`, not to `int`
    "١٢",  # Arabic-Indic digits, which `int` reads
    "１２",
    "9" * 5000,
    "1e400",
    "NaN",
    "-inf",
    "0x10",
    "1_000",
    "42,280.5",
    "42,5",
    "2024-01-02",
    "9999-12-31",
    "1600-01-01",
    "\x00",
    "x" * 300,
    "1" + " " * 30_000 + "x",  # a pattern that backtracks over the spaces takes minutes
    "2024-01-02 09:30 GMT+0100",
    [],
    {},
    [1.0],
    {"a": 1.0},
    [[[[[[[[[[1]]]]]]]]]],
]
BIG_INTEGERS = [b"1" + b"0" * 40, b"-" + b"9" * 400]


def _records() -> dict[str, dict[str, object]]:
    features = {n: 0.01 for n in FEATURE_NAMES}
    return {
        "trade": dict(GOOD, ts=1.7e9),
        "features": {"symbol": "X", "ts": 1.7e9, "features": features},
        "example": {"symbol": "X", "ts": 1.7e9, "label_ts": 1.7e9 + 300, "features": features}
        | {"target": 0.01},
        "prediction": {"symbol": "X", "ts": 1.7e9, "prediction": 0.01, "model_version": "3"}
        | {"trained_through": 1.7e9, "model": "m"},
    }


def _holds(kind: str, out: object) -> None:
    """What a reader returns is bounded, whatever it was given."""
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS
    from rtml.records import FIRST_TIME, LAST_TIME, MAX_ID_CHARS, SIDES

    ts = getattr(out, "ts")  # noqa: B009
    assert isinstance(ts, float) and FIRST_TIME <= ts < LAST_TIME
    assert isinstance(getattr(out, "symbol"), str) and getattr(out, "symbol")  # noqa: B009
    if kind == "trade":
        assert isinstance(out, Trade)
        assert math.isfinite(out.price) and out.price > 0
        assert math.isfinite(out.size) and out.size >= 0
        assert out.side in SIDES and len(out.trade_id) <= MAX_ID_CHARS
    if kind in ("features", "example"):
        values = getattr(out, "values" if kind == "features" else "features")
        assert list(values) == FEATURE_NAMES
        for name, value in values.items():
            assert (
                type(value) is float and FEATURE_BOUNDS[name][0] <= value <= FEATURE_BOUNDS[name][1]
            )
    if kind == "example":
        assert ts < getattr(out, "label_ts") < LAST_TIME  # noqa: B009
        assert math.isfinite(getattr(out, "target"))  # noqa: B009
    if kind == "prediction":
        assert math.isfinite(getattr(out, "prediction")) and getattr(out, "version") >= 0  # noqa: B009


def _hostile(base: dict[str, object]) -> list[bytes]:
    """`base` with each field, and each of its features, given every hostile value or taken
    away, encoded."""
    cases: list[bytes] = [b"", b"null", b"[]", b'"x"', json.dumps(base).encode()]
    for field in list(base):
        cases.append(json.dumps({k: v for k, v in base.items() if k != field}).encode())
        for atom in ATOMS:
            cases.append(json.dumps(base | {field: atom}).encode())
        for digits in BIG_INTEGERS:
            cases.append(json.dumps(base | {field: 0}).encode().replace(b": 0", b": " + digits))
    if isinstance(base.get("features"), dict):
        for atom in ATOMS:
            spoiled = dict(base["features"]) | {"ret_1": atom}  # type: ignore[call-overload]
            cases.append(json.dumps(base | {"features": spoiled}).encode())
    return cases


@pytest.mark.parametrize("kind", ["trade", "features", "example", "prediction"])
def test_no_value_in_any_field_fails_a_reader_otherwise_than_as_a_bad_record(kind: str) -> None:
    """Each topic's one decoder, fuzzed: each field of each wire record, and of its features,
    given every hostile value (types, digits `int` refuses, numbers past any bound, times out
    of every store's range, nesting), or taken away, as bytes and as a source's object. The
    reader returns a record whose fields are bounded, or refuses it as a `BadRecord` with a
    class. Nothing else: any other exception is a record the runner could only call an
    `error`."""
    reader = _readers()[kind]
    cases = _hostile(_records()[kind])
    unexpected = []
    for raw in cases:
        for read, given in ((reader.read, raw), (reader.of, _object_or_none(raw))):
            if given is None:
                continue
            try:
                out = read(given)
            except BadRecord as exc:
                assert exc.kind and str(exc), raw[:200]
                continue
            except Exception as exc:
                unexpected.append(f"{type(exc).__name__}: {exc!s:.100} <- {raw[:160]!r}")
                continue
            _holds(kind, out)
    assert not unexpected, "\n".join(unexpected)
    assert len(cases) > 100


def _object_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
