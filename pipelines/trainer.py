"""The trainer: warm start from Feast, learn from `examples`, checkpoint to MLflow, gate.

It is the single writer of its model. Each checkpoint holds the whole learner (model, what it
learned, metrics) with the next offset of every partition, taken at one instant of the
single-threaded loop; uploads run on a background thread with a bounded queue so learning
never waits on MLflow. On start it restores the newest checkpoint (alias `candidate`) and
assigns the partitions at its offsets: after a crash, what was learned since that checkpoint is
learned again from the same records, once. Checkpoints also name the `examples` topic's id: when
the broker has forgotten that topic (a restarted embedded broker, a re-created topic), the
trainer learns what it missed from the offline store and reads the new topic from its start.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from tqdm import tqdm

from rtml import feature_store as fs
from rtml import registry
from rtml.errors import ConfigError
from rtml.kafka import (
    Topics,
    TopicWatch,
    dead_letter,
    encode,
    ensure_topics,
    make_consumer,
    make_producer,
)
from rtml.pipelines.features import FEATURE_NAMES
from rtml.pipelines.gate import GateDecision, gate
from rtml.pipelines.learner import Learner, parse_example
from rtml.pipelines.models import build_model
from rtml.pipelines.processor import Example
from rtml.pipelines.trades import BadRecord
from rtml.settings import Settings

log = logging.getLogger(__name__)

PRUNE_EVERY = 10  # uploads between prunings of old versions


def offline_examples(settings: Settings, after: Mapping[str, float] | None = None) -> list[Example]:
    """The offline store's targets joined point-in-time to their features, in time order.

    `after` keeps, per symbol, only the examples whose event time is past the given one.
    """
    targets = fs.read_parquet_dir(settings.offline_dir / fs.TARGETS_DATASET)
    if not targets.empty:
        targets = targets[targets["symbol"].isin(settings.symbols)]  # this trainer's shard
    if after and not targets.empty:
        since = targets["symbol"].map(after).fillna(-math.inf).astype(float)
        stamps = targets["event_timestamp"].map(lambda t: t.timestamp())
        targets = targets[stamps > since]
    if targets.empty:
        return []
    targets = targets.drop_duplicates(["symbol", "event_timestamp"]).sort_values("event_timestamp")
    store = fs.open_store(settings)
    service = store.get_feature_service(fs.FEATURE_SERVICE)
    frame = store.get_historical_features(
        # `created` would clash with the feature sources' own created-timestamp column
        entity_df=targets[["symbol", "event_timestamp", "target_return", "created"]].rename(
            columns={"created": "label_time"}
        ),
        features=service,
    ).to_df()
    frame = frame.sort_values(["event_timestamp", "symbol"], kind="stable")
    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    rows = frame[["symbol", "event_timestamp", "label_time", "target_return", *names]].to_dict(
        "records"
    )
    return [
        Example(
            str(r["symbol"]),
            r["event_timestamp"].timestamp(),
            r["label_time"].timestamp(),
            {n: float(r[n]) for n in names if r[n] is not None and math.isfinite(r[n])},
            float(r["target_return"]),
        )
        for r in rows
    ]


def fit(learner: Learner, examples: list[Example], epochs: int, progress: bool = True) -> None:
    """The first pass predicts before learning (progressive metrics); further passes only learn."""
    for epoch in range(epochs):
        desc = f"warm start {epoch + 1}/{epochs}"
        for ex in tqdm(examples, desc=desc, disable=not progress):
            if epoch == 0:
                learner.step(ex)
            else:
                learner.model.learn_one(ex.features, ex.target)


def warm_start(settings: Settings, learner: Learner) -> int:
    """Fit on the offline store, `warm_start_epochs` passes; returns how many examples."""
    examples = offline_examples(settings)
    if not examples:
        log.warning("the offline store has no targets yet: starting from an untrained model")
        return 0
    fit(learner, examples, settings.warm_start_epochs)
    return len(examples)


@dataclass
class Checkpoint:
    learner_bytes: bytes
    offsets: dict[int, int]
    metrics: dict[str, float]
    champion_rolling_mae: float | None
    topic_id: str | None = None  # the incarnation of `examples` the offsets belong to


class Uploader:
    """Logs checkpoints as model versions off the learning thread; the queue is bounded.

    When MLflow is slow or away and the queue is full, the oldest waiting checkpoint is
    dropped (only the newest is needed to resume) and counted.
    """

    def __init__(
        self,
        settings: Settings,
        run_id: str,
        capacity: int,
        on_promote: Callable[[Learner], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.on_promote = on_promote
        self.run_id = run_id
        self.queue: queue.Queue[Checkpoint | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.superseded = 0
        self.uploaded: list[str] = []
        self.decisions: list[tuple[str, bool, str]] = []
        self.diverging = False  # the newest candidate's error is infinite or above MAX_MAE
        self._producer: Producer | None = None
        self._thread = threading.Thread(target=self._work, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: Checkpoint) -> None:
        while True:
            try:
                self.queue.put_nowait(checkpoint)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                    log.warning("checkpoint queue full: dropped the oldest waiting checkpoint")
                except queue.Empty:
                    pass

    def close(self, timeout: float = 60.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _alert_if_diverging(self, version: str, mae: float, decision: GateDecision) -> None:
        """One alert on `alerts` when the candidate starts diverging (it is never promoted)."""
        diverging = math.isinf(mae) or mae > self.settings.max_mae
        if diverging and not self.diverging:
            alert = {
                "kind": "diverging",
                "model": self.settings.model_name,
                "version": version,
                "rolling_mae": mae if math.isfinite(mae) else None,
                "reason": decision.reason,
                "ts": time.time(),
            }
            if self._producer is None:
                self._producer = make_producer(self.settings)
            key = self.settings.model_name.encode()
            self._producer.produce(Topics.of(self.settings).alerts, key=key, value=encode(alert))
            self._producer.flush(10)
            log.error("version %s diverges and is not served: %s", version, decision.reason)
        self.diverging = diverging

    def _newest_waiting(self, checkpoint: Checkpoint) -> Checkpoint:
        """The newest checkpoint queued behind `checkpoint` supersedes it: a whole learner
        with its offsets. Uploading only the newest keeps the served model fresh when
        uploads are slower than checkpoints."""
        while True:
            try:
                waiting = self.queue.get_nowait()
            except queue.Empty:
                return checkpoint
            if waiting is None:
                self.queue.put(None)  # close once the newest is up
                return checkpoint
            self.superseded += 1
            checkpoint = waiting

    def _work(self) -> None:
        while (first := self.queue.get()) is not None:
            checkpoint = self._newest_waiting(first)
            backoff = 0.5
            while True:
                try:
                    self._upload(checkpoint)
                    break
                except Exception as exc:
                    log.warning("checkpoint upload failed (%s); retrying in %.1f s", exc, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    checkpoint = self._newest_waiting(checkpoint)
        if self.uploaded:
            try:
                registry.prune(self.settings, self.settings.keep_versions)
            except Exception as exc:
                log.warning("could not prune old versions: %s", exc)

    def _upload(self, cp: Checkpoint) -> None:
        import mlflow
        from mlflow.entities import Metric

        learner = pickle.loads(cp.learner_bytes)
        client = registry.client(self.settings)
        decision = gate(
            cp.metrics["rolling_mae"],
            cp.metrics["baseline_rolling_mae"],
            cp.champion_rolling_mae,
            self.settings.max_mae,
            self.settings.gate_tolerance,
        )
        tags = {
            "offsets": json.dumps({str(k): v for k, v in sorted(cp.offsets.items())}),
            "examples_topic_id": cp.topic_id or "",
            "watermark": str(learner.watermark),
            "learned": str(learner.learned),
            "gate": decision.reason,
            **{f"metric.{k}": f"{v:.6g}" for k, v in cp.metrics.items()},
        }
        # the order keeps the served model fresh: register, promote, then the bookkeeping
        # (a crash in between resumes from the older candidate and relearns the same examples)
        with mlflow.start_run(run_id=self.run_id):
            version = registry.log_version(
                self.settings, learner, tags=tags, feature_names=FEATURE_NAMES
            )
        if decision.promote:
            registry.promote(self.settings, version)
            self.on_promote(learner)
        self._alert_if_diverging(version, cp.metrics["rolling_mae"], decision)
        name = self.settings.model_name
        client.set_registered_model_alias(name, registry.CANDIDATE, version)
        step, now = int(cp.metrics.get("learned", 0)), int(time.time() * 1000)
        client.log_batch(
            self.run_id,
            [Metric(k, v, now, step) for k, v in cp.metrics.items() if math.isfinite(v)],
        )
        if len(self.uploaded) % PRUNE_EVERY == 0:
            registry.prune(self.settings, self.settings.keep_versions)
        self.uploaded.append(version)
        self.decisions.append((version, decision.promote, decision.reason))
        log.info(
            "version %s: %s%s", version, decision.reason, " -> champion" if decision.promote else ""
        )


class Trainer:
    def __init__(self, settings: Settings, group_id: str = "rtml-trainer") -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        self.group_id = group_id
        self.stop = threading.Event()
        self.rejected: dict[str, int] = {}
        self.learner: Learner | None = None
        self.offsets: dict[int, int] = {}
        self.uploader: Uploader | None = None
        self._champion: Learner | None = None
        self._recent: deque[Example] = deque(maxlen=settings.metrics_window)
        self.drifts_at_start = 0
        self.other_shards = 0
        self.topic_id: str | None = None  # the id of the `examples` topic being read
        self.stored_topic_id: str | None = None  # the one the restored offsets belong to
        self.caught_up = 0  # examples learned from the offline store after the broker forgot

    def restore_or_warm_start(self) -> None:
        restored = registry.latest_checkpoint(self.settings)
        if restored is not None:
            self.learner, self.offsets, self.stored_topic_id = restored
            log.info(
                "resumed from checkpoint: %d learned, offsets %s",
                self.learner.learned,
                self.offsets,
            )
        else:
            self.learner = Learner(
                build_model(self.settings.model, self.settings.model_params),
                window=self.settings.metrics_window,
                drift_delta=self.settings.drift_delta,
            )
            n = warm_start(self.settings, self.learner)
            log.info("warm start learned %d examples from the offline store", n)
        self._champion = registry.load_champion_learner(self.settings)
        self.drifts_at_start = self.learner.drifts

    def _new_champion(self, learner: Learner) -> None:
        # called on the uploader thread; a reference swap, read at the next checkpoint
        self._champion = learner

    def _champion_mae(self) -> float | None:
        """The champion's MAE on the examples of the candidate's rolling window.

        Scored at checkpoint time rather than per example: the learning loop stays as cheap
        as the candidate alone.
        """
        champion = self._champion
        if champion is None or not self._recent:
            return None
        total = 0.0
        for ex in self._recent:
            total += abs(ex.target - champion.predict_one(ex.features))
        mae = total / len(self._recent)
        return mae if math.isfinite(mae) else math.inf

    def checkpoint(self) -> None:
        assert self.learner is not None and self.uploader is not None
        if self.learner.settle_challenger():
            log.info("the challenger started at the last drift erred less: it is now the model")
        metrics = self.learner.metrics()
        self.uploader.submit(
            Checkpoint(
                pickle.dumps(self.learner),
                dict(self.offsets),
                metrics,
                self._champion_mae(),
                self.topic_id,
            )
        )

    def catch_up(self) -> int:
        """Learn what the offline store holds past what each symbol has learned.

        Called when the broker has lost `examples` with the offsets into it: the examples
        the trainer had not read yet are in the offline store, which the feature pipeline
        writes before it commits. Returns how many were learned.
        """
        assert self.learner is not None
        examples = offline_examples(self.settings, after=self.learner.last_ts)
        learned = 0
        for ex in tqdm(examples, desc="catching up from the offline store", disable=None):
            if self.learner.step(ex):
                self._recent.append(ex)
                learned += 1
        self.caught_up += learned
        log.warning("caught up on %d examples from the offline store", learned)
        return learned

    def _assign(self, consumer: Consumer) -> None:
        metadata = consumer.list_topics(self.topics.examples, timeout=10)
        partitions = sorted(metadata.topics[self.topics.examples].partitions)
        consumer.assign(
            [
                TopicPartition(self.topics.examples, p, self.offsets.get(p, OFFSET_BEGINNING))
                for p in partitions
            ]
        )

    def _broker_forgot(self, consumer: Consumer | None, watch: TopicWatch) -> None:
        """`examples` is not the topic the offsets point into: start it over after catching up."""
        log.warning(
            "the broker no longer has the %s the offsets %s belong to (restarted or re-created): "
            "catching up from the offline store, then reading the new topic from its start",
            self.topics.examples,
            self.offsets,
        )
        ensure_topics(self.settings, self.topics.with_dlqs())
        self.topic_id = watch.remember()[self.topics.examples]
        self.offsets = {}
        self.catch_up()
        if consumer is not None:
            consumer.unassign()
            self._assign(consumer)
        self.checkpoint()

    def _handle(self, msg: Message, producer: Producer) -> int:
        """Learn one record; returns 1 if it was learned, 0 if skipped or rejected."""
        assert self.learner is not None
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return 0
        partition, offset = msg.partition() or 0, msg.offset() or 0
        self.offsets[partition] = offset + 1
        try:
            ex = parse_example(msg.value() or b"")
        except BadRecord as exc:
            self.rejected[exc.kind] = self.rejected.get(exc.kind, 0) + 1
            origin = f"{self.topics.examples}[{partition}]@{offset}"
            dead_letter(
                producer, self.topics.examples, str(exc), msg.value(), key=msg.key(), origin=origin
            )
            return 0
        if self.settings.shards and ex.symbol not in self.settings.symbols:
            self.other_shards += 1  # another shard's trainer learns it
            return 0
        learned = self.learner.step(ex)
        if learned:
            self._recent.append(ex)
        if self.learner.drift_detected:
            self._on_drift(ex, producer)
        return int(learned)

    def _on_drift(self, ex: Example, producer: Producer) -> None:
        assert self.learner is not None
        metrics = self.learner.metrics()
        alert = {
            "kind": "drift",
            "symbol": ex.symbol,
            "ts": ex.ts,
            "label_ts": ex.label_ts,
            "model": self.settings.model_name,
            "rolling_mae": metrics["rolling_mae"],
            "response": self.settings.drift_response,
        }
        producer.produce(self.topics.alerts, key=ex.symbol.encode(), value=encode(alert))
        log.warning("drift in the error stream at %s@%s: %s", ex.symbol, ex.ts, alert)
        fresh = build_model(self.settings.model, self.settings.model_params)
        if self.settings.drift_response == "reset":
            self.learner.reset_model(fresh)
        elif self.settings.drift_response == "challenger" and self.learner.challenger is None:
            self.learner.start_challenger(fresh)

    def run(self, max_seconds: float | None = None, max_examples: int | None = None) -> Learner:
        import mlflow

        settings = self.settings
        ensure_topics(settings, self.topics.with_dlqs())
        mlflow.set_tracking_uri(settings.mlflow_uri)
        mlflow.set_experiment(settings.experiment_name)
        self.restore_or_warm_start()
        assert self.learner is not None
        run = mlflow.start_run(run_name="trainer")
        mlflow.end_run()  # the uploader resumes it by id on its own thread
        self.uploader = Uploader(
            settings, run.info.run_id, settings.checkpoint_queue, on_promote=self._new_champion
        )
        watch = TopicWatch(settings, [self.topics.examples])
        self.topic_id = watch.remember()[self.topics.examples]
        if self.stored_topic_id and self.stored_topic_id != self.topic_id:
            self._broker_forgot(None, watch)
        elif registry.alias_version(settings, registry.CANDIDATE) is None:
            self.checkpoint()  # the warm-started model is the first version
        consumer = make_consumer(settings, self.group_id)
        producer = make_producer(settings)
        self._assign(consumer)
        deadline = time.monotonic() + max_seconds if max_seconds else None
        since, last_cp = 0, time.monotonic()
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if max_examples is not None and self.learner.learned >= max_examples:
                    break
                if watch.changed():
                    self._broker_forgot(consumer, watch)
                    since, last_cp = 0, time.monotonic()
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    since += self._handle(msg, producer)
                    if since >= settings.checkpoint_every:
                        self.checkpoint()
                        since, last_cp = 0, time.monotonic()
                    if max_examples is not None and self.learner.learned >= max_examples:
                        self.stop.set()
                        break
                if since and time.monotonic() - last_cp >= settings.checkpoint_interval_s:
                    self.checkpoint()
                    since, last_cp = 0, time.monotonic()
            if since:
                self.checkpoint()
        finally:
            consumer.close()
            producer.flush(10)
            self.uploader.close()
        return self.learner


def retrain(settings: Settings) -> tuple[str, GateDecision]:
    """Refit a fresh model on the offline store, register it and put it through the gate.

    The trainer's own stream continues untouched; this version competes only for `champion`.
    """
    import mlflow

    learner = Learner(
        build_model(settings.model, settings.model_params),
        window=settings.metrics_window,
        drift_delta=settings.drift_delta,
    )
    n = warm_start(settings, learner)
    if n == 0:
        raise ConfigError(
            "the offline store has no labelled examples for these symbols; "
            "run `rtml backfill` or the feature pipeline first"
        )
    metrics = learner.metrics()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.experiment_name)
    with mlflow.start_run(run_name="retrain"):
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        version = registry.log_version(
            settings,
            learner,
            tags={"source": "retrain", "watermark": str(learner.watermark)},
            feature_names=FEATURE_NAMES,
        )
    decision = gate(
        metrics["rolling_mae"],
        metrics["baseline_rolling_mae"],
        None,
        settings.max_mae,
        settings.gate_tolerance,
    )
    registry.client(settings).set_model_version_tag(
        settings.model_name, version, "gate", decision.reason
    )
    if decision.promote:
        registry.promote(settings, version)
    return version, decision
