"""The River models the trainer can build, chosen and tuned by settings.

Every model is a pipeline that scales its inputs first, so hyperparameters mean the same thing
whatever the features' units. Missing features (a dict without a key) are treated as zero by
the scaler-and-linear models and skipped by trees.

>>> model = build_model("linear", {"lr": 0.05})
>>> model.learn_one({"a": 1.0}, 0.5)
>>> isinstance(model.predict_one({"a": 1.0}), float)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from river import compose, ensemble, forest, linear_model, optim, preprocessing, tree

from rtml.errors import ConfigError


def _linear(p: Mapping[str, Any]) -> Any:
    return linear_model.LinearRegression(
        optimizer=optim.SGD(float(p.get("lr", 0.003))),
        intercept_lr=float(p.get("intercept_lr", 0.003)),
        l2=float(p.get("l2", 0.0)),
        # the loss gradient is clipped so that one outlier (a gap, a bad print) moves the
        # weights a bounded step instead of starting a divergence
        clip_gradient=float(p.get("clip_gradient", 0.1)),
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
    "linear": _linear,
    "pa": _pa,
    "hat": _hat,
    "arf": _arf,
    "bagging": _bagging,
}
"""Model names for RTML_MODEL, each with the hyperparameters RTML_MODEL_PARAMS may set."""


def build_model(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """A fresh, untrained `name` model behind a standard scaler."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; RTML_MODEL is one of {sorted(MODELS)}"
        ) from None
    return compose.Pipeline(preprocessing.StandardScaler(), factory(params or {}))


def _scaler_and_linear(model: Any) -> tuple[Any, Any] | None:
    """The scaler and the regressor of a `linear` model (a standard scaler, then a linear
    regression on the squared loss, whose mean is the identity), or None for any other."""
    if not isinstance(model, compose.Pipeline) or len(model.steps) != 2:
        return None
    scaler, regressor = model.steps.values()
    if (
        type(scaler) is not preprocessing.StandardScaler
        or not scaler.with_std
        or scaler.window_size is not None
        or type(regressor) is not linear_model.LinearRegression
        or type(regressor.loss) is not optim.losses.Squared
    ):
        return None
    return scaler, regressor


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
            return None
        scaler, regressor = parts
        terms = {}
        for name, weight in regressor.weights.items():
            var = scaler.vars.get(name, 0.0)
            if var and weight:
                terms[name] = (weight / var**0.5, scaler.means.get(name, 0.0))
        return cls(float(regressor.intercept), terms)

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
    step does the same arithmetic on the model's own state (the scaler's counts, means and
    variances, the weights, the intercept, the optimizer's step count) in one loop: the
    prediction it returns is River's `predict_one` before the example, and the model after it
    is the one `learn_one` leaves, up to the order of a dot product's terms. It is the
    model's state that is kept, so the model stays a River pipeline: pickled, registered and
    served as before, and learned by River itself wherever this step does not apply
    (`of` is None for any other model, optimizer or penalty).

    >>> model, twin = build_model("linear", {"lr": 0.05}), build_model("linear", {"lr": 0.05})
    >>> step = LinearStep.of(model)
    >>> for i in range(50):
    ...     x = {"a": i % 5 / 10, "b": i % 3 - 1.0}
    ...     assert abs(step.learn_one(x, i % 5 / 100) - twin.predict_one(x)) < 1e-12
    ...     twin.learn_one(x, i % 5 / 100)
    >>> probe = {"a": 0.3, "b": 1.0}
    >>> abs(model.predict_one(probe) - twin.predict_one(probe)) < 1e-12
    True
    """

    __slots__ = ("model", "regressor", "scaler")

    def __init__(self, model: Any, scaler: Any, regressor: Any) -> None:
        self.model = model
        self.scaler = scaler
        self.regressor = regressor

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
            or regressor.l1 != 0
            or regressor.l2 != 0
            or type(regressor.initializer) is not optim.initializers.Zeros
            or model._LEARN_UNSUPERVISED_DURING_PREDICT
        ):
            return None
        return cls(model, scaler, regressor)

    def learn_one(self, x: Mapping[str, float], y: float) -> float:
        """Learn `x` -> `y`; returns what the model predicted for `x` before it learned it."""
        scaler, regressor = self.scaler, self.regressor
        counts, means, variances = scaler.counts, scaler.means, scaler.vars
        weights = regressor._weights
        weight_of = weights.get
        predicted = dot = regressor.intercept
        learned: list[tuple[str, float, float]] = []
        for name, value in x.items():
            weight = weight_of(name, 0.0)
            mean, var = means[name], variances[name]
            if var:  # the prediction scales by the statistics before this example
                predicted += weight * ((value - mean) / var**0.5)
            count = counts[name] + 1
            counts[name] = count
            new_mean = means[name] = mean + (value - mean) / count
            var = variances[name] = var + ((value - mean) * (value - new_mean) - var) / count
            scaled = (value - new_mean) / var**0.5 if var else 0.0  # the gradient, by the new
            dot += weight * scaled
            learned.append((name, scaled, weight))
        clip = regressor.clip_gradient
        gradient = 2 * (dot - y)  # the squared loss's, clamped as River clamps it
        gradient = -clip if gradient < -clip else clip if gradient > clip else gradient
        optimizer = regressor.optimizer
        t = optimizer.n_iterations
        regressor.intercept -= regressor.intercept_lr.get(t) * gradient
        rate = optimizer.lr.get(t)
        for name, scaled, weight in learned:
            weights[name] = weight - rate * (scaled * gradient)
        optimizer.n_iterations = t + 1
        return predicted
