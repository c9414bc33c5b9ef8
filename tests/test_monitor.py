"""The monitor's join, rolling errors, alerts and exports, without services."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from rtml.records import BadRecord, Prediction, parse_prediction
from rtml.serving.monitor import ALL, Monitor
from rtml.serving.monitor_service import MonitorCollector


def _p(symbol: str, ts: float, prediction: float, version: int = 1) -> Prediction:
    return Prediction(symbol, ts, prediction, version, ts - 300)


def test_joins_in_either_order_and_scores_each_version() -> None:
    m = Monitor(window=10)
    m.on_prediction(_p("A", 60, 0.010, version=1))
    m.on_prediction(_p("A", 60, 0.030, version=2))  # two replicas on different versions
    m.on_example("A", 60, 0.020)
    m.on_example("A", 120, -0.010)  # the target first ...
    m.on_prediction(_p("A", 120, 0.000, version=2))  # ... then its prediction
    assert m.joined == 3
    assert m.rolling_mae(1, "A") == pytest.approx(0.010)
    assert m.rolling_mae(2, "A") == pytest.approx((0.010 + 0.010) / 2)
    assert m.baseline_mae("A") == pytest.approx((0.02 + 0.02 + 0.01) / 3)
    assert m.served.mean == pytest.approx((0.010 + 0.010 + 0.010) / 3)  # whatever was served
    assert m.pending == 0
    # the champion (newest version, without the registry's word) first
    assert [(r["version"], r["symbol"], r["n"]) for r in m.errors_table()] == [
        (2, ALL, 2),
        (2, "A", 2),
        (1, ALL, 1),
        (1, "A", 1),
    ]
    # each version beside the naive baseline over the examples that version served
    baselines = {(r["version"], r["symbol"]): r["baseline_mae"] for r in m.errors_table()}
    assert baselines[(1, "A")] == pytest.approx(0.02)
    assert baselines[(2, "A")] == pytest.approx((0.02 + 0.01) / 2)


def test_rolling_window_forgets_old_errors() -> None:
    m = Monitor(window=2)
    for i, error in enumerate([1.0, 0.1, 0.3]):
        m.on_prediction(_p("A", 60 * i, 0.0))
        m.on_example("A", 60 * i, error)
    assert m.rolling_mae(1) == pytest.approx(0.2)


def test_predictions_without_targets_are_counted_when_dropped() -> None:
    m = Monitor(max_pending=3)
    for i in range(5):
        m.on_prediction(_p("A", 60 * i, 0.0))
    assert (m.pending, m.expired) == (3, 2)


def test_champion_changes_are_recorded_once_per_new_version() -> None:
    m = Monitor()
    for ts, version in [(60, 1), (120, 1), (180, 2), (240, 1), (300, 3)]:
        m.on_prediction(_p("A", ts, 0.0, version))  # 1 after 2: a replica not yet swapped
    assert list(m.champion_changes) == [(60, 1), (180, 2), (300, 3)]
    assert m.champion == 3


def test_a_shift_in_the_champions_errors_raises_a_drift_alert() -> None:
    rng = random.Random(3)
    m = Monitor(window=100)
    for i in range(3000):
        target = rng.gauss(0, 0.01) + (0.08 if i >= 1500 else 0.0)
        m.on_prediction(_p("A", 60.0 * i, 0.0))
        m.on_example("A", 60.0 * i, target)
    assert m.alerts, "no alert after the errors jumped eightfold"
    assert all(a["ts"] >= 60.0 * 1500 for a in m.alerts)
    assert m.alerts[0]["version"] == 1


def test_parse_prediction_rejects_each_kind_of_bad_record() -> None:
    good = {"symbol": "A", "ts": 60, "prediction": 0.1, "model_version": 3, "trained_through": 0}
    assert parse_prediction(orjson.dumps(good)).version == 3
    cases = {
        b"not json": "not_json",
        orjson.dumps({**good, "model_version": "x"}): "wrong_type",
        orjson.dumps({**good, "ts": "60"}): "wrong_type",
        orjson.dumps({k: v for k, v in good.items() if k != "ts"}): "missing_field",
        orjson.dumps({**good, "symbol": 5}): "wrong_type",
        orjson.dumps({**good, "prediction": None}): "no_prediction",
    }
    for raw, kind in cases.items():
        with pytest.raises(BadRecord) as info:
            parse_prediction(raw)
        assert info.value.kind == kind, raw


def test_snapshot_and_exports_carry_the_rolling_errors() -> None:
    m = Monitor(window=5)
    for i in range(6):
        m.on_prediction(_p("BTC/USD", 60 * i, 0.01, version=4))
        m.on_example("BTC/USD", 60 * i, 0.03)
        m.on_price("BTC/USD", 60 * i, 100.0 + i)
    m.reject("predictions")
    snap = orjson.loads(orjson.dumps(m.snapshot(points=3)))  # JSON-clean
    assert len(snap["price"]["BTC/USD"]) == 3
    assert snap["pairs"]["BTC/USD"][-1][1:] == [0.01, 0.03, 4]
    assert snap["mae"][-1][2] == pytest.approx(0.02)
    assert (snap["served_mae"], snap["baseline_mae"]) == pytest.approx((0.02, 0.03))
    assert snap["counts"]["rejected"] == {"predictions": 1}
    metrics = m.mlflow_metrics()
    assert metrics["monitor.mae.v4.BTC_USD"] == pytest.approx(0.02)
    assert metrics["monitor.baseline_mae.all"] == pytest.approx(0.03)
    families = {f.name: f for f in MonitorCollector(m).collect()}
    samples = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["rtml_monitor_rolling_mae"].samples
    }
    assert samples[(("model", ""), ("symbol", "BTC/USD"), ("version", "4"))] == pytest.approx(0.02)
    assert families["rtml_monitor_joined"].samples[0].value == 6
    assert not math.isnan(m.baseline_mae("BTC/USD"))


def test_a_rollback_the_registry_reports_moves_the_champion_back() -> None:
    m = Monitor()
    for ts, version in [(60, 1), (120, 2), (180, 3)]:
        m.on_prediction(_p("A", ts, 0.0, version))
    assert m.champion == 3
    m.champion_from_registry(2)  # `rtml rollback`: the registry's word wins over guessing
    m.on_prediction(_p("A", 240, 0.0, 2))
    m.on_prediction(_p("A", 250, 0.0, 3))  # a replica not yet swapped back
    assert m.champion == 2
    assert [v for _, v in m.champion_changes] == [1, 2, 3, 2]


def test_versions_are_keyed_by_model_and_bounded_to_the_recently_served() -> None:
    m = Monitor(window=10, max_versions=3)
    for i, (model, version) in enumerate([("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4)]):
        m.on_prediction(Prediction("A", 60.0 * i, 0.1 * (i + 1), version, 0.0, model))
        m.on_example("A", 60.0 * i, 0.0)
    assert m.rolling_mae(1, model="a") != m.rolling_mae(1, model="b")  # shards do not collide
    kept = {(r["model"], r["version"]) for r in m.errors_table()}
    assert len(kept) == 3 and ("a", 4) in kept  # the oldest served were forgotten
    assert m.errors_table()[0]["version"] == m.champion == 4
    labels = {tuple(s.labels.values()) for f in MonitorCollector(m).collect() for s in f.samples}
    assert all(label != ("a", "1", ALL) for label in labels)  # metric labels bounded too


def test_the_monitor_service_honours_the_drift_delta() -> None:
    from rtml.serving.monitor_service import MonitorService
    from rtml.settings import Settings

    service = MonitorService(Settings(drift_delta=0.123))
    assert service.monitor.drift_delta == 0.123


def test_two_shards_at_the_same_version_number_draw_two_error_series() -> None:
    """Shards register models of their own, each counting from version 1: their errors are
    never averaged into one line."""
    m = Monitor(window=3)
    for i in range(4):
        for model, target in (("majors", 0.01), ("alts", 0.05)):
            symbol = "A" if model == "majors" else "B"
            m.on_prediction(Prediction(symbol, 60.0 * i, 0.0, 1, 0.0, model), arrived=1e3)
            m.on_example(symbol, 60.0 * i, target)
    series: dict[str, list[float]] = {}
    for _, version, mae, _, model in m.mae_series():
        assert version == 1
        series.setdefault(model, []).append(mae)
    assert series["majors"][-1] == pytest.approx(0.01)
    assert series["alts"][-1] == pytest.approx(0.05)
