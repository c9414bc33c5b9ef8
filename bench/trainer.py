"""The trainer: examples from memory and via Kafka, beside a bare consumer of the same topic."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from bench.figure import Figure
from bench.measure import bare_consume_rate, interleaved
from rtml.kafka import Topics, encode, ensure_topics, make_producer
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.features.processor import FeatureProcessor
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings


def _trainer_in_memory(local: Settings, records: list[bytes]) -> Callable[[], float]:
    """Examples/s of the trainer's own loop (the runner, parsing, checks, the learner with its
    metrics and drift) over `records` from memory: what it costs without the broker."""
    from confluent_kafka import Message

    from rtml.pipelines.training.learner import Learner
    from rtml.pipelines.training.models import build_model
    from rtml.pipelines.training.trainer import Trainer
    from rtml.runner import Runner
    from rtml.testing import MemorySink, MemorySource

    topic = Topics.of(local).examples
    messages = [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=value)
        for i, value in enumerate(records)
    ]

    def run() -> float:
        trainer = Trainer(local.model_copy(update={"checkpoint_every": len(records) + 1}))
        trainer.learner = Learner(
            build_model(local.model, local.model_params, local.target), window=local.metrics_window
        )
        batches = [messages[i : i + 1000] for i in range(0, len(messages), 1000)]
        source = MemorySource(batches, [(topic, 0)])
        runner = Runner(source, MemorySink(), trainer.step, trainer.counters, stop=source.drained)
        began = time.perf_counter()
        runner.run()
        return len(records) / (time.perf_counter() - began)

    return run


def _trainer_via_kafka(local: Settings, n: int) -> Callable[[], float]:
    """Examples/s of a trainer learning the `n` examples on `examples`, each run a new model
    (its own registered name) reading the topic from the start. Start-up (MLflow, the warm
    start, the first fetch) is not throughput: the clock starts at the first example learned."""
    from rtml import registry
    from rtml.pipelines.training.models import build_model
    from rtml.pipelines.training.trainer import Trainer

    runs = 0

    def run() -> float:
        nonlocal runs
        runs += 1
        settings = local.model_copy(update={"model_name": f"{local.model_name}-{runs}"})
        # a version is registered already: registering a trainer's first version is a one-off
        # of a new model (seconds of MLflow work), later ones come every RTML_REGISTER_INTERVAL_S
        first_version = registry.log_version(settings, build_model("linear"))
        registry.set_alias(settings, registry.CANDIDATE, first_version)
        trainer = Trainer(settings)
        thread = threading.Thread(target=trainer.run, kwargs={"max_examples": n})
        thread.start()
        while (trainer.learner is None or trainer.learner.learned == 0) and thread.is_alive():
            time.sleep(0.001)
        first = time.perf_counter()
        start_count = trainer.learner.learned if trainer.learner else 0
        while trainer.learner is not None and trainer.learner.learned < n:
            if not thread.is_alive():
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - first
        learned = (trainer.learner.learned if trainer.learner else 0) - start_count
        thread.join(120)
        return learned / elapsed

    return run


def bench_trainer(settings: Settings, n_candles: int, checkpoint_every: int = 1000) -> list[Figure]:
    """The trainer's loop (Kafka, parsing, metrics, drift, checkpoints to MLflow) against a bare
    River predict-then-learn loop over the same examples; beside it, the same loop over the
    records from memory, and what a bare consumer gets from the broker. Each is the best of
    three, the three measured in turn (`interleaved`)."""
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS, TARGET_BOUNDS
    from rtml.pipelines.training.models import build_model
    from rtml.records import examples_reader

    tag = uuid.uuid4().hex[:6]
    local = settings.model_copy(
        update={
            "topic_prefix": f"bench{tag}.",
            "symbols": tuple(f"{s}{tag}" for s in "ABCD"),
            "model_name": f"bench-{tag}",
            "checkpoint_every": checkpoint_every,
            "checkpoint_interval_s": 30.0,
        }
    )
    topics = Topics.of(local)
    ensure_topics(local, [topics.examples], partitions=1)
    ensure_topics(local, topics.with_dlqs())
    market = SyntheticMarket(local.symbols, seed=5, start_ts=1_700_000_000, trades_per_candle=2)
    processor = FeatureProcessor(60, 0, 5)
    records = [
        encode(ex.to_json())
        for trade in market.candles_of_trades(n_candles)
        for ex in processor.on_trade(trade).examples
    ]
    # whole batches of the runner's 1000: a last, part batch would wait out the poll timeout
    # for records that never come, a pause at the end of a finite topic, not a cost of learning
    records = records[: len(records) // 1000 * 1000]
    producer = make_producer(local)
    for record in records:
        producer.produce(topics.examples, key=b"k", value=record)
        producer.poll(0)
    producer.flush(30)

    reader = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
    examples = [reader.read(r) for r in records]

    def bare() -> float:
        model = build_model(local.model, local.model_params, local.target)
        began = time.perf_counter()
        for ex in examples:
            model.predict_one(ex.features)
            model.learn_one(ex.features, ex.target)
        return len(examples) / (time.perf_counter() - began)

    delivered = bare_consume_rate(local, topics.examples, len(records))
    ref, in_memory, value = interleaved(
        3, bare, _trainer_in_memory(local, records), _trainer_via_kafka(local, len(records))
    )
    return [
        Figure(
            "trainer via Kafka with metrics, drift and MLflow checkpoints",
            value,
            "examples/s",
            f"bare River predict+learn loop of the same model ({local.model})",
            ref,
            value / ref,
            "ratio >= 0.6",
        ),
        Figure(
            "trainer's loop over the same records from memory (no broker)",
            in_memory,
            "examples/s",
            f"bare River predict+learn loop of the same model ({local.model})",
            ref,
            in_memory / ref,
            "",
        ),
        Figure(
            "trainer via Kafka (as above)",
            value,
            "examples/s",
            "bare consumer of the same topic, touching nothing",
            delivered,
            value / delivered,
            "",
        ),
    ]
