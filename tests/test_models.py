"""Contract checks on every model the trainer can build, and the learner's bookkeeping."""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
import time
from pathlib import Path

import pytest

from rtml.errors import ConfigError
from rtml.pipelines.features.indicators import FEATURE_BOUNDS, FEATURE_NAMES, TARGET_BOUNDS
from rtml.pipelines.training.dataset import warm_start
from rtml.pipelines.training.learner import TOP_SYMBOLS, Learner
from rtml.pipelines.training.models import MODELS, LinearScorer, LinearStep, build_model
from rtml.records import BadRecord, Example, examples_reader
from rtml.settings import Settings


def _stream(n: int = 300, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1), "c": rng.random()}
        out.append((x, 0.3 * x["a"] - 0.1 * x["b"] + rng.gauss(0, 0.05)))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_survives_a_pickle_round_trip(name: str) -> None:
    model = build_model(name)
    for x, y in _stream():
        model.learn_one(x, y)
    clone = pickle.loads(pickle.dumps(model))
    probe = _stream(20, seed=1)
    assert [clone.predict_one(x) for x, _ in probe] == [model.predict_one(x) for x, _ in probe]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_runs_are_identical(name: str) -> None:
    a, b = build_model(name), build_model(name)
    for x, y in _stream():
        a.learn_one(x, y)
        b.learn_one(x, y)
    probe = _stream(20, seed=2)
    assert [a.predict_one(x) for x, _ in probe] == [b.predict_one(x) for x, _ in probe]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_learn_one_leaves_x_untouched(name: str) -> None:
    model = build_model(name)
    for x, y in _stream(50):
        before = copy.deepcopy(x)
        model.learn_one(x, y)
        assert x == before


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_features_do_not_crash(name: str) -> None:
    model = build_model(name)
    for i, (x, y) in enumerate(_stream(200)):
        if i % 3 == 0:
            x.pop("b")
        model.learn_one(x, y)
    assert math.isfinite(model.predict_one({"a": 1.0}))
    assert math.isfinite(model.predict_one({}))


@pytest.mark.parametrize(
    "name",
    # the forest takes half a minute: it runs with the slow tier
    [pytest.param(n, marks=pytest.mark.slow) if n == "arf" else n for n in sorted(MODELS)],
)
def test_learns_something(name: str) -> None:
    model = build_model(name)
    learner = Learner(model, window=100)
    for i, (x, y) in enumerate(_stream(2000)):
        learner.step(Example("X", float(i), float(i + 5), x, y))
    m = learner.metrics()
    assert m["rolling_mae"] < m["baseline_rolling_mae"]


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="RTML_MODEL is one of"):
        build_model("xgboost")


_FEATURES = {n: min(max(0.01, lo), hi) for n, (lo, hi) in FEATURE_BOUNDS.items()}
_ALL = json.dumps(_FEATURES).encode()


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"nope", "not_json"),
        (b'{"symbol":"X","ts":1,"label_ts":2,"features":' + _ALL + b"}", "missing_field"),
        (b'{"symbol":"X","ts":"1","label_ts":2,"features":' + _ALL + b',"target":0}', "wrong_type"),
        (b'{"symbol":"X","ts":5,"label_ts":2,"features":' + _ALL + b',"target":0}', "leak"),
        (b'{"symbol":"X","ts":1,"label_ts":2,"features":{},"target":0}', "missing_field"),
    ],
)
def test_bad_examples_are_rejected(raw: bytes, kind: str) -> None:
    with pytest.raises(BadRecord) as info:
        examples_reader(FEATURE_NAMES, FEATURE_BOUNDS, TARGET_BOUNDS).read(raw)
    assert info.value.kind == kind


def test_learner_detects_an_abrupt_change_and_can_reset() -> None:
    learner = Learner(build_model("linear"), window=50)
    rng = random.Random(3)
    before_change = 0
    for t in range(3000):
        x = {"a": rng.gauss(0, 1)}
        y = 0.01 * x["a"] if t < 1500 else -x["a"]  # the relation flips and grows
        learner.step(Example("X", float(t), float(t + 5), x, y))
        if t == 1499:
            before_change = learner.drifts
    assert learner.drifts > before_change
    assert learner.metrics()["drifts"] == learner.drifts
    old = learner.model
    learner.reset_model(build_model("linear"))
    assert learner.model is not old and learner.learned == 3000


def test_a_checkpoints_metrics_name_the_symbols_that_err_most_not_every_symbol() -> None:
    """At 500 symbols a checkpoint logs a few dozen metrics to MLflow, not 500 more."""
    learner = Learner(build_model("linear"), window=50)
    for t in range(5):
        for k in range(500):
            x = {"a": 0.001 * k}
            learner.step(Example(f"S{k:03d}", float(t), float(t + 5), x, 0.0001 * k * (t % 2)))
    metrics = learner.metrics()
    per_symbol = {k: v for k, v in metrics.items() if k.startswith("mae.")}
    assert len(per_symbol) == TOP_SYMBOLS and metrics["symbols"] == 500
    assert len(metrics) <= 12 + TOP_SYMBOLS
    # the worst: the symbols whose targets are largest
    assert min(per_symbol.values()) >= max(
        v for k, v in learner_errors(learner).items() if f"mae.{k}" not in per_symbol
    )


def learner_errors(learner: Learner) -> dict[str, float]:
    return {s: total / n for s, (total, n) in learner._per_symbol.items()}


def test_a_challenger_that_errs_less_takes_over() -> None:
    learner = Learner(build_model("linear", {"lr": 0.0}), window=100)  # cannot learn
    rng = random.Random(5)

    def feed(n: int, start: int) -> None:
        for t in range(start, start + n):
            x = {"a": rng.gauss(0, 1)}
            learner.step(Example("X", float(t), float(t + 5), x, 0.5 * x["a"]))

    feed(50, 0)
    learner.start_challenger(build_model("linear", {"lr": 0.05}))
    feed(50, 50)
    assert not learner.settle_challenger()  # no full window yet: keeps racing
    assert learner.challenger is not None
    stuck = learner.model
    feed(200, 100)
    assert learner.settle_challenger()
    assert learner.model is not stuck and learner.challenger is None


def test_warm_start_on_an_empty_offline_store_learns_nothing(tmp_path: Path) -> None:
    learner = Learner(build_model("linear"))
    assert warm_start(Settings(state_dir=tmp_path), learner).examples == 0
    assert learner.learned == 0


def test_learner_skips_what_it_has_learned_and_survives_pickle() -> None:
    learner = Learner(build_model("linear"), window=10)
    examples = [Example("X", float(t), float(t + 300), {"a": t / 10}, 0.01) for t in range(20)]
    for ex in examples:
        assert learner.step(ex)
    assert not learner.step(examples[5])
    clone = pickle.loads(pickle.dumps(learner))
    assert clone.learned == 20 and clone.skipped == 1 and clone.watermark == 19 + 300
    assert clone.metrics() == learner.metrics()


@pytest.mark.parametrize("params", [{}, {"l2": 0.01}, {"lr": 0.05, "clip_gradient": 1.0}])
def test_a_linear_scorer_predicts_as_its_model_does(params: dict[str, float]) -> None:
    """Served versions and the gate's snapshots predict through `LinearScorer`: it must give
    the model's predictions on inputs it has and has not seen, with features missing, extra,
    constant (zero variance) or of large magnitude, and leave the model as it was."""
    model = build_model("linear", params)
    rng = random.Random(3)
    for i, (base, y) in enumerate(_stream(400)):
        x = {**base, "constant": 5.0, "price": 50_000 + rng.gauss(0, 10)}
        if i % 7 == 0:
            del x["b"]  # sometimes missing
        model.learn_one(x, y)
    before = pickle.dumps(model)
    scorer = LinearScorer.of(model)
    assert scorer is not None
    probes = [
        {"a": rng.gauss(0, 3), "b": rng.gauss(0, 3), "c": rng.random(), "price": 50_000.0}
        for _ in range(50)
    ]
    probes += [{}, {"a": 1.0}, {"unseen": 9.0, "constant": 5.0}, {"a": 1e6, "price": -1e6}]
    scored = [scorer.predict_one(x) for x in probes]
    assert pickle.dumps(model) == before  # untouched (River's own predict_one is not)
    for x, got in zip(probes, scored, strict=True):
        assert got == pytest.approx(model.predict_one(x), rel=1e-9, abs=1e-12)
    assert pickle.loads(pickle.dumps(scorer)).predict_one(probes[0]) == scorer.predict_one(
        probes[0]
    )


@pytest.mark.parametrize("params", [{}, {"lr": 0.05, "intercept_lr": 0.01, "clip_gradient": 1.0}])
def test_the_one_pass_step_learns_as_river_does(params: dict[str, float]) -> None:
    """The trainer learns a `linear` model through `LinearStep`: the prediction it returns must
    be River's `predict_one` before each example, and the model after it must be River's
    after `learn_one`, with features missing, new, constant (zero variance) or large, and a
    gradient that clips. The model stays River's: it pickles, predicts and learns on."""
    ours, river = build_model("linear", params), build_model("linear", params)
    step = LinearStep.of(ours)
    assert step is not None
    rng = random.Random(5)
    for i, (base, target) in enumerate(_stream(2_000, seed=4)):
        x = {**base, "constant": 5.0, "price": 50_000 + rng.gauss(0, 10)}
        y = 50.0 if i % 97 == 0 else target  # an outlier now and then: the gradient clips
        if i % 7 == 0:
            del x["b"]  # sometimes missing
        if i > 1_000:
            x["late"] = rng.gauss(0, 1)  # a feature first seen half-way
        if i % 5 == 0:  # the same names in another order
            x = dict(rng.sample(sorted(x.items()), len(x)))
        assert step.learn_one(x, y) == pytest.approx(river.predict_one(x), rel=1e-9, abs=1e-12)
        river.learn_one(x, y)
    step.write_back()  # the step learns in its own lists; the model is written when read
    ours_scaler, river_scaler = ours.steps["StandardScaler"], river.steps["StandardScaler"]
    assert ours_scaler.counts == river_scaler.counts
    assert ours_scaler.means == pytest.approx(river_scaler.means, rel=1e-12)
    assert ours_scaler.vars == pytest.approx(river_scaler.vars, rel=1e-12)
    ours_linear, river_linear = ours.steps["LinearRegression"], river.steps["LinearRegression"]
    assert ours_linear.weights == pytest.approx(river_linear.weights, rel=1e-9, abs=1e-15)
    assert ours_linear.intercept == pytest.approx(river_linear.intercept, rel=1e-9)
    assert ours_linear.optimizer.n_iterations == river_linear.optimizer.n_iterations == 2_000
    clone = pickle.loads(pickle.dumps(ours))
    for x, y in _stream(50, seed=6):
        assert clone.predict_one(x) == pytest.approx(river.predict_one(x), rel=1e-9, abs=1e-12)
        clone.learn_one(x, y)
        river.learn_one(x, y)


def test_the_one_pass_step_holds_a_bounded_number_of_feature_orders() -> None:
    """Records whose names come in ever-new orders and sets are learned as River learns
    them, and what the step keeps to read them by position does not grow with them."""
    ours, river = build_model("linear"), build_model("linear")
    step = LinearStep.of(ours)
    assert step is not None
    rng = random.Random(3)
    names = [f"f{i}" for i in range(12)]
    for _ in range(3 * LinearStep.POSITIONS):
        x = {name: rng.gauss(0, 1) for name in rng.sample(names, rng.randint(1, len(names)))}
        assert step.learn_one(x, x.get("f0", 0.0)) == pytest.approx(
            river.predict_one(x), rel=1e-9, abs=1e-12
        )
        river.learn_one(x, x.get("f0", 0.0))
        assert len(step._positions) <= LinearStep.POSITIONS
    probe = {name: 0.5 for name in names}
    step.write_back()
    assert ours.predict_one(probe) == pytest.approx(river.predict_one(probe), rel=1e-9)


def test_a_learners_model_read_while_it_learns_is_the_model_as_learned() -> None:
    """The step learns in its own lists; whoever reads `Learner.model` (a checkpoint, a
    registration, a promotion) gets the model as learned up to then, and a model changed by
    its reader is learned on from what it became, exactly as River alone would."""
    learner = Learner(build_model("linear"), window=50)
    assert learner._step is not None
    river = build_model("linear")
    stream = _stream(600, seed=2)
    for t, (x, y) in enumerate(stream):
        learner.step(Example("X", 60.0 * t, 60.0 * (t + 5), x, y))
        river.learn_one(x, y)
        if t % 37 == 0:
            probe = stream[(t * 7) % len(stream)][0]
            assert learner.model.predict_one(probe) == pytest.approx(
                river.predict_one(probe), rel=1e-9, abs=1e-12
            )
        if t == 300:  # the reader learns the model itself
            for x2, y2 in _stream(10, seed=11):
                learner.model.learn_one(x2, y2)
                river.learn_one(x2, y2)
    probes = [x for x, _ in _stream(20, seed=9)]
    want = [river.predict_one(x) for x in probes]
    assert [learner.predict_one(x) for x in probes] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert [learner.model.predict_one(x) for x in probes] == pytest.approx(
        want, rel=1e-9, abs=1e-12
    )
    assert learner.model.steps["LinearRegression"].optimizer.n_iterations == 610


@pytest.mark.parametrize(
    "model",
    [
        *(build_model(name) for name in sorted(set(MODELS) - {"linear"})),
        build_model("linear", {"l2": 0.01}),  # a penalty the step does not apply
    ],
)
def test_the_one_pass_step_leaves_other_models_to_river(model: object) -> None:
    assert LinearStep.of(model) is None


def test_a_learner_checkpoint_holds_river_objects_and_learns_on_alike() -> None:
    """A checkpoint pickles the learner: the step is rebuilt from the model on load, so a
    resumed learner learns exactly as the one that kept running."""
    learner = Learner(build_model("linear"), window=50)
    stream = _stream(400)
    for t, (x, y) in enumerate(stream[:200]):
        learner.step(Example("X", 60.0 * t, 60.0 * (t + 5), x, y))
    raw = pickle.dumps(learner)
    assert b"LinearStep" not in raw
    resumed = pickle.loads(raw)
    for t, (x, y) in enumerate(stream[200:], start=200):
        ex = Example("X", 60.0 * t, 60.0 * (t + 5), x, y)
        learner.step(ex)
        resumed.step(ex)
    assert resumed.metrics() == learner.metrics()
    probes = [x for x, _ in _stream(20, seed=9)]
    assert [resumed.predict_one(x) for x in probes] == [learner.predict_one(x) for x in probes]


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"linear", "ols"}))
def test_other_models_are_not_taken_for_linear(name: str) -> None:
    assert LinearScorer.of(build_model(name)) is None
    assert LinearScorer.of(build_model(name, {}, "volatility")) is None


@pytest.mark.parametrize("target", ["return", "volatility"])
def test_an_ols_model_of_a_return_folds_into_one_dot_product(target: str) -> None:
    """Its snapshots and served versions predict as the model does, to rounding; a volatility
    model (the exp of its linear part) is not folded."""
    model, rng = build_model("ols", {}, target), random.Random(4)
    for _ in range(2000):
        x = {f"f{k}": rng.gauss(0, 1 + k) for k in range(6)}
        model.learn_one(x, abs(0.01 * x["f1"] - 0.005 * x["f4"] + rng.gauss(0, 0.01)) + 1e-4)
    scorer = LinearScorer.of(model)
    if target == "volatility":
        assert scorer is None
        return
    assert scorer is not None
    for _ in range(50):
        x = {f"f{k}": rng.gauss(0, 1 + k) for k in range(6) if rng.random() < 0.9}
        assert scorer.predict_one(x) == pytest.approx(model.predict_one(x), rel=1e-9, abs=1e-12)


def test_the_gates_served_errors_are_those_of_model_copies() -> None:
    """Snapshots of a linear model are scorers; the served errors the gate reads are the ones
    copies of the model give (the pre-scorer way)."""
    fast, slow = (
        Learner(build_model("linear"), window=50),
        Learner(build_model("linear"), window=50),
    )
    slow.snapshot = lambda watermark=None: slow._snapshots.append(  # type: ignore[method-assign]
        (
            slow.watermark if watermark is None else watermark,
            pickle.loads(pickle.dumps(slow.model)),
        )
    )
    for t, (x, y) in enumerate(_stream(300)):
        ex = Example("X", 60.0 * t, 60.0 * (t + 5), x, y)
        fast.step(ex)
        slow.step(ex)
    assert any(isinstance(model, LinearScorer) for _, model in fast._snapshots)
    got, want = fast.served_errors(), slow.served_errors()
    assert len(got[0]) == len(want[0]) == 50
    assert got[0] == pytest.approx(want[0], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("policy", ["flat", "skip"])
def test_an_examples_span_is_checked_against_the_horizon(tmp_path: Path, policy: str) -> None:
    """Sooner than H candles is a leak under either gap policy. Later is stale where every
    window has a candle (`flat`). Where markets close (`skip`), it is allowed up to H steps
    each bridging at most RTML_MAX_SILENCE_S (MSFT's five trading days span up to 13 calendar
    days), and stale beyond: features from 1970 with a label now."""
    from rtml.pipelines.training.trainer import Trainer

    day = 86_400.0
    settings = Settings(state_dir=tmp_path, symbols=("X",), candle_seconds=86_400, horizon=5)
    settings = settings.model_copy(update={"gap_policy": policy})
    trainer = Trainer(settings)
    trainer.learner = Learner(build_model("linear"))
    start = 1_700_006_400.0

    def admit(ts: float, label_ts: float) -> str:
        try:
            trainer._admit(Example("X", ts, label_ts, {}, 0.0))
        except BadRecord as exc:
            return exc.kind
        return "admitted"

    assert admit(start, start + 5 * day) == "admitted"
    assert admit(start, start + 4 * day) == "leak"
    assert admit(start, start + 13 * day) == ("stale" if policy == "flat" else "admitted")
    assert admit(start, start + 40 * day) == ("stale" if policy == "flat" else "admitted")
    assert admit(start, start + 41 * day) == "stale"  # five steps of at most 7 + 1 days
    assert admit(1.0, start) == "stale"


@pytest.mark.parametrize(("least", "expected"), [(0.0, 5), (3600.0, 0)])
def test_count_based_checkpoints_are_spaced_in_time(
    tmp_path: Path, least: float, expected: int
) -> None:
    """Catching up at thousands of examples a second, a checkpoint every `checkpoint_every`
    would keep the uploader busy in the learning process: count-based checkpoints come at
    most every RTML_CHECKPOINT_MIN_INTERVAL_S."""
    from confluent_kafka import Message

    from rtml.kafka import encode
    from rtml.pipelines.training.trainer import Trainer

    settings = Settings(state_dir=tmp_path, symbols=("X",), candle_seconds=60, horizon=5)
    settings = settings.model_copy(
        update={"checkpoint_every": 10, "checkpoint_min_interval_s": least}
    )
    trainer = Trainer(settings)
    trainer.learner = Learner(build_model("linear"))

    class Idle:
        def idle(self) -> bool:
            return True

    taken: list[int] = []

    def checkpoint() -> None:
        taken.append(trainer.learner.learned if trainer.learner else 0)
        trainer._since = 0

    trainer.uploader = Idle()  # type: ignore[assignment]
    trainer.checkpoint = checkpoint  # type: ignore[method-assign]
    trainer._last_checkpoint = time.monotonic()
    for t in range(50):
        ts = 1_700_000_000.0 + 60 * t
        record = {
            "symbol": "X",
            "ts": ts,
            "label_ts": ts + 300,
            "features": _FEATURES,
            "target": 0.0,
        }
        trainer.step(Message(topic="examples", partition=0, offset=t, value=encode(record)))
    assert len(taken) == expected and trainer.learner.learned == 50


# River's own target wrappers do not follow two of River's conventions for a class's
# constructor (defaults for its tests, keyword arguments passed through): these checks test
# the wrapper class, not the model inside it, and fail on River 0.26.1's wrappers alone
WRAPPER_CHECKS = {"check_init_has_default_params_for_tests", "check_wrapper_accepts_kwargs"}


@pytest.mark.parametrize("target", ["return", "volatility"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_passes_rivers_own_checks(name: str, target: str) -> None:
    from river import compose, preprocessing
    from river.checks import yield_checks

    model = build_model(name, target=target)
    wrapped = isinstance(
        model, compose.TargetTransformRegressor | preprocessing.TargetStandardScaler
    )
    ran = 0
    for check in yield_checks(model):
        if check.__name__ in model._unit_test_skips() or (
            wrapped and check.__name__ in WRAPPER_CHECKS
        ):
            continue
        check(model.clone())
        ran += 1
    assert ran >= 8


def test_a_stretch_without_price_changes_does_not_bend_a_volatility_model() -> None:
    """An illiquid stretch has zero realised volatility: its labels and volatility features are
    the floor. The log-space model stays bounded through it and recovers after it."""
    from rtml.pipelines.features.indicators import FEATURE_BOUNDS
    from rtml.pipelines.features.targets import VOL_FLOOR

    rng = random.Random(7)
    model = build_model("ols", target="volatility")

    def live(n: int) -> list[tuple[dict[str, float], float]]:
        out, level = [], 0.01
        for _ in range(n):
            level = min(0.05, max(0.002, level * math.exp(rng.gauss(0, 0.1))))
            y = level * math.exp(rng.gauss(0, 0.3))
            out.append(({"log_rv_h": math.log(level), "rv_h": level}, y))
        return out

    def mae(stream: list[tuple[dict[str, float], float]]) -> float:
        return sum(abs(float(model.predict_one(x)) - y) for x, y in stream) / len(stream)

    for x, y in live(1000):
        model.learn_one(x, y)
    before = mae(live(300))
    flat = {"log_rv_h": math.log(VOL_FLOOR), "rv_h": VOL_FLOOR}
    for _ in range(500):
        prediction = float(model.predict_one(flat))
        assert math.isfinite(prediction) and 0 < prediction <= FEATURE_BOUNDS["rv_h"][1]
        model.learn_one(flat, VOL_FLOOR)
    for x, y in live(1000):
        model.learn_one(x, y)
    assert mae(live(300)) < 2 * before
