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
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import (
    Message,
    Producer,
)
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from rtml import checkpoints, registry
from rtml import feature_store as fs
from rtml.consumers import AssignedSource
from rtml.event_time import SETTLED
from rtml.kafka import (
    Topics,
    TopicWatch,
    encode,
    ensure_topics,
    make_consumer,
    make_producer,
    send,
)
from rtml.metrics import Counters, serve_metrics
from rtml.records import Example, examples_reader
from rtml.runner import Hooks, Pace, Runner
from rtml.settings import Settings

from ..features.indicators import FEATURE_BOUNDS, FEATURE_NAMES, TARGET_BOUNDS
from ..features.targets import target
from .admission import Admission
from .checkpoint import Checkpoint, Uploader
from .dataset import offline_examples, warm_start
from .learner import Learner
from .models import build_model
from .retrain import champion_errors, trained_through

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, settings: Settings, group_id: str | None = None) -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        # its offsets live in its checkpoint; the group shows them to Kafka's tools
        self.group_id = group_id or f"rtml-trainer.{settings.model_name}"
        self.stop = threading.Event()
        self.counters = Counters("trainer")
        self.metrics_port: int | None = None  # with RTML_METRICS_PORT
        self.learner: Learner | None = None
        self.offsets: dict[int, int] = {}
        self.uploader: Uploader | None = None
        self.run_id: str | None = None  # the trainer's MLflow run
        self.restored_from: str | None = None  # the checkpoint artifact it resumed from
        self._champion: Any | None = None  # the champion's estimator, to score candidates
        self._champion_through = -math.inf  # the newest label time it learned
        self._champion_ours = False  # promoted by this trainer's gate: refreshed by it
        self._new_incumbent = False  # the champion changed: tests start on new examples
        self.drifts_at_start = 0
        self.skips: set[tuple[int, int]] = set()  # (partition, offset) an operator skipped
        self.max_examples: int | None = None  # stop once the learner has learned this many
        self._since = 0  # learned since the last checkpoint
        self._last_checkpoint = time.monotonic()
        self._producer: Producer | None = None
        self.topic_id: str | None = None  # the id of the `examples` topic being read
        self.stored_topic_id: str | None = None  # the one the restored offsets belong to
        self.caught_up = 0  # examples learned from the offline store after the broker forgot
        # every configured symbol: this shard's are learned, other shards' are skipped
        self.admission = Admission.of(settings)
        self.own_symbols = frozenset(settings.symbols)
        # examples are keyed by symbol: another shard's are passed over by their key alone
        others = self.admission.known_symbols - self.own_symbols
        self._other_keys = frozenset(s.encode() for s in others)
        # only the features the model reads: other keys would each become a weight for good
        self._examples = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
        self.label = target(settings.target)

    def restore_or_warm_start(self) -> None:
        restored = checkpoints.latest_checkpoint(self.settings)
        if restored is not None:
            self.learner, self.offsets, self.stored_topic_id, self.restored_from = restored
            log.info(
                "resumed from checkpoint: %d learned, offsets %s",
                self.learner.learned,
                self.offsets,
            )
        else:
            self.learner = Learner(
                build_model(self.settings.model, self.settings.model_params, self.settings.target),
                window=self.settings.metrics_window,
                drift_delta=self.settings.drift_delta,
                target=self.settings.target,
            )
            # the learner's record as served over the whole history is its first gate test
            self.learner.start_record()
            dataset = warm_start(self.settings, self.learner)
            log.info("warm start learned %d examples from the offline store", dataset.examples)
            if self.run_id is not None:
                checkpoints.log_params(self.settings, self.run_id, dataset.params())
            if self.run_id is not None and dataset.examples:
                try:
                    registry.log_dataset(self.settings, self.run_id, dataset.params())
                except MlflowException as exc:  # what it read is in the params too
                    log.warning("the warm start's dataset was not logged: %s", exc)
        try:
            loaded = registry.load_champion(self.settings)
            if loaded is not None:
                found = registry.decision(self.settings) or {}
                ours = found.get("by") == registry.TRAINER and found.get("action") == "promote"
                # a restored learner's record and tests are against this champion already
                self._new_champion(
                    loaded.model, trained_through(loaded), ours, new_incumbent=restored is None
                )
        except (ModuleNotFoundError, AttributeError, pickle.UnpicklingError) as exc:
            # a version logged by an older rtml, whose pickle names classes that moved
            log.warning(
                "the champion cannot be loaded (%s); candidates are gated without it until "
                "one is promoted (`rtml promote VERSION` to choose one)",
                exc,
            )
        self.drifts_at_start = self.learner.drifts

    def _new_champion(
        self,
        model: Any | None,
        through: float = -math.inf,
        ours: bool = False,
        new_incumbent: bool = True,
    ) -> None:
        """`ours`: the trainer's gate promoted it, a checkpoint of this learner (which its
        later checkpoints refresh), not a person's choice or a `retrain`. `new_incumbent`:
        not a refresh of the learner that served, so the gate's budget starts again."""
        # called on the uploader thread; reference swaps, read at the next checkpoint
        self._champion, self._champion_through = model, through
        self._champion_ours = ours and model is not None
        if new_incumbent:
            self._new_incumbent = True  # the learning thread restarts the record it gates on

    def params(self) -> dict[str, Any]:
        """What the trainer's MLflow run records as its parameters."""
        s = self.settings
        return {
            "model": s.model,
            "model_params": json.dumps(s.model_params, sort_keys=True),
            "symbols": ",".join(s.symbols),
            "candle_seconds": s.candle_seconds,
            "horizon": s.horizon,
            "features": ",".join(FEATURE_NAMES),
            "feature_service": fs.FEATURE_SERVICE,
            "warm_start_epochs": s.warm_start_epochs,
            "metrics_window": s.metrics_window,
            "checkpoint_every": s.checkpoint_every,
            "checkpoint_interval_s": s.checkpoint_interval_s,
            "register_interval_s": s.register_interval_s,
            "max_mae": s.max_mae,
            "gate_z": s.gate_z,
            "gate_alpha": s.gate_alpha,
            "drift_delta": s.drift_delta,
            "drift_response": s.drift_response,
        }

    def _champion_errors(self) -> list[float] | None:
        """The champion's errors on the examples the candidate is gated on.

        Scored at checkpoint time rather than per example: the learning loop stays as cheap
        as the candidate alone.
        """
        assert self.learner is not None
        if self._champion is None:
            return None
        return champion_errors(
            self._champion, self._champion_through, self.learner.recent, self.learner.target
        )

    def checkpoint(self) -> None:
        assert self.learner is not None and self.uploader is not None
        self._since, self._last_checkpoint = 0, time.monotonic()
        if self.learner.settle_challenger():
            log.info("the challenger started at the last drift erred less: it is now the model")
        metrics = self.learner.metrics()
        if self._new_incumbent:
            self._new_incumbent = False
            self.learner.restart_record()
        fresher = self._champion is not None and self._champion_ours
        test = self.learner.gate_test()
        retire = self.learner.retire_test() if self._champion is not None else None
        record = self.learner.take_record()
        if record is not None and test is not None and self._champion is None:
            errors, naive = record  # the warm start's whole history, scored as served
        else:
            errors, naive = self.learner.served_errors()
        upload = self.uploader.upload_now if self.settings.checkpoint_sync else self.uploader.submit
        upload(
            Checkpoint(
                pickle.dumps(self.learner),
                dict(self.offsets),
                metrics,
                errors,
                naive,
                self._champion_errors() if test or fresher or retire else None,
                self.topic_id,
                test,
                fresher,
                retire,
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
            learned += self.learner.step(ex)
        self.caught_up += learned
        log.warning("caught up on %d examples from the offline store", learned)
        return learned

    def _broker_forgot(self, source: AssignedSource | None, watch: TopicWatch) -> None:
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
        if source is not None:
            source.consumer.unassign()
            source.assign(self.offsets)
        self.checkpoint()

    @property
    def rejected(self) -> Counter[str]:
        return self.counters.rejected_by()

    @property
    def skipped(self) -> int:
        """Records passed over because `rtml skip --trainer` dead-lettered them."""
        return self.counters.done["skipped"]

    @property
    def other_shards(self) -> int:
        """Examples of symbols another shard's trainer learns."""
        return self.counters.done["other_shard"]

    def step(self, msg: Message) -> None:
        """Learn one `examples` record (or pass over it); checkpoint when it is time."""
        assert self.learner is not None
        partition, offset = msg.partition() or 0, msg.offset() or 0
        self.offsets[partition] = offset + 1
        done = self.counters.done
        if (partition, offset) in self.skips:
            done["skipped"] += 1
            return
        if msg.key() in self._other_keys:  # another shard's, by its key: not even decoded
            done["other_shard"] += 1
            return
        raw = msg.value() or b""
        ex = self._admit(self._examples.read(raw))
        if ex.symbol not in self.own_symbols:
            done["other_shard"] += 1
            return
        if self.learner.step(ex):
            done["learned"] += 1
            self._since += 1
        else:
            done["seen_before"] += 1
        if self.learner.drift_detected:
            done["drifts"] += 1
            self._on_drift(ex)
        if self.settings.checkpoint_sync:
            if self._since >= self.settings.checkpoint_every:
                self.checkpoint()  # in event time: on these examples, however fast they came
        elif (
            self._since >= self.settings.checkpoint_every
            and time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_min_interval_s
        ):
            assert self.uploader is not None
            # while an upload is under way, learning goes on and the checkpoint waits for it
            # (the time-based one in `tick` does not): every pickled checkpoint is uploaded
            if self.uploader.idle():
                self.checkpoint()
        if self.max_examples is not None and self.learner.learned >= self.max_examples:
            self.stop.set()

    def _admit(self, ex: Example) -> Example:
        assert self.learner is not None
        learner = self.learner
        return self.admission.admit(ex, learner.watermark, learner.learned >= SETTLED)

    def _on_drift(self, ex: Example) -> None:
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
        assert self._producer is not None
        send(self._producer, self.topics.alerts, encode(alert), ex.symbol.encode())
        log.warning("drift in the error stream at %s@%s: %s", ex.symbol, ex.ts, alert)
        fresh = build_model(self.settings.model, self.settings.model_params, self.settings.target)
        if self.settings.drift_response == "reset":
            self.learner.reset_model(fresh)
        elif self.settings.drift_response == "challenger" and self.learner.challenger is None:
            self.learner.start_challenger(fresh)

    def run(self, max_seconds: float | None = None, max_examples: int | None = None) -> Learner:
        settings = self.settings
        ensure_topics(settings, self.topics.with_dlqs())
        run_id = self.run_id = checkpoints.trainer_run(settings, self.params())
        self.skips = _positions(checkpoints.trainer_skips(settings, run_id), self.topics.examples)
        if self.skips:
            log.info("passing over %d records an operator skipped", len(self.skips))
        self.restore_or_warm_start()
        assert self.learner is not None
        registered_ago_s = registry.alias_age_s(settings, registry.CANDIDATE)
        self.uploader = Uploader(
            settings,
            run_id,
            settings.checkpoint_queue,
            on_promote=self._new_champion,
            first_version_due=registered_ago_s is None,
            last_checkpoint=self.restored_from,
            registered_ago_s=registered_ago_s,
        )
        watch = TopicWatch(settings, [self.topics.examples])
        self.topic_id = watch.remember()[self.topics.examples]
        if self.stored_topic_id and self.stored_topic_id != self.topic_id:
            self._broker_forgot(None, watch)
        elif self.uploader.first_version_due:
            self.checkpoint()  # the warm-started model is the first version
        self.max_examples = max_examples
        self._producer = make_producer(settings)
        source = AssignedSource(
            make_consumer(settings, self.group_id), self.topics.examples, self.offsets
        )

        def tick() -> None:
            if watch.changed():
                self._broker_forgot(source, watch)
            if (
                self._since
                and not settings.checkpoint_sync
                and time.monotonic() - self._last_checkpoint >= interval
            ):
                self.checkpoint()

        interval = settings.checkpoint_interval_s
        self._last_checkpoint = time.monotonic()
        metrics = serve_metrics(settings, self.counters)
        self.metrics_port = metrics.port
        try:
            if max_examples is None or self.learner.learned < max_examples:
                Runner(
                    source,
                    self._producer,
                    self.step,
                    self.counters,
                    stop=self.stop,
                    pace=Pace(max_block_s=settings.kafka_max_poll_interval_ms / 3000),
                    hooks=Hooks(tick=tick),
                ).run(max_seconds)
            if self._since:
                self.checkpoint()
        finally:
            metrics.close()
            self.uploader.close()
        try:
            checkpoints.end_trainer_run(
                settings, run_id
            )  # a crash leaves it RUNNING, as MLflow does
        except Exception as exc:
            log.warning("could not mark the trainer run finished: %s", exc)
        return self.learner


def _positions(origins: list[str], topic: str) -> set[tuple[int, int]]:
    """(partition, offset) of each `topic[partition]@offset` in `origins` that names `topic`.

    >>> sorted(_positions(["ex[0]@7", "other[0]@1", "ex[2]@30"], "ex"))
    [(0, 7), (2, 30)]
    """
    found = set()
    for origin in origins:
        name, _, rest = origin.partition("[")
        partition, _, offset = rest.partition("]@")
        if name == topic and all(p.isascii() and p.isdigit() for p in (partition, offset)):
            found.add((int(partition), int(offset)))
    return found
