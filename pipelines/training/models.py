"""The River models the trainer can build, chosen and tuned by settings.

Every model is a pipeline that scales its inputs first, so hyperparameters mean the same thing
whatever the features' units. Missing features (a dict without a key) are treated as zero by
the scaler-and-linear models and skipped by trees.

The default, `ols`, is online least squares (River's `BayesianLinearRegression`, whose
`smoothing` forgets old examples so that it follows a drifting market) on a standardised
target: the target's running mean is its intercept, so it is calibrated from the first
example, and it needs no learning rate to tune. A `volatility` model learns the log of the
target (volatility is positive and its changes are multiplicative) and predicts its exp, the
conditional median, which is what the absolute error rewards.

>>> model = build_model("linear", {"lr": 0.05})
>>> model.learn_one({"a": 1.0}, 0.5)
>>> isinstance(model.predict_one({"a": 1.0}), float)
True
>>> vol = build_model("ols", target="volatility")
>>> for i in range(50):
...     vol.learn_one({"log_rv_h": np.log(0.01 * (1 + i % 3))}, 0.01 * (1 + i % 3))
>>> bool(abs(vol.predict_one({"log_rv_h": np.log(0.02)}) - 0.02) < 0.003)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from river import compose, ensemble, forest, linear_model, optim, preprocessing, tree

from rtml.errors import ConfigError

from ..features.targets import TARGETS


def _linear(p: Mapping[str, Any]) -> Any:
    return linear_model.LinearRegression(
        optimizer=optim.SGD(float(p.get("lr", 0.003))),
        intercept_lr=float(p.get("intercept_lr", 0.003)),
        l2=float(p.get("l2", 0.0)),
        # the loss gradient is clipped so that one outlier (a gap, a bad print) moves the
        # weights a bounded step instead of starting a divergence
        clip_gradient=float(p.get("clip_gradient", 0.1)),
    )


def _ols(p: Mapping[str, Any]) -> Any:
    smoothing = float(p.get("smoothing", 0.999))
    return linear_model.BayesianLinearRegression(
        alpha=float(p.get("alpha", 1.0)),
        beta=float(p.get("beta", 1.0)),
        smoothing=smoothing if smoothing < 1 else None,
    )


def _pa(p: Mapping[str, Any]) -> Any:
    return linear_model.PARegressor(C=float(p.get("C", 0.01)), eps=float(p.get("eps", 0.0001)))


def _hat(p: Mapping[str, Any]) -> Any:
    return tree.HoeffdingAdaptiveTreeRegressor(
        grace_period=int(p.get("grace_period", 200)),
        max_depth=int(p.get("max_depth", 8)),
        seed=int(p.get("seed", 42)),
    )


def _arf(p: Mapping[str, Any]) -> Any:
    return forest.ARFRegressor(n_models=int(p.get("n_models", 5)), seed=int(p.get("seed", 42)))


def _bagging(p: Mapping[str, Any]) -> Any:
    return ensemble.BaggingRegressor(
        model=_linear(p), n_models=int(p.get("n_models", 5)), seed=int(p.get("seed", 42))
    )


MODELS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ols": _ols,
    "linear": _linear,
    "pa": _pa,
    "hat": _hat,
    "arf": _arf,
    "bagging": _bagging,
}
"""Model names for RTML_MODEL, each with the hyperparameters RTML_MODEL_PARAMS may set."""


CALIBRATED = ("ols",)
"""Models that learn a standardised target, whose running mean is their intercept."""


def build_model(name: str, params: Mapping[str, Any] | None = None, target: str = "return") -> Any:
    """A fresh, untrained `name` model behind a standard scaler, for `target`."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; RTML_MODEL is one of {sorted(MODELS)}"
        ) from None
    if name == "ols":  # the target declares how fast its model forgets, unless params say
        params = {"smoothing": TARGETS[target].forgetting, **(params or {})}
    model: Any = compose.Pipeline(preprocessing.StandardScaler(), factory(params or {}))
    if name in CALIBRATED:
        model = preprocessing.TargetStandardScaler(model)
    if target == "volatility":
        # numpy's log and exp, not math's: they pickle by name as math's do, and an exp that
        # overflows is inf (a refused version), not an exception in a serving loop
        model = compose.TargetTransformRegressor(model, func=np.log, inverse_func=np.exp)
    return model


def _scaled(model: Any, regressor_type: type) -> tuple[Any, Any] | None:
    """The scaler and the regressor of a pipeline of a standard scaler (unwindowed) and a
    `regressor_type`, or None for any other model."""
    if not isinstance(model, compose.Pipeline) or len(model.steps) != 2:
        return None
    scaler, regressor = model.steps.values()
    if (
        type(scaler) is not preprocessing.StandardScaler
        or not scaler.with_std
        or scaler.window_size is not None
        or type(regressor) is not regressor_type
    ):
        return None
    return scaler, regressor


def _scaler_and_linear(model: Any) -> tuple[Any, Any] | None:
    """The scaler and the regressor of a `linear` model (a standard scaler, then a linear
    regression on the squared loss, whose mean is the identity), or None for any other."""
    parts = _scaled(model, linear_model.LinearRegression)
    if parts is None or type(parts[1].loss) is not optim.losses.Squared:
        return None
    return parts


class LinearScorer:
    """A frozen scaler-and-linear pipeline as one pass over the features.

    River's `predict_one` scales every feature into a new dict, then takes the dot product
    with the weights: about 5 µs for 20 features, most of a served prediction's cost. A model
    that is only predicted with (a served version, a snapshot kept for the gate) can fold the
    scaler into the weights once: `w * (x - mean) / std` becomes `(w / std) * (x - mean)`.
    The prediction is the same up to rounding, features missing from `x` or of zero variance
    count zero as before, and the model it came from is not touched.

    >>> model = build_model("linear", {"lr": 0.05})
    >>> for i in range(50):
    ...     model.learn_one({"a": i % 5 / 10, "b": i % 3 - 1.0}, i % 5 / 100)
    >>> scorer = LinearScorer.of(model)
    >>> x = {"a": 0.3, "b": 1.0, "unseen": 7.0}
    >>> abs(scorer.predict_one(x) - model.predict_one(x)) < 1e-12
    True
    """

    __slots__ = ("intercept", "terms")

    def __init__(self, intercept: float, terms: dict[str, tuple[float, float]]) -> None:
        self.intercept = intercept
        self.terms = terms  # name -> (weight / std, mean)

    @classmethod
    def of(cls, model: Any) -> LinearScorer | None:
        """The scorer of `model` as it is now, or None for any other kind of model."""
        parts = _scaler_and_linear(model)
        if parts is None:
            return cls._of_ols(model)
        scaler, regressor = parts
        terms = {}
        for name, weight in regressor.weights.items():
            var = scaler.vars.get(name, 0.0)
            if var and weight:
                terms[name] = (weight / var**0.5, scaler.means.get(name, 0.0))
        return cls(float(regressor.intercept), terms)

    @classmethod
    def _of_ols(cls, model: Any) -> LinearScorer | None:
        """An `ols` model of a return (a target scaler around a scaler and River's
        `BayesianLinearRegression`, whose predicted mean is linear in the scaled features):
        `mean_y + std_y * sum(m * (x - mean) / std)`, folded as above. None for any other
        (a volatility model predicts the exp of its linear part)."""
        if type(model) is not preprocessing.TargetStandardScaler:
            return None
        parts = _scaled(model.regressor, linear_model.BayesianLinearRegression)
        if parts is None:
            return None
        scaler, bayes = parts
        std = model.var.get() ** 0.5
        terms: dict[str, tuple[float, float]] = {}
        if bayes._idx:
            bayes._ensure_m()  # River's own cache of the mean weights, as `predict_one` does
            for name, i in bayes._idx.items():
                weight, var = float(bayes._m_arr[i]) * std, scaler.vars.get(name, 0.0)
                if var and weight:
                    terms[str(name)] = (weight / var**0.5, scaler.means.get(name, 0.0))
        return cls(float(model.var.mean.get()), terms)

    def predict_one(self, x: Mapping[str, float]) -> float:
        total, terms = self.intercept, self.terms
        for name, value in x.items():
            term = terms.get(name)
            if term is not None:
                total += term[0] * (value - term[1])
        return total


class LinearStep:
    """River's predict-then-learn of a `linear` model as one pass over the features.

    The trainer predicts each example before it learns it. River does that in two calls that
    each scale every feature into a new dict, and the regression computes its prediction once
    more for the gradient: about 15 µs for eight features, most of an example's cost. This
    step does the same arithmetic in one loop: the prediction it returns is River's
    `predict_one` before the example, and the model it leaves is the one `learn_one` leaves,
    up to the order of a dot product's terms.

    It takes the model's state (the scaler's counts, means and variances, the weights, the
    intercept, the optimizer's step count) into lists, one slot a feature, and reads each
    example's features by position: a record's features come in the same order every time,
    so the positions of one order of names are worked out once. The model itself is written
    only by `write_back`, which whoever reads the model calls first (`Learner.model` does);
    so the model stays a River pipeline, pickled, registered and served as before, and
    learned by River itself wherever this step does not apply (`of` is None for any other
    model, optimizer, schedule or penalty).

    >>> model, twin = build_model("linear", {"lr": 0.05}), build_model("linear", {"lr": 0.05})
    >>> step = LinearStep.of(model)
    >>> for i in range(50):
    ...     x = {"a": i % 5 / 10, "b": i % 3 - 1.0}
    ...     assert abs(step.learn_one(x, i % 5 / 100) - twin.predict_one(x)) < 1e-12
    ...     twin.learn_one(x, i % 5 / 100)
    >>> step.write_back()
    >>> probe = {"a": 0.3, "b": 1.0}
    >>> abs(model.predict_one(probe) - twin.predict_one(probe)) < 1e-12
    True
    """

    __slots__ = (
        "_positions",
        "clip",
        "counts",
        "intercept",
        "intercept_rate",
        "iterations",
        "learned",
        "means",
        "model",
        "names",
        "rate",
        "regressor",
        "scaler",
        "variances",
        "weights",
    )

    POSITIONS = 256
    """At most this many orders of feature names are remembered; past it they start over, so
    records with ever-new sets of names cannot grow it."""

    def __init__(self, model: Any, scaler: Any, regressor: Any) -> None:
        self.model, self.scaler, self.regressor = model, scaler, regressor
        optimizer = regressor.optimizer
        self.rate = float(optimizer.lr.learning_rate)
        self.intercept_rate = float(regressor.intercept_lr.learning_rate)
        self.clip = float(regressor.clip_gradient)
        self.intercept = float(regressor.intercept)
        self.iterations = int(optimizer.n_iterations)
        weights = regressor._weights
        self.names: dict[str, int] = {}
        self.counts: list[int] = []
        self.means: list[float] = []
        self.variances: list[float] = []
        self.weights: list[float] = []
        for name in [*scaler.counts, *(n for n in weights if n not in scaler.counts)]:
            self._slot(name)
        self._positions: dict[tuple[str, ...], tuple[int, ...]] = {}
        self.learned = False  # since the model was last written

    def _slot(self, name: str) -> int:
        """The position of `name`, given one (with River's state, or none yet) if it is new."""
        at = self.names.get(name)
        if at is None:
            scaler = self.scaler
            at = self.names[name] = len(self.counts)
            self.counts.append(scaler.counts.get(name, 0))
            self.means.append(scaler.means.get(name, 0.0))
            self.variances.append(scaler.vars.get(name, 0.0))
            self.weights.append(self.regressor._weights.get(name, 0.0))
        return at

    @classmethod
    def of(cls, model: Any) -> LinearStep | None:
        """The step of `model`, or None where River's own `learn_one` must learn it."""
        parts = _scaler_and_linear(model)
        if parts is None:
            return None
        scaler, regressor = parts
        optimizer = regressor.optimizer
        if (
            type(optimizer) is not optim.SGD
            or type(optimizer.lr) is not optim.schedulers.Constant
            or type(regressor.intercept_lr) is not optim.schedulers.Constant
            or regressor.l1 != 0
            or regressor.l2 != 0
            or type(regressor.initializer) is not optim.initializers.Zeros
            or model._LEARN_UNSUPERVISED_DURING_PREDICT
        ):
            return None
        return cls(model, scaler, regressor)

    def learn_one(self, x: Mapping[str, float], y: float) -> float:
        """Learn `x` -> `y`; returns what the model predicted for `x` before it learned it."""
        order = tuple(x)
        positions = self._positions.get(order)
        if positions is None:
            if len(self._positions) >= self.POSITIONS:
                self._positions.clear()
            positions = self._positions[order] = tuple(self._slot(name) for name in order)
        counts, means, variances, weights = self.counts, self.means, self.variances, self.weights
        predicted = dot = self.intercept
        scaled_all: list[float] = []
        keep = scaled_all.append
        for at, value in zip(positions, x.values(), strict=False):
            weight, mean, var = weights[at], means[at], variances[at]
            if var:  # the prediction scales by the statistics before this example
                predicted += weight * ((value - mean) / var**0.5)
            count = counts[at] = counts[at] + 1
            off = value - mean
            new_mean = means[at] = mean + off / count
            var = variances[at] = var + (off * (value - new_mean) - var) / count
            if var:  # the gradient scales by the statistics after it
                scaled = (value - new_mean) / var**0.5
                dot += weight * scaled
                keep(scaled)
            else:
                keep(0.0)
        clip = self.clip
        gradient = 2 * (dot - y)  # the squared loss's, clamped as River clamps it
        gradient = -clip if gradient < -clip else clip if gradient > clip else gradient
        self.intercept -= self.intercept_rate * gradient
        rate = self.rate
        for at, scaled in zip(positions, scaled_all, strict=False):
            weights[at] -= rate * (scaled * gradient)
        self.iterations += 1
        self.learned = True
        return predicted

    def write_back(self) -> None:
        """Write what was learned into the River model, which is then the model as learned."""
        if not self.learned:
            return
        scaler, regressor = self.scaler, self.regressor
        counts, means, variances, weights = (
            scaler.counts,
            scaler.means,
            scaler.vars,
            regressor._weights,
        )
        for name, at in self.names.items():
            if self.counts[at]:  # a name River has (a weight read from it, or learned since)
                counts[name] = self.counts[at]
                means[name] = self.means[at]
                variances[name] = self.variances[at]
            if self.counts[at] or name in weights:
                weights[name] = self.weights[at]
        regressor.intercept = self.intercept
        regressor.optimizer.n_iterations = self.iterations
        self.learned = False

    def scorer(self) -> LinearScorer:
        """The model as it is now as a `LinearScorer`, without writing it back."""
        terms = {}
        for name, at in self.names.items():
            var, weight = self.variances[at], self.weights[at]
            if var and weight:
                terms[name] = (weight / var**0.5, self.means[at])
        return LinearScorer(self.intercept, terms)
