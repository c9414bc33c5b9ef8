"""The gate judges what serving would have seen, by a margin its sample supports (no services)."""

from __future__ import annotations

import math
import random

import pytest
from mlflow.exceptions import MlflowException

from rtml import registry
from rtml.pipelines.features.targets import TARGETS
from rtml.pipelines.training.checkpoint import Uploader
from rtml.pipelines.training.gate import champion_fails, gate, paired, spent_z
from rtml.pipelines.training.learner import Learner
from rtml.pipelines.training.models import build_model
from rtml.pipelines.training.retrain import champion_errors
from rtml.records import Example
from rtml.settings import Settings

H = 5  # candles between an example's features and its label
STEP = 60.0


class LastTargets:
    """Predicts the mean of the last two targets it learned: on overlapping H-candle returns
    that is pure leakage, not skill."""

    def __init__(self) -> None:
        self.last: list[float] = []

    def predict_one(self, x: dict[str, float]) -> float:
        return sum(self.last) / len(self.last) if self.last else 0.0

    def learn_one(self, x: dict[str, float], y: float) -> None:
        self.last = [*self.last[-1:], y]


def _overlapping_returns(n: int, seed: int) -> list[Example]:
    """A random walk's H-candle changes: consecutive targets share H-1 increments, and no
    feature says anything about the next one. Examples arrive in label order, as on `examples`."""
    rng = random.Random(seed)
    price = [0.0]
    for _ in range(n + H):
        price.append(price[-1] + rng.gauss(0, 0.001))
    return [
        Example("X", i * STEP, (i + H) * STEP, {"one": 1.0}, price[i + H] - price[i])
        for i in range(n)
    ]


def test_scoring_as_served_takes_no_credit_for_overlapping_labels() -> None:
    learner = Learner(LastTargets(), window=1000)
    for ex in _overlapping_returns(3000, seed=1):
        learner.step(ex)
    metrics = learner.metrics()
    # progressive validation is fooled: the model learned 4 of this target's 5 increments
    assert metrics["rolling_mae"] < 0.8 * metrics["baseline_rolling_mae"]
    # as served, the model had learned none of them: no better than naive
    assert metrics["served_rolling_mae"] > 0.95 * metrics["baseline_rolling_mae"]
    errors, naive = learner.served_errors()
    assert len(errors) == 1000
    decision = gate(errors, naive, None, z=2.0)
    assert not decision.promote and "naive" in decision.reason


def test_a_served_prediction_comes_from_a_model_that_had_not_seen_the_label_window() -> None:
    learner = Learner(LastTargets(), window=100)
    for ex in _overlapping_returns(400, seed=2):
        served = learner.served_prediction(ex)
        assert served is not None
        learner.step(ex)
        # the snapshot that served it had learned only labels known at the feature time
        used = max(w for w, _ in learner._snapshots if w <= ex.ts) if ex.ts > 0 else None
        assert used is None or used <= ex.ts
    # at most two horizons old, and few copies kept
    assert len(learner._snapshots) <= 4
    assert learner.watermark - learner._snapshots[0][0] <= 3 * H * STEP


def _first_promotion(seed: int, tests: int, z_of: list[float]) -> list[bool]:
    """A trainer's run on a random walk (noise features, overlapping H-candle returns): the
    online least-squares learner, gated at every test that falls due, `tests` of them. For each
    margin rule in `z_of` (None: the spent level of the k-th test), whether any test promoted."""
    rng = random.Random(seed)
    learner = Learner(build_model("ols"), window=100)
    price, pending = 0.0, []
    promoted = [False] * len(z_of)
    done, i = 0, 0
    while done < tests:
        x = {f"noise_{k}": rng.gauss(0, 1) for k in range(3)}
        pending.append((i, x, price))
        price += rng.gauss(0, 0.001)
        if len(pending) > H:
            j, xj, then = pending.pop(0)
            learner.step(Example("X", j * STEP, i * STEP, xj, price - then))
            test = learner.gate_test()
            if test is not None:
                done += 1
                errors, naive = learner.served_errors()
                for r, z in enumerate(z_of):
                    margin = spent_z(0.05, test) if math.isnan(z) else z
                    promoted[r] = promoted[r] or gate(errors, naive, None, margin).promote
        i += 1
    return promoted


def test_repeated_gating_of_a_model_without_skill_promotes_it_within_the_stated_bound() -> None:
    """On a random walk no model beats the naive forecast: any promotion over it is a false
    one. Over 200 gate tests a run, the spent level keeps the share of runs with any promotion
    under RTML_GATE_ALPHA (0.05); a fixed margin of 2 standard errors is fooled by repetition."""
    runs = [_first_promotion(seed, tests=200, z_of=[math.nan, 2.0]) for seed in range(40)]
    spent = sum(r[0] for r in runs)
    fixed = sum(r[1] for r in runs)
    assert spent <= 4, spent  # 40 runs at a bound of 5%: 2 expected at worst, 5+ is 5% likely
    assert fixed >= 8, fixed  # the test can tell: the old fixed margin fails it


def test_a_real_edge_passes_and_a_champion_behind_naive_is_retired() -> None:
    rng = random.Random(4)
    naive = [abs(rng.gauss(0, 0.01)) for _ in range(500)]
    better = [e * 0.9 for e in naive]
    assert gate(better, naive, None, z=2.0).promote
    # it must also beat the champion: equal is not enough
    assert not gate(better, naive, list(better), z=2.0).promote
    worse = [e * 1.1 + 0.001 for e in naive]
    assert champion_fails(worse, naive, z=2.0)
    assert not champion_fails(naive, naive, z=2.0)
    p = paired(better, naive)
    assert p.mean < 0 and p.better == p.blocks


def test_a_champion_is_scored_only_on_examples_it_has_not_learned_from() -> None:
    """A champion that memorised the recent labels would look unbeatable on them; the gate
    compares it with a candidate only where its error is what serving it would have seen."""
    examples = _overlapping_returns(600, seed=5)
    learner = Learner(LastTargets(), window=400)
    for ex in examples[:300]:
        learner.step(ex)
    champion = LastTargets()  # learned every label up to example 300's
    for ex in examples[:300]:
        champion.learn_one(ex.features, ex.target)
    through = examples[299].label_ts
    for ex in examples[300:]:
        learner.step(ex)
    theirs = champion_errors(champion, through, learner.recent, TARGETS["return"])
    unseen = [e for e in theirs if not math.isnan(e)]
    # only examples whose features are newer than the champion's last label count
    assert len(unseen) == sum(ex.ts >= through for ex, _ in learner.recent) > 0
    pairs = zip(theirs, learner.recent, strict=True)
    assert all(math.isnan(e) for e, (ex, _) in pairs if ex.ts < through)
    errors, naive = learner.served_errors()
    # right after a promotion there is too little to compare, whatever the errors say
    decision = gate(errors, naive, [math.nan] * len(errors), z=-math.inf, z_lately=-1.0)
    assert not decision.promote and "too few to compare" in decision.reason


def test_the_interval_between_versions_holds_across_a_trainer_restart() -> None:
    """A trainer started a minute after the newest version registers none for the rest of
    `register_interval_s`; one started after it, or with none registered, may at once."""
    settings = Settings(register_interval_s=120.0)
    due = {}
    for ago in (60.0, 120.0, None):
        uploader = Uploader(settings, "run", 1, first_version_due=ago is None, registered_ago_s=ago)
        due[ago] = uploader._register_due()
        uploader.close()
    assert due == {60.0: False, 120.0: True, None: True}


@pytest.mark.parametrize(
    "message",
    [
        "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags.key",
        '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "pk"',
        "(pymysql.err.IntegrityError) (1062, \"Duplicate entry 'm-rtml.champion' for key\")",
    ],
)
def test_a_champion_decision_that_collides_with_another_is_written_again(message: str) -> None:
    """Two deciders at once (a person's `promote`, the trainer's gate) collide on the SQL
    store's unique key, whatever the database; the second write is an update. Anything else
    is raised."""
    writes: list[int] = []

    def colliding() -> None:
        writes.append(1)
        if len(writes) == 1:
            raise MlflowException(f"BAD_REQUEST: {message}")

    def missing() -> None:
        writes.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such model")

    registry._written_once_more(colliding)
    assert len(writes) == 2
    with pytest.raises(MlflowException, match="no such model"):
        registry._written_once_more(missing)
    assert len(writes) == 3  # not written again
