"""The trainer's state: a River model, what it has learned, and its progressive metrics.

Pure: no I/O. Every example is first predicted, scored (beside the target's naive forecast:
no change for a return, the last H candles' volatility for a volatility), then learned, so the
metrics are out-of-sample errors. The metrics are absolute errors (MAE), whatever the target;
the gate reads `served_errors`, in the target's own loss. An example at or before the
newest one learned for its symbol is skipped: the feature pipeline delivers at least once, and
the warm start has already learned everything up to its cutoff.

Those progressive errors are still optimistic: an example arrives when its label is known, H
candles after its features, and by then the model has learned the H-1 examples before it, whose
targets overlap its own. Serving never has that: it predicts when the features are new. So the
learner also keeps snapshots of its model and scores each example with the newest snapshot
taken before the example's feature time (`recent`, which the gate reads); the snapshots are at
least one horizon apart, so that model is at most two horizons old.

>>> from rtml.pipelines.training.models import build_model
>>> from rtml.records import Example
>>> learner = Learner(build_model("linear"), window=3)
>>> learner.step(Example("X", 60.0, 360.0, {"ret_1": 0.01}, 0.02))
True
>>> learner.step(Example("X", 60.0, 360.0, {"ret_1": 0.01}, 0.02))
False
>>> learner.learned, round(learner.metrics()["mae"], 4)
(1, 0.02)
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from typing import Any

from river import drift

from rtml.records import Example

from ..features.targets import TARGETS, Target
from .gate import MIN_EXAMPLES
from .models import LinearScorer, LinearStep

SNAPSHOTS = 8
"""At most this many model snapshots for scoring as served, each at least one horizon after the
last; usually three are kept, and a checkpoint holds them (a restart resumes exactly)."""


TOP_SYMBOLS = 10
"""Per-symbol errors in a checkpoint's metrics: those of the symbols that err most."""


class RollingMean:
    """Mean of the last `window` values."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0

    def add(self, value: float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            self.total -= values[0]
        values.append(value)
        self.total += value

    @property
    def mean(self) -> float:
        return self.total / len(self.values) if self.values else math.nan


class Learner:
    """A model with its learning history; pickled whole into every checkpoint."""

    _model: Any
    _step: LinearStep | None
    _read: bool  # the model was read since the step last learned it

    def __init__(
        self, model: Any, window: int = 500, drift_delta: float = 0.002, target: str = "return"
    ) -> None:
        self.target: Target = TARGETS[target]
        self.model = model
        self.window = window
        self.drift_delta = drift_delta
        self.drift = drift.ADWIN(delta=drift_delta)
        self.drifts = 0
        self.drift_detected = False
        self.challenger: Any | None = None
        self._challenger_rolling = RollingMean(window)
        self._own_rolling = RollingMean(window)
        self.learned = 0
        self.skipped = 0
        self.watermark = -math.inf
        self.last_ts: dict[str, float] = {}
        self._abs_error = 0.0
        self._abs_baseline = 0.0
        self._rolling = RollingMean(window)
        self._rolling_baseline = RollingMean(window)
        self._per_symbol: dict[str, list[float]] = {}
        self.recent: deque[tuple[Example, float]] = deque(maxlen=window)
        """The newest examples with the prediction serving would have made."""
        self.scored = 0
        """Examples scored as served, ever."""
        self.gate_tests = 0
        """Gate tests since the champion (or the naive forecast) took its place."""
        self.tested_at = 0
        """`scored` at the last gate test."""
        self.retire_tests = 0
        """Tests of whether the champion errs more than the naive forecast, since it serves."""
        self.retire_tested_at = 0
        self.restarted_at = 0
        """`scored` when the incumbent last changed (`restart_record`)."""
        self._record: tuple[list[float], list[float]] | None = None
        self._snapshots: deque[tuple[float, Any]] = deque(maxlen=SNAPSHOTS)
        self.snapshot(-math.inf)

    @property
    def model(self) -> Any:
        """The River model as learned so far.

        A `linear` model is learned by a `LinearStep` in its own lists; reading the model
        writes them into it, and the next example starts a step from the model as it is then,
        so a model its reader changed is learned on from what it became.
        """
        if self._step is not None:
            self._step.write_back()
            self._step, self._read = None, True
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._model = model
        self._step = LinearStep.of(model)  # River's predict-then-learn in one pass, if linear
        self._read = False

    def _stepper(self) -> LinearStep | None:
        """The step that learns the model, started again after the model was read; None
        when River learns it."""
        step = self._step
        if step is None and self._read:
            step = self._step = LinearStep.of(self._model)
            self._read = False
        return step

    def __getstate__(self) -> dict[str, Any]:
        # the model as learned, and no step (rebuilt on load): a checkpoint holds River
        # objects only, and reads as one pickled by an older rtml
        skip = ("_step", "_model", "_read", "_record")
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["model"] = self.model
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        model = state.pop("model")
        # absent from an older rtml's learner
        self.retire_tests = self.retire_tested_at = self.restarted_at = 0
        self.__dict__.update(state)
        self._record = None
        self.model = model
        if "target" not in state:  # a learner pickled by an older rtml: its recent are errors
            self.target, self.scored, self.gate_tests, self.tested_at = TARGETS["return"], 0, 0, 0
            self.recent = deque(maxlen=self.window)
            self._snapshots = deque(maxlen=SNAPSHOTS)
            self.snapshot()

    def snapshot(self, watermark: float | None = None) -> None:
        """Keep a copy of the model as it is, for examples whose features are newer than
        `watermark` (the newest label learned, by default)."""
        at = self.watermark if watermark is None else watermark
        # only predicted with: a linear model folds into a scorer, anything else is copied
        step = self._step
        scorer = step.scorer() if step is not None else LinearScorer.of(self.model)
        copy = scorer if scorer is not None else pickle.loads(pickle.dumps(self.model))
        self._snapshots.append((at, copy))

    def served_prediction(self, ex: Example) -> float | None:
        """What the model predicted for `ex` when its features were new, or None when no
        snapshot is that old."""
        for watermark, model in reversed(self._snapshots):
            if watermark <= ex.ts:
                return float(model.predict_one(ex.features))
        return None

    def start_challenger(self, model: Any) -> None:
        """Train `model` beside the current one from now on, scored on the same examples."""
        self.challenger = model
        self._challenger_rolling = RollingMean(self.window)
        self._own_rolling = RollingMean(self.window)

    def settle_challenger(self) -> bool:
        """Once the challenger has a full window, keep whichever model erred less on it.

        Returns True when the challenger took over.
        """
        if self.challenger is None or len(self._challenger_rolling.values) < self.window:
            return False
        won = self._challenger_rolling.mean < self._own_rolling.mean
        if won:
            self.reset_model(self.challenger)
        self.challenger = None
        return won

    def reset_model(self, model: Any) -> None:
        """Start a fresh model after a drift; history and metrics carry on."""
        self.model = model
        self.drift = drift.ADWIN(delta=self.drift_delta)

    def predict_one(self, x: dict[str, float]) -> float:
        # River's own prediction, whether or not a step has the model's state: the same
        # learner must predict alike resumed from a checkpoint or not (a dot product's order)
        return float(self.model.predict_one(x))

    def learn_one(self, x: dict[str, float], y: float) -> None:
        """Learn `x` -> `y`, and nothing else (no prediction, no metrics)."""
        step = self._stepper()
        if step is not None:
            step.learn_one(x, y)
        else:
            self._model.learn_one(x, y)

    def step(self, ex: Example) -> bool:
        """Predict, score, learn; False (and nothing learned) for an example seen before."""
        if ex.ts <= self.last_ts.get(ex.symbol, -math.inf):
            self.skipped += 1
            return False
        # predicted before it learns; the step does both in one pass, a River model in two
        step = self._stepper()
        if step is not None:
            error = abs(ex.target - step.learn_one(ex.features, ex.target))
        else:
            error = abs(ex.target - self.predict_one(ex.features))
        if not math.isfinite(error):
            error = math.inf
        served = self.served_prediction(ex)
        if served is not None:
            self.recent.append((ex, served if math.isfinite(served) else math.inf))
            self.scored += 1
            if self._record is not None:
                loss = self.target.loss(served, ex.target)
                self._record[0].append(loss if math.isfinite(loss) else math.inf)
                self._record[1].append(self.target.loss(self.target.naive(ex.features), ex.target))
        naive = abs(ex.target - self.target.naive(ex.features))
        self._abs_error += error
        self._abs_baseline += naive
        self._rolling.add(error)
        self._rolling_baseline.add(naive)
        per = self._per_symbol.get(ex.symbol)
        if per is None:  # not `setdefault`: that builds a list for every example
            per = self._per_symbol[ex.symbol] = [0.0, 0]
        per[0] += error
        per[1] += 1
        if self.challenger is not None:
            theirs = abs(ex.target - float(self.challenger.predict_one(ex.features)))
            self._challenger_rolling.add(theirs if math.isfinite(theirs) else math.inf)
            self._own_rolling.add(error)
            self.challenger.learn_one(ex.features, ex.target)
        if math.isfinite(error):
            self.drift.update(error)
        self.drift_detected = self.drift.drift_detected
        self.drifts += self.drift_detected
        if step is None:
            self._model.learn_one(ex.features, ex.target)
        self.last_ts[ex.symbol] = ex.ts
        self.learned += 1
        self.watermark = max(self.watermark, ex.label_ts)
        span = ex.label_ts - ex.ts
        if self.watermark - self._snapshots[-1][0] >= span:
            self.snapshot()
        # an example arrives about one horizon after its features: a snapshot older than
        # the one serving examples two horizons back is not needed any more
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= self.watermark - 2 * span:
            self._snapshots.popleft()
        return True

    def start_record(self) -> None:
        """Keep the losses as served, and the naive forecast's, of every example from now
        until `take_record` (a warm start's whole history, not only the newest window)."""
        self._record = ([], [])

    def take_record(self) -> tuple[list[float], list[float]] | None:
        """The newer half of the losses kept since `start_record` (the older half is a model
        that has learned little yet: a cold start, not what it serves from now), at least a
        window of them; None if none were kept. Stops keeping them."""
        record, self._record = self._record, None
        if not record or not record[0]:
            return None
        ours, naive = record
        keep = max(len(ours) // 2, self.recent.maxlen or 0)
        return ours[-keep:], naive[-keep:]

    def restart_record(self) -> None:
        """Gate on the examples scored from now on only: the incumbent changed (a champion was
        promoted or retired). The examples before were judged against the one before; a test
        that starts at the change counts only evidence the change did not see, so it is
        valid at its level, and a learner that erred through a turn of the market is judged
        on how it serves after it, not held back until the turn leaves its window."""
        self.recent.clear()
        self.gate_tests = self.retire_tests = 0
        self.tested_at = self.retire_tested_at = self.restarted_at = self.scored

    def gate_test(self) -> int | None:
        """The number of a gate test due now against the incumbent (1, 2, ...), or None.

        The first test falls due `2 * MIN_EXAMPLES` examples after the incumbent took its
        place, and each next one once as many new examples have been scored as half of those
        since (at most half a window): a learner better than what serves is let in within
        about a hundred examples of a turn of the market, and a run of many checkpoints
        spends its gate's budget (`gate.spent_z`) on a number of tests that grows with the
        examples, not the checkpoints.
        """
        since = self.scored - self.restarted_at
        due = min((self.recent.maxlen or 1) // 2, max(2 * MIN_EXAMPLES, since // 2))
        if self.scored - self.tested_at < due:
            return None
        self.tested_at = self.scored
        self.gate_tests += 1
        return self.gate_tests

    def retire_test(self) -> int | None:
        """The number of a test due now of whether the champion errs more than the naive
        forecast (1, 2, ...), or None: one every `gate.MIN_EXAMPLES` examples scored, so a
        champion the market turned against is retired within a few dozen examples, each test
        at the level its number spends (`gate.spent_z`)."""
        if self.scored - self.retire_tested_at < MIN_EXAMPLES:
            return None
        self.retire_tested_at = self.scored
        self.retire_tests = self.retire_tests + 1
        return self.retire_tests

    def served_errors(self) -> tuple[list[float], list[float]]:
        """The losses of `recent`, as served, beside the naive forecast's on the same examples,
        in the target's loss."""
        loss, naive = self.target.loss, self.target.naive
        ours = [loss(p, ex.target) for ex, p in self.recent]
        return [e if math.isfinite(e) else math.inf for e in ours], [
            loss(naive(ex.features), ex.target) for ex, _ in self.recent
        ]

    def metrics(self) -> dict[str, float]:
        n = max(self.learned, 1)
        out = {
            "mae": self._abs_error / n,
            "baseline_mae": self._abs_baseline / n,
            "rolling_mae": self._rolling.mean,
            "served_rolling_mae": (
                sum(abs(ex.target - p) for ex, p in self.recent) / len(self.recent)
                if self.recent
                else math.nan
            ),
            "baseline_rolling_mae": self._rolling_baseline.mean,
            "learned": float(self.learned),
            "drifts": float(self.drifts),
        }
        # the symbols that err most, not every symbol: a checkpoint's metrics stay a few
        # dozen keys at 500 symbols (MLflow keeps one row per key and step)
        worst = sorted(self._per_symbol.items(), key=lambda kv: -kv[1][0] / kv[1][1])
        for symbol, (total, count) in worst[:TOP_SYMBOLS]:
            out[f"mae.{symbol.replace('/', '_')}"] = total / count
        out["symbols"] = float(len(self._per_symbol))
        return out
