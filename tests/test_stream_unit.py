"""The streaming predictor's step without a broker: its one pass over the usual record
predicts and produces exactly what reading the record field by field does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import LinearScorer, build_model
from rtml.records import BadRecord, Example
from rtml.serving.model_holder import Served
from rtml.serving.stream import StreamingPredictor
from rtml.settings import Settings
from rtml.testing import MemorySink


class Holder:
    def __init__(self, served: Served | None) -> None:
        self.served = served

    def for_symbol(self, symbol: str) -> Served | None:
        return self.served


class Loaded:
    """What MLflow hands the holder: the River model as `model`."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_one(self, x: dict[str, float]) -> float:
        return float(self.model.predict_one(x))


def served(kind: str = "linear", version: str = "7") -> Served:
    learner = Learner(build_model(kind))
    for t in range(300):
        x = {n: ((t * (i + 3)) % 11 - 5) / 100 for i, n in enumerate(FEATURE_NAMES)}
        learner.step(Example("S", float(t), float(t + 300), x, x["ret_1"] / 2))
    return Served(version, Loaded(learner.model), time.time(), 1.7e9, "m")


def predictor(tmp_path: Path, model: Served | None) -> tuple[StreamingPredictor, MemorySink]:
    settings = Settings(state_dir=tmp_path, symbols=("S", "T"))
    out = StreamingPredictor(settings, Holder(model))  # type: ignore[arg-type]
    sink = MemorySink()
    out._producer = sink  # type: ignore[assignment]
    return out, sink


def usual(**change: Any) -> dict[str, Any]:
    features: dict[str, Any] = {n: 0.01 * (i + 1) for i, n in enumerate(FEATURE_NAMES)}
    features |= {"close": 42_000.5, "volume": 3.25}
    record: dict[str, Any] = {"symbol": "S", "ts": 1_700_000_000.0, "features": features}
    for key, value in change.items():
        if key in FEATURE_NAMES:
            record["features"][key] = value
        else:
            record[key] = value
    return record


def spoiled() -> list[dict[str, Any] | bytes]:
    missing = usual()
    del missing["features"]["rsi_14"]
    return [
        usual(rsi_14=True),
        usual(ret_5="0.01"),
        usual(vol_15=-0.5),  # out of its bounds
        usual(ret_1=1e6),
        usual(volume_z=None),
        missing,
        usual(symbol="ZZZ"),  # not configured
        usual(symbol=""),
        usual(symbol=7),
        usual(ts=0.0),
        usual(ts=-5.0),
        usual(ts="1700000000"),
        usual(ts=9e9),  # the year 2255, far ahead of the clock: future
        usual(ts=1e29),  # past 2261, beyond any time rtml stores: out_of_range
        usual(features=[1, 2]),
        {"symbol": "S", "ts": 1_700_000_120.0},
        b'{"symbol": "S", "ts": 1700000180.0, "features": {"ret_1": NaN}}',
    ]


def usual_too() -> list[dict[str, Any] | bytes]:
    """Records in other shapes the one pass reads as well."""
    reordered = usual(ts=1_700_000_240.0)
    reordered["features"] = dict(reversed(list(reordered["features"].items())))
    extra = usual(ts=1_700_000_300.0)
    extra["features"]["spread"] = "n/a"  # a key the model does not read
    whole = usual(ts=1_700_000_420.0, ret_1=1, volume_z=-2)  # whole numbers among the features
    twice = orjson.dumps(usual(ts=1_700_000_480.0))[:-2] + b',"ret_5":0.5}}'  # the last counts
    return [
        usual(ts=1_700_000_200),
        reordered,
        extra,
        usual(ts=1_700_000_360.0) | {"v": 2},
        whole,
        twice,
    ]


def run(step: Any, raw: bytes) -> tuple[str, str]:
    try:
        step(Message(topic="features", partition=0, offset=0, key=b"S", value=raw))
    except BadRecord as exc:
        return exc.kind, str(exc)
    return "ok", ""


@pytest.mark.parametrize("kind", ["linear", "pa"])
def test_the_one_pass_predicts_and_produces_what_the_general_path_does(
    tmp_path: Path, kind: str
) -> None:
    """Every `features` record is read by the topic's one decoder; a linear model's is then
    predicted in one pass over its features, any other's by the model itself. The two give
    the same predictions and refuse the same records, for the same reasons."""
    model = served(kind)
    fast, fast_out = predictor(tmp_path / "fast", model)
    slow, slow_out = predictor(tmp_path / "slow", model)
    slow._usual = lambda *usual: False  # type: ignore[method-assign]
    records: list[dict[str, Any] | bytes]
    records = [usual(ts=1_700_000_000.0 + 60 * i, ret_1=0.001 * i) for i in range(3)]
    records += [*spoiled(), *usual_too(), b"[1, 2]", b"not json"]
    outcomes = []
    for record in records:
        raw = record if isinstance(record, bytes) else orjson.dumps(record)
        outcomes.append(run(fast.step, raw))
        assert outcomes[-1] == run(slow.step, raw), raw
    topic = fast.topics.predictions
    assert fast_out.on(topic) == slow_out.on(topic)
    assert len(fast_out.on(topic)) == outcomes.count(("ok", "")) >= 3 + len(usual_too())
    assert {kind for kind, _ in outcomes} >= {
        "ok",
        "out_of_range",
        "missing_field",
        "not_json",
        "not_finite",
        "unknown_symbol",
        "future",
        "non_positive",
        "wrong_type",
    }
    assert isinstance(model.scorer, LinearScorer) == (kind == "linear")


def test_a_new_version_is_read_as_it_is_served(tmp_path: Path) -> None:
    first, second = served(version="7"), served("linear", version="8")
    second.scorer.intercept += 1.0  # a different model
    holder = Holder(first)
    out, sink = predictor(tmp_path, None)
    out.holder = holder  # type: ignore[assignment]
    for i, model in enumerate([first, second]):
        holder.served = model
        assert run(out.step, orjson.dumps(usual(ts=1_700_000_000.0 + i))) == ("ok", "")
    made = [orjson.loads(v or b"") for _, v in sink.on(out.topics.predictions)]
    assert [p["model_version"] for p in made] == ["7", "8"]
    expected = [
        m.scorer.predict_one({n: 0.01 * (i + 1) for i, n in enumerate(FEATURE_NAMES)})
        for m in (first, second)
    ]
    assert [p["prediction"] for p in made] == expected


def test_symbols_served_by_different_models_are_each_predicted_by_their_own(
    tmp_path: Path,
) -> None:
    """Shards: records of two symbols, in turn, each predicted by its own model."""
    models = {"S": served(version="3"), "T": served("linear", version="5")}
    models["T"].scorer.intercept -= 2.0

    class Router:
        def for_symbol(self, symbol: str) -> Served | None:
            return models.get(symbol)

    out, sink = predictor(tmp_path, None)
    out.holder = Router()  # type: ignore[assignment]
    for i in range(6):
        symbol = "ST"[i % 2]
        record = usual(ts=1_700_000_000.0 + 60 * i, symbol=symbol)
        assert run(out.step, orjson.dumps(record)) == ("ok", "")
    made = [orjson.loads(v or b"") for _, v in sink.on(out.topics.predictions)]
    x = {n: 0.01 * (i + 1) for i, n in enumerate(FEATURE_NAMES)}
    assert [(p["symbol"], p["model_version"], p["prediction"]) for p in made] == [
        (s, models[s].version, models[s].scorer.predict_one(x)) for s in "STSTST"
    ]
