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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Message,
    Producer,
)
from tqdm import tqdm

from rtml import feature_store as fs
from rtml import registry
from rtml.errors import ConfigError
from rtml.event_time import SETTLED, FutureRule
from rtml.kafka import (
    Topics,
    TopicWatch,
    encode,
    ensure_topics,
    make_consumer,
    make_producer,
    send,
)
from rtml.records import BadRecord, Example, examples_reader
from rtml.runner import AssignedSource, Counters, Runner, serve_metrics
from rtml.settings import Settings

from ..features.indicators import FEATURE_BOUNDS, FEATURE_NAMES, TARGET_BOUNDS
from ..features.targets import Target, target
from .dataset import offline_examples, warm_start
from .gate import GateDecision, champion_fails, gate, refresh, spent_z
from .learner import Learner
from .models import build_model

log = logging.getLogger(__name__)

PRUNE_EVERY = 10  # uploads between prunings of old versions


@dataclass
class Checkpoint:
    learner_bytes: bytes
    offsets: dict[int, int]
    metrics: dict[str, float]
    errors: list[float]
    """The candidate's errors on the newest examples, each as serving would have predicted it."""
    naive: list[float]
    """The naive baseline's errors on the same examples."""
    champion: list[float] | None
    """The champion's errors on the same examples, when there is a champion."""
    topic_id: str | None = None  # the incarnation of `examples` the offsets belong to
    test: int | None = None
    """The number of this checkpoint's gate test against the incumbent; None: no test due."""
    refresh: bool = False
    """The champion is this learner's own earlier checkpoint: this one may refresh it."""
    retire_test: int | None = None
    """The number of this checkpoint's test of whether the champion errs more than the naive
    forecast; None: no test due."""


class Uploader:
    """Uploads checkpoints to the trainer's run off the learning thread; the queue is bounded.

    Each checkpoint is gated; one that passes is registered as a model version (at most every
    `register_interval_s`, counted from the newest `candidate` in the registry, so across
    restarts too) and promoted, unless a person pinned the champion. A champion that
    errs more than the naive baseline, by the gate's margin, is retired: predictors then serve
    the baseline until a version earns the place. When MLflow is slow or away and the queue is
    full, the oldest waiting checkpoint is dropped (only the newest is needed to resume) and
    counted.
    """

    def __init__(
        self,
        settings: Settings,
        run_id: str,
        capacity: int,
        on_promote: Callable[[Any | None, float, bool, bool], None] = lambda *_: None,
        first_version_due: bool = False,
        last_checkpoint: str | None = None,
        registered_ago_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.on_promote = on_promote
        self.run_id = run_id
        self.queue: queue.Queue[Checkpoint | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.superseded = 0
        self.first_version_due = first_version_due  # register the first fit even if refused
        self.uploaded: list[str] = []  # checkpoint artifacts, oldest first
        self.registered: list[str] = []  # model versions, oldest first
        self.decisions: list[tuple[str | None, bool, str]] = []  # (version, promoted, reason)
        # a version at most every `register_interval_s` across restarts too: a trainer that
        # restarts (a crash loop, a deploy) does not register one at each start
        self._last_registered: float | None = (
            None if registered_ago_s is None else time.monotonic() - registered_ago_s
        )
        # the slot the run's checkpoint tag points at is never the one being overwritten
        self._last_slot = "a" if last_checkpoint and "/a/" in last_checkpoint else "b"
        self.diverging = False  # the newest candidate's error is infinite or above MAX_MAE
        self._producer: Producer | None = None
        self._busy = False  # a checkpoint is being uploaded
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

    def idle(self) -> bool:
        """Nothing waiting or uploading: a checkpoint submitted now is uploaded at once. One
        submitted while busy would only be superseded by the next, its pickling wasted."""
        return not self._busy and self.queue.empty()

    def close(self, timeout: float = 60.0) -> None:
        self.queue.put(None)
        self._thread.join(timeout)

    def _alert_if_diverging(self, learned: int, mae: float, decision: GateDecision) -> None:
        """One alert on `alerts` when the model starts diverging (it is never promoted)."""
        diverging = math.isinf(mae) or mae > self.settings.max_mae
        if diverging and not self.diverging:
            alert = {
                "kind": "diverging",
                "model": self.settings.model_name,
                "learned": learned,
                "rolling_mae": mae if math.isfinite(mae) else None,
                "reason": decision.reason,
                "ts": time.time(),
            }
            if self._producer is None:
                self._producer = make_producer(self.settings)
            key = self.settings.model_name.encode()
            send(self._producer, Topics.of(self.settings).alerts, encode(alert), key)
            self._producer.flush(10)
            log.error(
                "the model diverges after %d examples and is not served: %s",
                learned,
                decision.reason,
            )
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

    def upload_now(self, checkpoint: Checkpoint, newest: bool = False) -> None:
        """Upload (gate, register, promote) `checkpoint` on the calling thread, retrying until
        it is up; `newest`: a newer one waiting in the queue takes its place on a retry."""
        backoff = 0.5
        while True:
            try:
                self._upload(checkpoint)
                return
            except Exception as exc:
                log.warning("checkpoint upload failed (%s); retrying in %.1f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                if newest:
                    checkpoint = self._newest_waiting(checkpoint)

    def _work(self) -> None:
        while (first := self.queue.get()) is not None:
            self._busy = True
            self.upload_now(self._newest_waiting(first), newest=True)
            self._busy = False
        if self.registered:
            try:
                registry.prune(self.settings, self.settings.keep_versions)
            except Exception as exc:
                log.warning("could not prune old versions: %s", exc)

    def _register_due(self) -> bool:
        """A version at most every `register_interval_s`, so a person can follow the
        registry; the first one at once."""
        if self._last_registered is None:
            return True
        return time.monotonic() - self._last_registered >= self.settings.register_interval_s

    def _upload(self, cp: Checkpoint) -> None:
        learner = pickle.loads(cp.learner_bytes)
        s = self.settings
        if not cp.metrics["rolling_mae"] <= s.max_mae:
            decision = GateDecision(
                False,
                f"rolling MAE {cp.metrics['rolling_mae']:.3g} is above MAX_MAE {s.max_mae:.3g}",
            )
        elif cp.refresh:
            decision = refresh(cp.errors, cp.naive, cp.champion, s.gate_z)
        elif cp.test is None:
            decision = GateDecision(False, "no gate test due (too few new examples since the last)")
        else:
            z = spent_z(s.gate_alpha, cp.test)
            decision = gate(cp.errors, cp.naive, cp.champion, z, s.gate_z)
        # the checkpoint first: it is what a restart resumes from, registered or not
        state = {"learner": learner, "offsets": cp.offsets, "topic_id": cp.topic_id}
        slot = "b" if self._last_slot == "a" else "a"
        artifact = registry.save_checkpoint(
            self.settings, self.run_id, state, slot, cp.metrics, learner.learned
        )
        self._last_slot = slot
        self.uploaded.append(artifact)
        version: str | None = None
        promoted = False
        first = self._last_registered is None and self.first_version_due
        if (decision.promote or first) and self._register_due():
            version = self._register(learner, cp, decision)
            if decision.promote:
                promoted = self._promote(version, learner, refresh=cp.refresh)
        elif not decision.promote and cp.champion is not None and cp.retire_test is not None:
            # retiring is a test too, with a budget of its own spent the same way: a fixed
            # margin, tested at every checkpoint, would retire a good champion by chance
            self._retire_if_failing(cp, learner.watermark, spent_z(s.gate_alpha, cp.retire_test))
        self._alert_if_diverging(learner.learned, cp.metrics["rolling_mae"], decision)
        self.decisions.append((version, promoted, decision.reason))
        log.info(
            "checkpoint at %d learned: %s%s%s",
            learner.learned,
            decision.reason,
            f" -> version {version}" if version else "",
            " -> champion" if promoted else "",
        )

    def _register(self, learner: Learner, cp: Checkpoint, decision: GateDecision) -> str:
        tags = {
            "trainer_run": self.run_id,
            "watermark": str(learner.watermark),
            "learned": str(learner.learned),
            "symbols": ",".join(sorted(learner.last_ts))[:5000],
            "gate": decision.reason,
            **{f"metric.{k}": f"{v:.6g}" for k, v in cp.metrics.items()},
        }
        metadata = {"trained_through": learner.watermark, "learned": learner.learned}
        version = registry.log_version(
            self.settings, learner.model, tags=tags, feature_names=FEATURE_NAMES, metadata=metadata
        )
        registry.set_alias(self.settings, registry.CANDIDATE, version)
        self._last_registered = time.monotonic()
        self.registered.append(version)
        if len(self.registered) % PRUNE_EVERY == 0:
            registry.prune(self.settings, self.settings.keep_versions)
        return version

    def _retire_if_failing(self, cp: Checkpoint, watermark: float, z: float) -> None:
        """Serve the naive baseline instead of a champion that errs more than it by `z`."""
        assert cp.champion is not None
        if not champion_fails(cp.champion, cp.naive, z):
            return
        found = registry.decision(self.settings)
        if found and found.get("pinned"):
            return  # a person chose it; `rtml status` shows the errors
        champion = registry.alias_version(self.settings, registry.CHAMPION)
        if champion is None:
            return
        registry.retire(self.settings, by=registry.TRAINER)
        registry.log_champion_change(self.settings, self.run_id, None, watermark)
        self.on_promote(None, -math.inf, False, True)
        log.warning(
            "champion version %s errs more than the naive baseline on the newest %d examples: "
            "retired, the baseline is served until a version beats it",
            champion,
            len(cp.champion),
        )

    def _promote(self, version: str, learner: Learner, refresh: bool = False) -> bool:
        """Make `version` the champion unless a person pinned the current one."""
        found = registry.decision(self.settings)
        if found and found.get("pinned"):
            log.info(
                "version %s passed the gate but stays a candidate: %s pinned version %s "
                "(`rtml promote --auto` hands the champion back to the gate)",
                version,
                found.get("by"),
                found.get("version"),
            )
            return False
        registry.promote(self.settings, version, by=registry.TRAINER)
        registry.log_champion_change(self.settings, self.run_id, version, learner.watermark)
        self.on_promote(learner.model, learner.watermark, True, not refresh)
        return True


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
        self.known_symbols = frozenset(settings.symbols).union(*settings.shards.values())
        self.own_symbols = frozenset(settings.symbols)
        # examples are keyed by symbol: another shard's are passed over by their key alone
        self._other_keys = frozenset(s.encode() for s in self.known_symbols - self.own_symbols)
        # the span of an example's label: exactly H windows where every window has a candle
        self.least_span = settings.horizon * settings.candle_seconds
        self.exact_span = settings.gap_policy == "flat"
        # with `skip`, each of the H steps bridges a silence of at most RTML_MAX_SILENCE_S
        # (a longer one restarts the series): MSFT's five trading days span up to 13 days
        self.most_span = settings.horizon * (settings.max_gap_s + settings.candle_seconds)
        # the labels it learns are one series (the learner's watermark is global)
        self._future = FutureRule(settings.max_step_s, settings.max_gap_s)
        # only the features the model reads: other keys would each become a weight for good
        # only the features the model reads: other keys would each become a weight for good
        self._examples = examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS)
        self.label = target(settings.target)

    def restore_or_warm_start(self) -> None:
        restored = registry.latest_checkpoint(self.settings)
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
                registry.log_params(self.settings, self.run_id, dataset.params())
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
        """Event-time sanity: the symbol is configured, the label came a horizon after its
        features (not sooner; and not later where every window has a candle), the label time
        is not far ahead, and the target within the target's own bounds (the schema bounds
        each feature and every target alike).

        An example from the year 2286 would otherwise become every later example's "seen
        before" and the model's `trained_through`. One whose features date from long before
        its label (`ts` = 1) would be learned as if its target were the next H candles'.
        """
        if ex.symbol not in self.known_symbols:
            raise BadRecord(
                "unknown_symbol",
                f"{ex.symbol!r:.60} is not in RTML_SYMBOLS (or RTML_SHARDS); add it to learn it",
            )
        assert self.learner is not None
        learner = self.learner
        self._future.jumped(
            "", ex.label_ts, learner.watermark, learner.learned >= SETTLED, ex.symbol
        )
        low, high = self.label.bounds
        if not low <= ex.target <= high:  # a return's bounds admit what no volatility can be
            raise BadRecord(
                "out_of_range",
                f"{ex.symbol}@{ex.ts}: a {self.label.name} target {ex.target:g} is outside "
                f"[{low:g}, {high:g}]",
            )
        span, least = ex.label_ts - ex.ts, self.least_span
        if span < least:
            raise BadRecord(
                "leak",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; a label is "
                f"known {self.settings.horizon} candles ({least} s) later at the earliest",
            )
        if self.exact_span and span > least * (1 + 1e-9):
            # every window has a candle (a flat one where nothing traded), so the label of a
            # `flat` market is exactly H windows after its features; with `skip` it is H
            # candles that exist, however long the market was closed between them
            raise BadRecord(
                "stale",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; with "
                f"RTML_GAP_POLICY=flat the label is {self.settings.horizon} candles "
                f"({least} s) after them",
            )
        if span > self.most_span:
            raise BadRecord(
                "stale",
                f"{ex.symbol}@{ex.ts}: label time {span:g} s after the features; "
                f"{self.settings.horizon} candles span at most {self.most_span:g} s, each "
                "silence between them no longer than RTML_MAX_SILENCE_S",
            )
        return ex

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
        run_id = self.run_id = registry.trainer_run(settings, self.params())
        self.skips = _positions(registry.trainer_skips(settings, run_id), self.topics.examples)
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
                    tick=tick,
                    max_block_s=settings.kafka_max_poll_interval_ms / 3000,
                ).run(max_seconds)
            if self._since:
                self.checkpoint()
        finally:
            metrics.close()
            self.uploader.close()
        try:
            registry.end_trainer_run(settings, run_id)  # a crash leaves it RUNNING, as MLflow does
        except Exception as exc:
            log.warning("could not mark the trainer run finished: %s", exc)
        return self.learner


def trained_through(loaded: registry.Loaded) -> float:
    """The newest label time a registered version learned (-inf when it does not say)."""
    try:
        through = float(loaded.metadata.get("trained_through", -math.inf))
    except (TypeError, ValueError):
        return -math.inf
    return through if not math.isnan(through) else -math.inf


def champion_errors(
    champion: Any, through: float, recent: Iterable[tuple[Example, float]], label: Target
) -> list[float]:
    """The champion's losses on `recent`; NaN on an example whose target overlaps a label it
    learned (features older than `through`): there its loss would flatter it.

    Scored at checkpoint time rather than per example: the learning loop stays as cheap as
    the candidate alone.
    """
    out = []
    for ex, _ in recent:
        if ex.ts < through:
            out.append(math.nan)
            continue
        error = label.loss(float(champion.predict_one(ex.features)), ex.target)
        out.append(error if math.isfinite(error) else math.inf)
    return out


def retrain(settings: Settings, by: str = "retrain") -> tuple[str, GateDecision]:
    """Refit a fresh model on the offline store, register it and put it through the gate.

    The trainer's own stream continues untouched; this version competes only for `champion`,
    and does not move a champion a person pinned.
    """
    import mlflow

    learner = Learner(
        build_model(settings.model, settings.model_params, settings.target),
        window=settings.metrics_window,
        drift_delta=settings.drift_delta,
        target=settings.target,
    )
    dataset = warm_start(settings, learner)
    if dataset.examples == 0:
        raise ConfigError(
            "the offline store has no labelled examples for these symbols; "
            "run `rtml backfill` or the feature pipeline first"
        )
    metrics = learner.metrics()
    errors, naive = learner.served_errors()
    loaded = registry.load_champion(settings)
    theirs = (
        None
        if loaded is None
        else champion_errors(loaded.model, trained_through(loaded), learner.recent, learner.target)
    )
    # one test against the incumbent: a person asked for it, it spends the first level
    decision = gate(errors, naive, theirs, spent_z(settings.gate_alpha, 1), settings.gate_z)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.experiment_name)
    with mlflow.start_run(run_name="retrain"):
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.log_params(dataset.params())
        version = registry.log_version(
            settings,
            learner.model,
            tags={
                "source": "retrain",
                "watermark": str(learner.watermark),
                "gate": decision.reason,
            },
            feature_names=FEATURE_NAMES,
            metadata={"trained_through": learner.watermark, "learned": learner.learned},
        )
    if decision.promote and not registry.pinned(settings):
        registry.promote(settings, version, by=by)
    return version, decision


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
