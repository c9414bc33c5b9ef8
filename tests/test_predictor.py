"""The predictor on the real stack: HTTP predictions, hot swap, Redis outages, streaming."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rtml import feature_store as fs
from rtml import registry
from rtml.app.processes import free_port, redis_binary
from rtml.kafka import Topics, encode, ensure_topics, make_producer
from rtml.pipelines.features.indicators import FEATURE_NAMES, model_inputs
from rtml.pipelines.features.sink import FeatureSink
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import build_model
from rtml.records import Example, FeatureRow
from rtml.serving.app import create_app
from rtml.serving.model_holder import ModelHolder
from rtml.serving.stream import StreamingPredictor
from rtml.settings import Settings
from tests.kafka_helpers import drain
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

POLL_S = 1.0


def _learner(scale: float) -> Learner:
    learner = Learner(build_model("linear"))
    for t in range(200):
        x = {n: ((t * 7 + i) % 11) / 100 for i, n in enumerate(FEATURE_NAMES)}
        learner.step(Example("X", float(t), float(t + 300), x, scale * x["ret_1"]))
    return learner


def _register(settings: Settings, learner: Learner) -> str:
    """A version as the trainer registers one: the estimator, and what it learned through."""
    return registry.log_version(
        settings,
        learner.model,
        feature_names=FEATURE_NAMES,
        metadata={"trained_through": learner.watermark},
    )


def _features(symbol: str, ts: float, base: float) -> FeatureRow:
    values = {n: base + i / 1000 for i, n in enumerate(FEATURE_NAMES)}
    return FeatureRow(symbol, ts, {**values, "close": 100.0, "volume": 1.0})


@pytest.fixture(scope="module")
def shard(stack_settings: Settings, stack: object) -> Settings:
    tag = uuid.uuid4().hex[:6]
    local = stack_settings.model_copy(
        update={
            "symbols": (f"A{tag}", f"B{tag}"),
            "model_name": f"served-{tag}",
            "topic_prefix": f"p{tag}.",
            "model_poll_s": POLL_S,
        }
    )
    registry.promote(local, _register(local, _learner(1.0)))
    now = time.time()
    rows = [_features(s, now - 30, 0.01 * (i + 1)) for i, s in enumerate(local.symbols)]
    FeatureSink(local, fs.open_store(local), producer=None).write_online(rows)
    return local


@pytest.fixture
def served(shard: Settings) -> Iterator[tuple[TestClient, ModelHolder]]:
    holder = ModelHolder(shard)
    holder.refresh()
    holder.start()
    with TestClient(create_app(shard, holder, fs.open_store(shard))) as client:
        yield client, holder
    holder.stop()


def test_predict_reads_online_features_and_names_the_version(
    shard: Settings, served: tuple[TestClient, ModelHolder]
) -> None:
    client, holder = served
    symbol = shard.symbols[0]
    body = client.get(f"/predict/{symbol}").json()
    assert holder.current is not None
    x = {n: _features(symbol, 0, 0.01).values[n] for n in FEATURE_NAMES}
    assert body["prediction"] == pytest.approx(holder.current.learner.predict_one(x))
    assert body["model_version"] == holder.current.version
    # the answer explains itself: which model, the features it used and their event time
    assert (body["model"], body["model_alias"]) == (shard.model_name, "champion")
    assert body["features"] == pytest.approx(x)
    assert 25 < body["feature_age_s"] < 120  # written 30 s ago, wall clock
    assert body["staleness_s"] == pytest.approx(
        body["feature_timestamp"] - holder.current.trained_through
    )
    assert "event time" in body["staleness"]
    assert client.get("/readyz").status_code == 200
    client.get(f"/predict/{symbol}").raise_for_status()
    metrics = client.get("/metrics").text
    assert "rtml_request_seconds_bucket" in metrics
    # one after the other, each request reads the store itself: nothing is cached
    assert _metric(metrics, 'rtml_predictions_total{endpoint="symbol"}') == 2
    assert _metric(metrics, "rtml_online_reads_total") == 2


def test_without_a_champion_the_naive_baseline_is_served_and_named(shard: Settings) -> None:
    """No version has earned `champion` (or it was retired): answers come from the baseline,
    say so, and the champion's return swaps the model back in."""
    local = shard.model_copy(update={"model_name": f"{shard.model_name}-nochamp"})
    holder = ModelHolder(local)
    holder.refresh()
    symbol = local.symbols[0]
    with TestClient(create_app(local, holder, fs.open_store(local))) as client:
        body = client.get(f"/predict/{symbol}").json()
        assert (body["model"], body["model_version"], body["model_alias"]) == (
            "baseline",
            "0",
            None,
        )
        assert body["prediction"] == 0.0
        assert body["staleness_s"] is None and body["features"]
        assert "baseline" in body["staleness"]
        rows = client.post("/predict", json={"rows": [body["features"]]}).json()
        assert (rows["model"], rows["predictions"]) == ("baseline", [0.0])
        metrics = client.get("/metrics").text
        assert _metric(metrics, "rtml_serving_baseline") == 1
        assert _metric(metrics, "rtml_model_version") == 0
        version = _register(local, _learner(1.0))
        registry.promote(local, version)
        assert holder.refresh()
        body = client.get(f"/predict/{symbol}").json()
        assert (body["model"], body["model_version"]) == (local.model_name, version)
        registry.retire(local)
        assert holder.refresh()
        assert client.get(f"/predict/{symbol}").json()["model"] == "baseline"
        assert registry.decision(local)["action"] == "retire"  # type: ignore[index]


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in /metrics"
    return values[0]


def test_bad_requests_get_clear_statuses(served: tuple[TestClient, ModelHolder]) -> None:
    client, _ = served
    assert client.get("/predict/NOPE-never-seen").status_code == 404
    long = client.get("/predict/" + "X" * 20_000)  # a symbol is echoed bounded, not whole
    assert long.status_code == 404 and len(long.content) < 300
    assert client.post("/predict", json={"rows": "x"}).status_code == 422
    assert client.post("/predict", json={"rows": []}).status_code == 422
    typo = client.post("/predict", json={"rows": [{"ret_1": 0.01, "ret1": 0.02}]})
    assert typo.status_code == 422 and "ret1" in typo.json()["detail"]
    stored = client.post("/predict", json={"rows": [{"ret_1": 0.01, "close": 100.0}]})
    assert stored.status_code == 200  # a stored feature row may be sent back as it is
    rows = [{"ret_1": 0.01}] * 1001
    assert client.post("/predict", json={"rows": rows}).status_code == 413
    big = b'{"rows": [' + b'{"ret_1": 0.0},' * 200_000 + b'{"ret_1": 0.0}]}'
    assert client.post("/predict", content=big).status_code == 413
    ok = client.post("/predict", json={"rows": [{"ret_1": 0.01, "vol_15": None}]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    assert ok.json()["model_alias"] == "champion"
    # strict: booleans and strings are not numbers, non-finite values are named, not dropped
    strict = {
        b'{"rows": [{"ret_1": true}]}': "rows[0].ret_1 must be a number or null, got true",
        b'{"rows": [{"ret_1": "0.5"}]}': 'rows[0].ret_1 must be a number or null, got "0.5"',
        b'{"rows": [{"ret_1": 0.1}, {"vol_15": NaN}]}': "rows[1].vol_15 must be finite, got NaN",
        b'{"rows": [{"rsi_14": -Infinity}]}': "rows[0].rsi_14 must be finite, got -Infinity",
        b'{"rows": [{"ret_1": 0.1}], "extra": 1}': "unknown fields ['extra']",
        b"[" * 5000 + b"]" * 5000: "the body must be a JSON object",
        b"{oops": "the body must be a JSON object",
    }
    for raw, message in strict.items():
        answer = client.post("/predict", content=raw)
        assert answer.status_code == 422, (raw[:40], answer.text)
        assert message in answer.json()["detail"], (raw[:40], answer.text)


def test_token_is_enforced_when_set(shard: Settings) -> None:
    secured = shard.model_copy(update={"api_token": SecretStr("s3cret")})
    holder = ModelHolder(secured)
    holder.refresh()
    client = TestClient(create_app(secured, holder, fs.open_store(secured)))
    symbol = shard.symbols[0]
    assert client.get(f"/predict/{symbol}").status_code == 401
    # the token is checked before the body is read: a malformed body without it gets 401
    assert client.post("/predict", content=b"{oops").status_code == 401
    wrong = client.get(f"/predict/{symbol}", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    good = client.get(f"/predict/{symbol}", headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_promotion_swaps_the_model_under_load_without_failed_requests(
    shard: Settings, served: tuple[TestClient, ModelHolder]
) -> None:
    client, holder = served
    assert holder.current is not None
    old = holder.current.version
    new = _register(shard, _learner(-3.0))
    statuses: list[int] = []
    # (sent, answered, version): a request answered by the old model can be recorded after one
    # answered by the new, so only requests sent after the new one answered must be new
    versions: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = client.get(f"/predict/{shard.symbols[1]}")
            statuses.append(response.status_code)
            if response.status_code == 200:
                answered = time.monotonic()
                versions.append((sent, answered, response.json()["model_version"]))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    promoted_at = time.monotonic()
    registry.promote(shard, new)
    deadline = promoted_at + 10
    while time.monotonic() < deadline and not any(v == new for *_, v in versions):
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    first_new = min(answered for _, answered, v in versions if v == new)
    assert set(statuses) == {200}
    # two poll intervals, plus the time to load the version from the registry
    assert first_new - promoted_at <= 2 * POLL_S + 1.0
    after = [v for sent, _, v in versions if sent > first_new]
    assert after and all(v == new for v in after)  # never back to the old model
    assert old != new


def _redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    argv = [
        str(redis_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


def _served_from_own_redis(
    shard: Settings, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int, Settings, TestClient, str]:
    """A Redis of the test's own with one symbol's features, and an app serving from it."""
    port = free_port()
    proc = _redis(port, tmp_path)
    local = shard.model_copy(update={"redis_port": port})
    FeatureSink(local, fs.open_store(local), producer=None).write_online(
        [_features(local.symbols[0], time.time(), 0.02)]
    )
    holder = ModelHolder(local)
    holder.refresh()
    client = TestClient(create_app(local, holder, fs.open_store(local)))
    return proc, port, local, client, f"/predict/{local.symbols[0]}"


@pytest.mark.slow
def test_redis_outage_gives_503_then_recovers(shard: Settings, tmp_path: Path) -> None:
    proc, port, _, client, path = _served_from_own_redis(shard, tmp_path)
    assert client.get(path).status_code == 200
    try:
        proc.terminate()  # saves its data on the way down
        proc.wait(10)
        first = client.get(path)
        assert first.status_code == 503 and "Redis" in first.json()["detail"]
        reads = _reads(client)
        down_at = time.monotonic()
        while time.monotonic() - down_at < 30:  # a 30 s outage
            down = client.get(path)
            assert down.status_code == 503 and "Redis" in down.json()["detail"]
            time.sleep(0.5)
        assert _reads(client) == reads  # no request waited on the store: the breaker answered
        assert client.get("/readyz").status_code == 503
        proc = _redis(port, tmp_path)
        wait_until(lambda: client.get(path).status_code == 200, 60, "answers once Redis is back")
    finally:
        proc.terminate()
        proc.wait(10)


def _reads(client: TestClient) -> float:
    text = client.get("/metrics").text
    return float(
        next(
            line for line in text.splitlines() if line.startswith("rtml_online_reads_total")
        ).split()[1]
    )


def test_a_hung_redis_is_read_once_then_answered_503_without_reading_until_it_is_back(
    shard: Settings, tmp_path: Path
) -> None:
    """Reads run on the event loop: a store that stops answering (not refusing) must cost one
    read's timeout, not one per request."""
    proc, _, _, client, path = _served_from_own_redis(shard, tmp_path)
    try:
        assert client.get(path).status_code == 200
        proc.send_signal(signal.SIGSTOP)  # alive, listening, silent
        first = client.get(path)
        assert first.status_code == 503 and "Redis" in first.json()["detail"]
        reads = _reads(client)
        for _ in range(10):
            down = client.get(path)
            assert down.status_code == 503 and "Redis" in down.json()["detail"]
        assert _reads(client) == reads  # none of them waited on the hung store
        proc.send_signal(signal.SIGCONT)
        wait_until(lambda: client.get(path).status_code == 200, 60, "answers once Redis wakes")
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


def test_streaming_predictions_carry_the_champion_version(shard: Settings) -> None:
    topics = Topics.of(shard)
    ensure_topics(shard, topics.with_dlqs())
    producer = make_producer(shard)
    rows = [_features(shard.symbols[i % 2], 1_700_000_000 + 60 * i, 0.001 * i) for i in range(40)]
    for row in rows:
        producer.produce(topics.features, key=row.symbol.encode(), value=encode(row.to_json()))
    producer.produce(topics.features, key=b"x", value=b"{broken")
    producer.flush(10)

    holder = ModelHolder(shard)
    holder.refresh()
    assert holder.current is not None
    champion = registry.alias_version(shard, registry.CHAMPION)
    predictor = StreamingPredictor(shard, holder, group_id=f"pred-{uuid.uuid4().hex[:6]}")
    thread = threading.Thread(target=predictor.run, kwargs={"max_seconds": 60})
    thread.start()
    deadline = time.monotonic() + 60
    while predictor.predicted + predictor.rejected < len(rows) + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    predictor.stop.set()
    thread.join(30)

    out: list[dict[str, Any]] = drain(shard, topics.predictions)
    assert len(out) == len(rows)
    assert {p["model_version"] for p in out} == {champion}
    assert all(p["trained_through"] == holder.current.trained_through for p in out)
    # each prediction is the champion's on its record's features (close and volume left out)
    by_key = {(r.symbol, r.ts): r.values for r in rows}
    learner = holder.current.learner
    for p in out:
        x = model_inputs(by_key[(p["symbol"], p["ts"])])
        assert p["prediction"] == pytest.approx(learner.predict_one(x))
    dead = drain(shard, topics.features + ".dlq")
    assert len(dead) == 1 and predictor.rejected == 1
