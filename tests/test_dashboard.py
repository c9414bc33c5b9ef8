"""The monitor on the real stack, and its dashboard rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import uvicorn

from rtml.app.processes import free_port
from rtml.kafka import Topics, dlq, encode, ensure_topics, make_producer
from rtml.records import Prediction
from rtml.serving.dashboard import create_dashboard_app
from rtml.serving.monitor import ALL, TOP_SYMBOLS, Monitor
from rtml.serving.monitor_service import MonitorService
from rtml.settings import Settings
from tests.kafka_helpers import drain
from tests.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INJECTION = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("RTML_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
CANDLES = 120
SWITCH = 60  # version 2 serves from this candle on


def chromium() -> str | None:
    found = os.environ.get("RTML_CHROMIUM")
    return found or shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_or_skip() -> str:
    browser = chromium()
    if browser is None:
        pytest.skip(
            "headless Chromium not found: install it (`apt-get install chromium` on Debian/Ubuntu) "
            "or point RTML_CHROMIUM at a Chrome/Chromium binary"
        )
    return browser


def _serve(service: MonitorService) -> tuple[uvicorn.Server, threading.Thread, int]:
    """The dashboard of `service` on a free port, served from a thread until it has started."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_dashboard_app(service), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    web = threading.Thread(target=server.run, daemon=True)
    web.start()
    wait_until(lambda: server.started, 30, "the dashboard to start")
    return server, web, port


def _publish(settings: Settings) -> int:
    """Two symbols of candles: features, predictions by v1 then v2, examples H candles later."""
    topics = Topics.of(settings)
    producer = make_producer(settings)
    rng = random.Random(7)
    horizon, start = settings.horizon, 1_700_000_000.0
    expected = 0
    for symbol in settings.symbols:
        closes = [100.0]
        for _ in range(CANDLES + horizon):
            closes.append(closes[-1] * (1 + rng.gauss(0, 0.002)))
        for i in range(CANDLES):
            ts = start + 60 * i
            target = closes[i + horizon] / closes[i] - 1
            version = 1 if i < SWITCH else 2
            noise = 0.004 if version == 1 else 0.001
            key = symbol.encode()
            features = {"ret_1": closes[i] / closes[max(i - 1, 0)] - 1, "close": closes[i]}
            producer.produce(
                topics.features,
                key=key,
                value=encode({"symbol": symbol, "ts": ts, "features": features}),
            )
            prediction = {
                "symbol": symbol,
                "ts": ts,
                "prediction": target + rng.gauss(0, noise),
                "model_version": version,
                "trained_through": ts - 60 * horizon,
            }
            producer.produce(topics.predictions, key=key, value=encode(prediction))
            example = {
                "symbol": symbol,
                "ts": ts,
                "label_ts": ts + 60 * horizon,
                "features": features,
                "target": target,
            }
            producer.produce(topics.examples, key=key, value=encode(example))
            expected += 1
    producer.produce(topics.predictions, value=b"{not json")
    producer.produce(
        topics.predictions,
        value=encode({"symbol": "X", "ts": 1, "prediction": None, "model_version": 1}),
    )
    producer.flush(30)
    return expected


@pytest.fixture(scope="module")
def monitored(stack_settings: Settings, stack: object) -> Iterator[tuple[MonitorService, str, int]]:
    tag = uuid.uuid4().hex[:6]
    settings = stack_settings.model_copy(
        update={
            # a configured symbol is still data: the page must render it as text
            "symbols": (f"M{tag}/USD", f"N{tag}/USD", INJECTION),
            "topic_prefix": f"m{tag}.",
            "experiment_name": f"monitor-{tag}",
            "model_name": f"monitor-{tag}",  # no champion in the registry: seen from predictions
            "monitor_log_interval_s": 1.0,
            "metrics_window": 50,
        }
    )
    ensure_topics(settings, Topics.of(settings).with_dlqs())
    expected = _publish(settings)
    service = MonitorService(settings)
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    server, web, port = _serve(service)
    wait_until(lambda: service.monitor.joined >= expected, 60, "every prediction joined")
    yield service, f"http://127.0.0.1:{port}", expected
    server.should_exit = True
    service.stop.set()
    worker.join(30)
    web.join(30)


def test_monitor_joins_every_prediction_and_ranks_the_versions(
    monitored: tuple[MonitorService, str, int],
) -> None:
    service, url, expected = monitored
    m = service.monitor
    assert m.joined == expected
    assert m.pending == 0
    assert m.champion == 2
    # version 2 predicted with a quarter of version 1's noise
    assert m.rolling_mae(2) < m.rolling_mae(1) / 2
    assert m.rolling_mae(2) < m.baseline_mae()
    text = httpx.get(f"{url}/metrics").text
    assert re.search(r'rtml_monitor_rolling_mae\{model="",symbol="\*",version="2"\} \d', text)
    assert f"rtml_monitor_joined_total {float(expected)}" in text
    assert 'rtml_monitor_rejected_total{topic="' in text
    # the shared loop's counters: what it read, by topic, and what it rejected, by class
    assert re.search(r'rtml_records_read_total\{component="monitor",topic="[^"]+"\} [1-9]', text)
    assert 'rtml_records_rejected_total{component="monitor",reason="no_prediction"' in text


def test_bad_predictions_go_to_the_dlq_with_reasons(
    monitored: tuple[MonitorService, str, int],
) -> None:
    service, _, _ = monitored
    topic = service.topics.predictions
    dead = drain(service.settings, dlq(topic))
    assert len(dead) == 2 == service.monitor.rejected[topic]
    assert {r["reason"].split(":")[0] for r in dead} == {"not_json", "no_prediction"}
    assert all(re.fullmatch(rf"{re.escape(topic)}\[\d+\]@\d+", r["origin"]) for r in dead)


def test_rolling_errors_are_logged_to_mlflow(monitored: tuple[MonitorService, str, int]) -> None:
    service, _, _ = monitored
    settings = service.settings
    deadline = time.monotonic() + 20
    metrics: dict[str, float] = {}
    while time.monotonic() < deadline and "monitor.mae.v2.all" not in metrics:
        time.sleep(0.5)
        client = mlflow.MlflowClient(settings.mlflow_uri)
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            continue
        named = f"attributes.run_name LIKE 'monitor {settings.topic_prefix}%'"  # named for it
        runs = client.search_runs([experiment.experiment_id], named)
        metrics = runs[0].data.metrics if runs else {}
    assert metrics["monitor.mae.v2.all"] == pytest.approx(service.monitor.rolling_mae(2), rel=0.5)
    assert "monitor.baseline_mae.all" in metrics


def test_dashboard_renders_non_empty_charts_in_chromium(
    monitored: tuple[MonitorService, str, int], tmp_path: Path
) -> None:
    browser = _chromium_or_skip()
    service, url, _ = monitored
    settings_symbols = service.settings.symbols
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--mute-audio",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--window-size=1400,1100",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", f"{url}/"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for chart in ("price", "pairs", "mae", "staleness"):
        svg = re.search(rf'<svg id="chart-{chart}"[^>]*>(.*?)</svg>', dom, re.S)
        assert svg, f"chart {chart} missing"
        lines = re.findall(r'class="series" data-name="([^"]+)"[^>]*points="([^"]*)"', svg.group(1))
        assert lines, f"chart {chart} drew no series"
        for name, points in lines:
            assert len(points.split()) >= 10, f"{chart}/{name} has {points!r}"
    assert re.search(r'<b id="champion">[^<]*v2[^<]*</b>', dom)  # what serves, and why
    assert "v2" in dom  # the champion change is marked
    # error over time per served version, each in event-time order, v1 before the switch
    mae = re.search(r'<svg id="chart-mae"[^>]*>(.*?)</svg>', dom, re.S)
    assert mae, "MAE chart missing"
    drawn = {
        version: [float(t) for t in ts.split(",")]
        for version, ts in re.findall(r'data-version="(\d+)" data-ts="([^"]*)"', mae.group(1))
    }
    assert set(drawn) == {"1", "2"}, drawn
    for ts in drawn.values():
        assert ts == sorted(ts) and len(ts) >= 10
    assert max(drawn["1"]) < min(drawn["2"])  # v2 served from the switch on
    state = httpx.get(f"{url}/api/state", timeout=10).json()
    assert [p[0] for p in state["mae"]] == sorted(p[0] for p in state["mae"])
    # one time axis for every chart: the same ticks, so the champion markers line up
    ticks = {
        chart: re.findall(r'class="axis tick-x"[^>]*data-t="([^"]+)"', svg)
        for chart, svg in re.findall(r'<svg id="chart-(\w+)"[^>]*>(.*?)</svg>', dom, re.S)
    }
    assert len(ticks) == 4 and len({tuple(t) for t in ticks.values()}) == 1, ticks
    assert len(ticks["price"]) >= 3  # more than the ends
    # the symbol arrived through Kafka: it is an option's text, never markup
    assert ">&lt;img src=x onerror=alert(1)&gt;</option>" in dom
    assert "<img" not in dom
    assert "No drift alerts yet" in dom or 'class="alert"' in dom
    assert "event time (UTC)" in dom and "rolling MAE" in dom  # labelled axes
    # the versions table: the champion's rows first, bounded, each beside its own baseline
    body = re.search(r'<table id="errors">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body, "errors table missing"
    versions = re.findall(r"<tr><td>([^<]*)</td>", body.group(1))
    assert (
        versions and versions[0].endswith("2") and len(versions) <= 8 * (len(settings_symbols) + 1)
    )

    # ?symbol= picks what is drawn
    second = settings_symbols[1]
    picked = subprocess.run(
        [*flags, "--dump-dom", f"{url}/?symbol={second.replace('/', '%2F')}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f'data-symbol="{second}"' in picked, picked[:2000]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*flags, f"--screenshot={shot}", f"{url}/"], capture_output=True, timeout=120, check=True
    )
    assert shot.stat().st_size > 10_000


def test_the_page_allows_only_its_own_script(monitored: tuple[MonitorService, str, int]) -> None:
    _, url, _ = monitored
    page = httpx.get(f"{url}/", timeout=10)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    # no inline script or style for the policy to have to allow
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
    assert "style=" not in page.text and "<style" not in page.text
    for asset, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        answer = httpx.get(f"{url}/{asset}", timeout=10)
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
    assert "innerHTML" not in httpx.get(f"{url}/dashboard.js", timeout=10).text
    assert "decision" in httpx.get(f"{url}/api/state", timeout=10).json()  # who set the champion


def _wide_monitor(symbols: int = 500, versions: int = 8, candles: int = 60) -> Monitor:
    """A monitor that has joined `candles` predictions of each of `versions` versions for
    each of `symbols` symbols."""
    monitor = Monitor(window=50, history=2000, max_versions=versions)
    rng = random.Random(3)
    for i in range(candles):
        ts = 1_700_000_000.0 + 60 * i
        version = 1 + i * versions // candles
        for k in range(symbols):
            symbol = f"S{k:04d}"
            monitor.on_price(symbol, ts, 100.0 + rng.random())
            target = rng.gauss(0, 0.002) * (1 + k % 7)
            monitor.on_prediction(
                Prediction(symbol, ts, target + rng.gauss(0, 0.001), version, ts - 180), ts
            )
            monitor.on_example(symbol, ts, target)
    return monitor


def test_the_dashboard_sends_one_symbol_and_a_page_of_errors_at_500_symbols() -> None:
    """At 500 symbols and 8 versions the state of one symbol is small, and an MLflow log
    holds each version over all symbols and the few that err most, not every symbol."""
    monitor = _wide_monitor()
    state = monitor.snapshot(points=500, symbol="S0123")
    size = len(json.dumps(state))
    assert state["symbol"] == "S0123" and list(state["price"]) == ["S0123"]
    assert len(state["symbols"]) == 500 and size <= 200_000, size
    ranked = monitor.ranked_symbols()
    shown = {r["symbol"] for r in state["errors"]}
    assert shown == {ALL, *ranked[:TOP_SYMBOLS]}
    assert state["errors_pages"] == 500 // TOP_SYMBOLS
    second = {r["symbol"] for r in monitor.errors_table(page=1)}
    assert second == {ALL, *ranked[TOP_SYMBOLS : 2 * TOP_SYMBOLS]}
    # the worst first: ranked by the newest version's rolling error
    errors = [monitor.rolling_mae(8, s) for s in ranked]
    assert errors == sorted(errors, reverse=True)
    metrics = monitor.mlflow_metrics()
    assert len(metrics) <= 2 + 1 + 8 * (1 + TOP_SYMBOLS), len(metrics)
    # an unknown symbol draws the first one rather than nothing
    assert monitor.snapshot(symbol="nope")["symbol"] == "S0000"


def test_a_symbol_picked_through_the_search_is_drawn_at_500_symbols(tmp_path: Path) -> None:
    """The page's search submits `?symbol=`; at 500 symbols the page draws that one."""
    browser = _chromium_or_skip()
    service = MonitorService(Settings(state_dir=tmp_path / "state"), monitor=_wide_monitor())
    server, web, port = _serve(service)
    try:
        dom = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/?symbol=S0321",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    finally:
        server.should_exit = True
        web.join(30)
    assert re.search(r'<input id="symbol"[^>]*value="S0321"', dom) or 'value="S0321"' in dom
    assert dom.count("<option") == 500  # every symbol is searchable
    svg = re.search(r'<svg id="chart-price"[^>]*>(.*?)</svg>', dom, re.S)
    assert svg, "price chart missing"
    lines = re.findall(r'class="series" data-name="close"[^>]*points="([^"]*)"', svg.group(1))
    assert lines and len(lines[0].split()) == 60
