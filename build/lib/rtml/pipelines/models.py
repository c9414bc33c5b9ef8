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
