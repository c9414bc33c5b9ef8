"""`rtml demo` on the real stack: every component as its own process, stopped by SIGTERM."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest

from rtml import checkpoints, registry
from rtml.app.demo import Demo, DemoRun
from rtml.app.processes import free_port
from rtml.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_demo_runs_the_loop_and_every_service_exits_cleanly_on_sigterm(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    local = settings.model_copy(
        update={
            "symbols": (f"D1{tag}/USD", f"D2{tag}/USD"),
            "api_port": free_port(),
            "monitor_port": free_port(),
        }
    )
    lines: list[str] = []
    demo = Demo(local, DemoRun(days=0.25, speed=600, status_every=5), out=lines.append)
    ev = demo.run(40)

    # every service finished its work and exited 0 within 10 s of SIGTERM
    codes = {c.name: c.proc.returncode for c in demo.children}
    assert codes == dict.fromkeys(codes, 0), (codes, lines[-20:])
    assert set(codes) == {"trainer", "features", "predictor", "predict-stream", "monitor", "feed"}
    assert max(demo.stopped_in.values()) <= 10, demo.stopped_in

    status = [line for line in lines if line.startswith("[")]
    assert len(status) >= 5 and any("rolling MAE served" in line for line in status), status
    summary = ev.summary()
    assert summary["examples"] > 100
    assert all(math.isfinite(v) for v in summary.values()), summary
    assert set(ev.symbol) == set(local.symbols)
    # the initial fit is served if the gate passed it, the naive baseline (version 0) if not
    assert ev.versions[0] in (0, int(demo.first_champion or 0))
    newest = registry.alias_version(demo.settings, registry.CANDIDATE)
    assert newest is not None and max(ev.versions) <= int(newest)
    report = demo.report(ev)
    assert any("MAE static" in line for line in report)
    assert any(line.strip().startswith("served / naive") for line in report)
    share = next(line for line in report if "served by a learned model" in line)
    assert f"{summary['model_share']:.0%}" in share
    # the trainer checkpointed on SIGTERM: its newest checkpoint learned the stream's examples
    learned = checkpoints.learned(demo.settings)
    assert learned is not None and learned >= summary["examples"]


def test_the_evaluation_scores_what_it_can_and_counts_the_records_it_leaves_out(
    settings: Settings,
) -> None:
    """A demo's topics are topics like any other: a record a client wrote there that is not
    rtml's, or is spoiled, is left out of the evaluation and counted, where it stopped it."""
    from rtml.app.scores import evaluate
    from rtml.kafka import Topics, encode, ensure_topics, make_producer
    from rtml.pipelines.features.indicators import FEATURE_NAMES
    from rtml.records import Example, Prediction

    local = settings.model_copy(update={"topic_prefix": f"eval{uuid.uuid4().hex[:6]}."})
    topics = Topics.of(local)
    ensure_topics(local, [topics.examples, topics.predictions])
    x = {n: 0.01 for n in FEATURE_NAMES}
    examples = [Example("A", 60.0 * i, 60.0 * i + 300, x, 0.001 * i) for i in range(1, 4)]
    predictions = [Prediction("A", 60.0 * i, 0.002, 1, 50.0, "m") for i in range(1, 3)]
    producer = make_producer(local)
    for ex in examples:
        producer.produce(topics.examples, encode(ex.to_json()), b"A")
    for p in predictions:
        producer.produce(topics.predictions, encode(p.to_json()), b"A")
    hostile = [
        b"not json",
        b"[1, 2]",
        b'{"symbol": "A", "ts": "x"}',
        b'{"ts": 1' + b"0" * 400 + b"}",
    ]
    for raw in hostile:
        producer.produce(topics.examples, raw)
        producer.produce(topics.predictions, raw)
    none = Prediction("A", 180.0, math.nan, 1, 50.0, "m")  # the model gave no prediction
    producer.produce(topics.predictions, encode(none.to_json()), b"A")
    assert producer.flush(10) == 0

    class Static:
        def predict_one(self, x: dict[str, float]) -> float:
            return 0.0

    ev = evaluate(local, Static())
    assert ev.ts == [60.0, 120.0] and ev.target == [0.001, 0.002] and ev.served == [0.002] * 2
    assert ev.versions == [1, 1] and ev.trained_through == [50.0, 50.0]
    assert sum(ev.refused.values()) == 2 * len(hostile) + 1
    assert ev.refused["predictions no_prediction"] == 1
    assert ev.refused["examples not_json"] == 2 and ev.refused["predictions not_json"] == 2


def test_the_demo_shows_the_warm_starts_progress_from_the_trainers_log(tmp_path: Path) -> None:
    from rtml.app.demo import _progress_in

    log = tmp_path / "demo-trainer.log"
    assert _progress_in(log) is None  # not written yet
    log.write_text("INFO rtml: warm start on 8000 labels\n")
    assert _progress_in(log) is None
    bars = (
        "warm start 1/2:  12%|#2 | 1000/8000 [00:01<00:07]\rwarm start 1/2:  45%|####5 | 3600/8000"
    )
    log.write_text(f"INFO rtml: warm start on 8000 labels\n{bars} [00:04<00:05]\r")
    assert _progress_in(log) == "warm start 1/2: 45% 3600/8000"
