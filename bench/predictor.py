"""The predictor: HTTP latency under load beside a bare server; streaming predictions via Kafka."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.figure import Figure
from bench.measure import bare_consume_rate, interleaved, percentile
from rtml import feature_store as fs
from rtml.app.processes import free_port
from rtml.kafka import Topics, encode, ensure_topics, make_producer, send
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.records import Example
from rtml.settings import Settings


def bench_predictor(settings: Settings, seconds: float = 8.0, rate: float = 500.0) -> list[Figure]:
    """HTTP latency at a fixed request rate, beside bare Feast reads; streaming throughput."""
    from rtml import registry
    from rtml.pipelines.features.sink import FeatureSink
    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model
    from rtml.records import FeatureRow
    from rtml.serving.model_holder import ModelHolder

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "model_name": f"serve-{tag}",
            "topic_prefix": f"bench{tag}.",
            "symbols": (f"S{tag}",),
        }
    )
    learner = Learner(build_model("linear"))
    for t in range(500):
        x = {n: (t % 7) / 100 for n in FEATURE_NAMES}
        learner.step(Example("S", float(t), float(t + 300), x, x["ret_1"]))
    registry.promote(local, registry.log_version(local, learner.model))
    symbol = local.symbols[0]
    row = FeatureRow(symbol, time.time(), {n: 0.01 for n in [*FEATURE_NAMES, "close", "volume"]})
    store = fs.open_store(local)
    FeatureSink(local, store, producer=None).write_online([row])

    holder = ModelHolder(local)
    holder.refresh()
    runs, bare_runs, bare = _http_latencies(local, store, symbol, seconds, [100.0, rate])
    stream_rate, bare_rate, delivered = _streaming_rate(local, holder, learner, row)
    b50, b99 = percentile(bare, 0.5) * 1e3, percentile(bare, 0.99) * 1e3
    figures = []
    for run, ref in zip(runs, bare_runs, strict=True):
        at = f"at {run.offered:.0f} req/s offered, {run.achieved:.0f} served ({run.placement})"
        against = (
            f"bare Feast HTTP server, {ref.achieved:.0f} served "
            f"(a Feast read in-process: p50 {b50:.1f} ms, p99 {b99:.1f} ms)"
        )
        figures += [
            Figure(
                f"HTTP /predict p50 {at}",
                run.p50 * 1e3,
                "ms",
                f"{against}, p50",
                ref.p50 * 1e3,
                run.p50 / ref.p50,
                "",
            ),
            Figure(
                f"HTTP /predict p99 {at}",
                run.p99 * 1e3,
                "ms",
                f"{against}, p99",
                ref.p99 * 1e3,
                run.p99 / ref.p99,
                "p99 <= 5 ms at 500 req/s",
            ),
        ]
    return [
        *figures,
        Figure(
            "streaming predictions via Kafka",
            stream_rate,
            "predictions/s",
            "bare predict_one loop",
            bare_rate,
            stream_rate / bare_rate,
            "ratio >= 0.3",
        ),
        Figure(
            "streaming predictions via Kafka (as above)",
            stream_rate,
            "predictions/s",
            "bare consumer of the same topic, touching nothing",
            delivered,
            stream_rate / delivered,
            "",
        ),
    ]


@dataclass(frozen=True)
class HttpRun:
    offered: float
    achieved: float
    p50: float
    p99: float
    placement: str  # which CPUs the server and the load generator ran on


def _placement() -> tuple[set[int] | None, set[int] | None, str]:
    """The server's CPUs and the load generator's: apart when the machine has two or more."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, "server and load share 1 CPU"
    server, load = set(cpus[:-1]), {cpus[-1]}
    return server, load, f"server on CPU {sorted(server)}, load on CPU {sorted(load)}"


def _http_latencies(
    local: Settings, store: Any, symbol: str, seconds: float, rates: list[float]
) -> tuple[list[HttpRun], list[HttpRun], list[float]]:
    """Latency of `rtml serve` and of the bare Feast server of `bench/bare_server.py`, each in
    its own process on the same CPUs, loaded in turn by the open-loop generator of
    `bench/loadgen.py` in another, at each rate; with the latencies of bare Feast reads in
    this process, in seconds."""
    import multiprocessing

    from bench import loadgen

    bare = []
    for _ in range(2000):
        began = time.perf_counter()
        fs.online_features(store, [symbol], with_timestamps=True)
        bare.append(time.perf_counter() - began)

    server_cpus, load_cpus, placement = _placement()
    servers = {
        "rtml": _start_server(local, ["-m", "rtml.app.cli", "serve"], server_cpus),
        "bare": _start_server(local, ["-m", "bench.bare_server"], server_cpus),
    }
    runs: dict[str, list[HttpRun]] = {name: [] for name in servers}
    try:
        for process, url in servers.values():
            _wait_and_warm(process, f"{url}/predict/{symbol}")
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            for rate in rates:
                for name, (_, url) in servers.items():
                    run = pool.apply(
                        loadgen.run, (f"{url}/predict/{symbol}", rate, seconds), {"cpus": load_cpus}
                    )
                    if run.failed:
                        raise RuntimeError(
                            f"{run.failed} requests to the {name} server failed at {rate}/s"
                        )
                    runs[name].append(
                        HttpRun(
                            run.offered,
                            run.achieved,
                            percentile(run.latencies, 0.5),
                            percentile(run.latencies, 0.99),
                            placement,
                        )
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    return runs["rtml"], runs["bare"], bare


def _start_server(local: Settings, args: list[str], cpus: set[int] | None) -> tuple[Any, str]:
    """A server process on a free port, pinned to `cpus` before it has loaded anything."""
    import os
    import subprocess

    port = free_port()
    server_settings = local.model_copy(update={"api_port": port, "api_access_log": False})
    env = server_settings.child_env(
        "state_dir",
        "kafka_port",
        "redis_port",
        "mlflow_port",
        "model_name",
        "api_port",
        "api_access_log",
    )
    process = subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    return process, f"http://127.0.0.1:{port}"


def _wait_and_warm(process: Any, url: str) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    for _ in range(200):  # warm up
        httpx.get(url).raise_for_status()


def _streaming_rate(
    local: Settings, holder: Any, learner: Any, row: Any
) -> tuple[float, float, float]:
    from rtml.records import FeatureRow
    from rtml.serving.stream import StreamingPredictor

    symbol = local.symbols[0]
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    producer = make_producer(local)
    n = 100_000  # seconds of work: the consumer's first fetches are not the steady state
    for i in range(n):
        event = FeatureRow(symbol, 1_700_000_000 + 60 * i, row.values)
        send(producer, topics.features, encode(event.to_json()), symbol.encode())
        producer.poll(0)
    producer.flush(30)
    xs = [{n: 0.01 for n in FEATURE_NAMES}] * n

    def bare() -> float:
        began = time.perf_counter()
        for x in xs:
            learner.predict_one(x)
        return n / (time.perf_counter() - began)

    def streaming() -> float:
        """One predictor reading the topic from the start in a group of its own; its start-up
        (the group join, the first fetch) is not throughput."""
        streamer = StreamingPredictor(local, holder, group_id=f"bench-{uuid.uuid4().hex[:6]}")
        runner = threading.Thread(target=streamer.run, kwargs={"max_seconds": 120})
        runner.start()
        while streamer.predicted == 0 and runner.is_alive():
            time.sleep(0.001)
        first = time.perf_counter()
        while streamer.predicted < n and runner.is_alive():
            time.sleep(0.005)
        rate = streamer.predicted / (time.perf_counter() - first)
        streamer.stop.set()
        runner.join(30)
        return rate

    delivered = bare_consume_rate(local, topics.features, n)
    bare_rate, stream_rate = interleaved(3, bare, streaming)
    return stream_rate, bare_rate, delivered
