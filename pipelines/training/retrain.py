"""The champion's errors on recent examples, and a refit from the offline store on demand."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rtml import registry
from rtml.errors import ConfigError
from rtml.records import Example
from rtml.settings import Settings

from ..features.indicators import FEATURE_NAMES
from ..features.targets import Target
from .dataset import warm_start
from .gate import GateDecision, gate, spent_z
from .learner import Learner
from .models import build_model


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
    experiment = registry.typed_experiment(settings)
    run = registry.client(settings).create_run(
        experiment, run_name=f"retrain {settings.model_name}"
    )
    run_id = run.info.run_id
    registry.log_run_params(settings, run_id, dataset.params())
    registry.log_dataset(settings, run_id, dataset.params())
    version = registry.log_version(
        settings,
        learner.model,
        tags={
            "source": "retrain",
            "trained_through": str(learner.watermark),
            "learned": str(learner.learned),
            "gate": decision.reason,
        },
        feature_names=FEATURE_NAMES,
        metadata={"trained_through": learner.watermark, "learned": learner.learned},
        lineage=registry.Lineage(run_id, {}, metrics, learner.learned),
    )
    registry.client(settings).set_terminated(run_id, "FINISHED")
    if decision.promote and not registry.pinned(settings):
        registry.promote(settings, version, by=by)
    return version, decision
