"""What the trainer hands over: checkpoints uploaded to MLflow off the learning thread, gated,
registered and, when one wins, promoted."""

from __future__ import annotations

import logging
import math
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Producer,
)

from rtml import checkpoints, registry
from rtml.kafka import (
    Topics,
    encode,
    make_producer,
    send,
)
from rtml.settings import Settings

from ..features.indicators import FEATURE_NAMES
from .gate import GateDecision, champion_fails, gate, refresh, spent_z
from .learner import Learner

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
        artifact = checkpoints.save_checkpoint(
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
        # the version keeps the gate's word and what it learned through; its metrics and the
        # symbols it learned are on its logged model, linked to the trainer's run
        tags = {
            "gate": decision.reason,
            "trained_through": str(learner.watermark),
            "learned": str(learner.learned),
        }
        lineage = registry.Lineage(
            run_id=self.run_id,
            params={"symbols": ",".join(sorted(learner.last_ts))[:6000]},
            metrics=cp.metrics,
            step=learner.learned,
        )
        metadata = {"trained_through": learner.watermark, "learned": learner.learned}
        version = registry.log_version(
            self.settings,
            learner.model,
            tags=tags,
            feature_names=FEATURE_NAMES,
            metadata=metadata,
            lineage=lineage,
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
