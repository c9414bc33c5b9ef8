"""The one wrapper around MLflow: served versions in the registry, the trainer's run and its
checkpoints, and who decided which version is the champion.

What is registered is what serves: the River estimator alone, behind the pyfunc of
`rtml/river_model.py`, with a signature, an input example and complete requirements, so a version
loads with mlflow and river alone. The trainer's whole state (model, what it learned, metrics,
offsets) is a checkpoint artifact of the trainer's own run, not a model version. Pickle is
River's only serialization: a model is loaded only from the registry the settings name.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from rtml.errors import ConfigError
from rtml.settings import Settings

log = logging.getLogger(__name__)

# MLflow's client retries a refused connection for about two minutes by default; rtml's loops
# retry on their own (the trainer's uploader, the predictor's alias poll), so each call gives
# up within seconds and the loop carries on. The environment can still say otherwise.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_CODE = Path(__file__).resolve().parent / "river_model.py"
TRAINER_TAG = "rtml.trainer_of"  # run tag: the registered model a trainer run trains
CHECKPOINT_TAG = "rtml.checkpoint"  # run tag: artifact path of the newest complete checkpoint
DECISION_TAG = "rtml.champion_decision"  # registered-model tag: who set the champion, when
TRAINER = "trainer"  # who decided, when the gate did
EXPERIMENT_KIND = "mlflow.experimentKind"  # experiment tag: ML or GenAI, for the UI


class OnlineRegressor(Protocol):
    def predict_one(self, x: dict[str, float]) -> float: ...


def pip_requirements() -> list[str]:
    """Explicit requirements (inferring them takes seconds): what unpickles the estimator and
    runs `river_model.py`. MLflow adds its own pin."""
    return [f"river=={version('river')}", f"pandas=={version('pandas')}"]


def signature(feature_names: list[str]) -> ModelSignature:
    """Optional float inputs (River skips missing features), one float output."""
    inputs = Schema([ColSpec(DataType.double, name, required=False) for name in feature_names])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.double)]))


def client(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def _missing(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# Served versions -----------------------------------------------------------------------------
class Lineage(NamedTuple):
    """Where a version came from: the run that trained it, and what it knew then."""

    run_id: str
    params: Mapping[str, str]  # on the logged model, beside the run's own
    metrics: Mapping[str, float]  # on the logged model and on the run, at `step`
    step: int  # examples learned


def log_version(
    settings: Settings,
    model: OnlineRegressor,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    feature_names: list[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    lineage: Lineage | None = None,
) -> str:
    """Register the estimator `model` as a new version of `name`; returns the version.

    `metadata` travels inside the model (MLmodel), e.g. the newest label time it learned. With
    `lineage`, the version's logged model names its source run (so the run page lists its
    registered models), carries the params and the metrics, and the run lists it as an output.
    """
    name = name or settings.model_name
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow_client = client(settings)
    model_id = None
    if lineage is not None:
        run = mlflow_client.get_run(lineage.run_id)
        logged = mlflow_client.create_logged_model(
            run.info.experiment_id,
            name=f"{name}-{lineage.step}",
            source_run_id=lineage.run_id,
            params={**run.data.params, **lineage.params},
            model_type="river-regressor",
        )
        model_id = logged.model_id
    example = pd.DataFrame([dict.fromkeys(feature_names, 0.0)]) if feature_names else None
    with tempfile.TemporaryDirectory(prefix="rtml-model-") as tmp:
        estimator = Path(tmp) / "estimator.pkl"
        estimator.write_bytes(pickle.dumps(model))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"estimator": str(estimator)},
            pip_requirements=pip_requirements(),
            signature=signature(feature_names) if feature_names else None,
            input_example=example,
            metadata=dict(metadata or {}),
            model_id=model_id,
        )
    if lineage is not None and model_id is not None:
        now = int(time.time() * 1000)
        finite = {k: v for k, v in lineage.metrics.items() if math.isfinite(v)}
        mlflow_client.log_batch(
            lineage.run_id,
            metrics=[Metric(k, v, now, lineage.step, model_id=model_id) for k, v in finite.items()],
        )
        mlflow_client.log_outputs(lineage.run_id, [LoggedModelOutput(model_id, lineage.step)])
    # registering with its tags is one call; tagging afterwards would be one per tag
    registered = mlflow.register_model(info.model_uri, name, tags=dict(tags or {}))
    version_id = str(registered.version)
    log.info("registered %s version %s", name, version_id)
    return version_id


def log_dataset(settings: Settings, run_id: str, params: Mapping[str, str]) -> None:
    """Log what a fit read from the offline store as the run's training input: its source,
    and a digest of what identifies it (feature service, symbols, examples, time span)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    identity = {**params, "symbols": ",".join(settings.symbols)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    with warnings.catch_warnings():  # two local sources claim a folder: either will do
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(settings.offline_dir.resolve()))
    dataset = MetaDataset(  # type: ignore[abstract]  # abstract in its stubs only
        source,
        name=params.get("dataset.feature_service", "offline store"),
        digest=digest,
    )
    context = InputTag(MLFLOW_DATASET_CONTEXT, "training")
    client(settings).log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [context])])


def log_run_params(settings: Settings, run_id: str, params: Mapping[str, str]) -> None:
    client(settings).log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def typed_experiment(settings: Settings) -> str:
    """The experiment's id, created if missing, typed for ML (not GenAI) in MLflow's UI."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    experiment = mlflow.set_experiment(settings.experiment_name)
    if experiment.tags.get(EXPERIMENT_KIND) != "custom_model_development":
        client(settings).set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND, "custom_model_development"
        )
    return str(experiment.experiment_id)


def alias_version(settings: Settings, alias: str, name: str | None = None) -> str | None:
    """The version `alias` points at, or None (also when the model is not registered yet)."""
    try:
        found = client(settings).get_model_version_by_alias(name or settings.model_name, alias)
    except MlflowException as exc:
        if _missing(exc):
            return None  # no such model or alias
        raise  # the registry is unreachable or failing: not the same as "no version"
    return str(found.version)


def alias_age_s(settings: Settings, alias: str, name: str | None = None) -> float | None:
    """Seconds since the version `alias` points at was registered, or None (no such alias,
    or no model yet). The registry's clock, never below zero."""
    try:
        found = client(settings).get_model_version_by_alias(name or settings.model_name, alias)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    created = found.creation_timestamp
    return None if created is None else max(0.0, time.time() - created / 1000.0)


class Loaded(NamedTuple):
    model: Any  # the pyfunc's python model: `predict_one(x)`, `predict_row(row)`
    metadata: dict[str, Any]  # what `log_version` was given as metadata


def load_version(settings: Settings, version: str, name: str | None = None) -> Loaded:
    """One version by number: an alias can move between looking it up and loading it."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name or settings.model_name}/{version}")
    return Loaded(loaded.unwrap_python_model(), dict(loaded.metadata.metadata or {}))


def load(settings: Settings, alias: str, name: str | None = None) -> Loaded:
    """The version `alias` points at."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name or settings.model_name}@{alias}")
    return Loaded(loaded.unwrap_python_model(), dict(loaded.metadata.metadata or {}))


def load_champion(settings: Settings) -> Loaded | None:
    """The champion, or None while there is none."""
    if alias_version(settings, CHAMPION) is None:
        return None
    return load(settings, CHAMPION)


# The champion and who decided ------------------------------------------------------------------
HISTORY_TAG = "champion_history"


def _registered_model(settings: Settings) -> Any | None:
    """The registered model, or None while nothing was registered under its name."""
    try:
        return client(settings).get_registered_model(settings.model_name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def _model_tags(settings: Settings) -> dict[str, str]:
    found = _registered_model(settings)
    return dict(found.tags) if found is not None else {}


def registered(settings: Settings) -> bool:
    """Whether the model has been registered at all (a version, or a refused first fit)."""
    return _registered_model(settings) is not None


def champion_history(settings: Settings) -> list[str]:
    history: list[str] = json.loads(_model_tags(settings).get(HISTORY_TAG, "[]"))
    return history


def decision(settings: Settings) -> dict[str, Any] | None:
    """Who set the champion, when, how, and whether it is pinned against the trainer's gate."""
    raw = _model_tags(settings).get(DECISION_TAG)
    return json.loads(raw) if raw else None


def pinned(settings: Settings) -> bool:
    found = decision(settings)
    return bool(found and found.get("pinned"))


def set_alias(settings: Settings, alias: str, version: str, name: str | None = None) -> None:
    """Point `alias` at `version` (`_written_once_more` if a person and the trainer collide)."""
    mlflow_client = client(settings)
    name = name or settings.model_name
    _written_once_more(lambda: mlflow_client.set_registered_model_alias(name, alias, version))


def _written_once_more(write: Callable[[], object]) -> None:
    """`write`, and once more if it collided with another writer's insert of the same key.

    MLflow's SQL store inserts an alias or a tag after looking for it, so two writers at once
    (a person's `promote` and the trainer's gate) can both insert, and one fails on the
    unique key: SQLite's `UNIQUE constraint failed`, PostgreSQL's `duplicate key value
    violates unique constraint`, MySQL's `Duplicate entry`. The key exists by then, so
    writing again is an update."""
    try:
        write()
    except MlflowException as exc:
        text = str(exc).lower()
        collided = "unique constraint" in text or "duplicate entry" in text
        if not collided and exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        write()


def _decide(
    settings: Settings, history: list[str], version: str, action: str, by: str, pin: bool
) -> None:
    mlflow_client = client(settings)
    name = settings.model_name
    set_alias(settings, CHAMPION, version)
    record = {"version": version, "action": action, "by": by, "at": time.time(), "pinned": pin}
    history_text, decision_text = json.dumps(history[-100:]), json.dumps(record)
    _written_once_more(
        lambda: mlflow_client.set_registered_model_tag(name, HISTORY_TAG, history_text)
    )
    _written_once_more(
        lambda: mlflow_client.set_registered_model_tag(name, DECISION_TAG, decision_text)
    )
    log.info("champion of %s is now version %s (%s by %s)", name, version, action, by)


def person() -> str:
    """Who runs this command, for the record of who decided."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def promote(settings: Settings, version: str, by: str = TRAINER, pin: bool = False) -> None:
    """Point `champion` at `version` and remember the move for rollback.

    A person's promotion pins the champion (`pin=True`): the trainer's gate stops moving it
    until `auto` hands control back.
    """
    try:
        client(settings).get_model_version(settings.model_name, version)
    except MlflowException as exc:
        if _missing(exc):
            raise ConfigError(
                f"{settings.model_name} has no version {version}; `rtml status` lists them"
            ) from None
        raise
    history = champion_history(settings)
    if history[-1:] != [version]:
        history.append(version)
    _decide(settings, history, version, "promote", by, pin)


def retire(settings: Settings, by: str = TRAINER) -> None:
    """Remove the `champion` alias: predictors serve the naive baseline until a version is
    promoted again. Recorded like any decision; not pinned, so the gate may promote."""
    mlflow_client = client(settings)
    name = settings.model_name
    current = alias_version(settings, CHAMPION)
    if current is None:
        return
    mlflow_client.delete_registered_model_alias(name, CHAMPION)
    record = {"version": None, "action": "retire", "by": by, "at": time.time(), "pinned": False}
    mlflow_client.set_registered_model_tag(name, DECISION_TAG, json.dumps(record))
    log.info("champion of %s (version %s) retired by %s: the baseline is served", name, current, by)


CHAMPION_METRIC = "champion_version"
"""A metric of the trainer's run: the champion it chose (0: none, the naive forecast is
served), at the step of the newest label time it had learned then (epoch seconds, rounded up)."""


def log_champion_change(
    settings: Settings, run_id: str, version: str | None, watermark: float
) -> None:
    """Record in event time that the trainer's gate made `version` the champion (None: retired)."""
    step = math.ceil(watermark) if math.isfinite(watermark) else 0
    client(settings).log_metric(run_id, CHAMPION_METRIC, float(version or 0), step=step)


def champion_changes(settings: Settings, run_id: str) -> list[tuple[float, str | None]]:
    """The trainer's champion changes as (newest label time learned, version or None), in order."""
    history = client(settings).get_metric_history(run_id, CHAMPION_METRIC)
    ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
    return [(float(m.step), str(int(m.value)) if m.value else None) for m in ordered]


def rollback(settings: Settings, by: str | None = None) -> str:
    """Move `champion` back to the previous champion and pin it; returns the version served."""
    history = champion_history(settings)
    if len(history) < 2:
        raise ConfigError(
            f"{settings.model_name} has no earlier champion to roll back to; "
            "use `rtml promote VERSION` to choose one."
        )
    history.pop()
    _decide(settings, history, history[-1], "rollback", by or person(), pin=True)
    return history[-1]


def auto(settings: Settings, by: str | None = None) -> str | None:
    """Hand the champion back to the trainer's gate; returns the champion it keeps for now."""
    current = alias_version(settings, CHAMPION)
    record = {
        "version": current,
        "action": "auto",
        "by": by or person(),
        "at": time.time(),
        "pinned": False,
    }
    try:
        client(settings).set_registered_model_tag(
            settings.model_name, DECISION_TAG, json.dumps(record)
        )
    except MlflowException as exc:
        if _missing(exc):
            raise ConfigError(
                f"{settings.model_name} is not registered yet; the trainer's gate chooses "
                "its champion from the start"
            ) from None
        raise
    return current


def prune(settings: Settings, keep: int) -> list[str]:
    """Delete versions beyond the newest `keep` that no alias or recent champion points at."""
    mlflow_client = client(settings)
    name = settings.model_name
    model = mlflow_client.get_registered_model(name)
    protected = set(model.aliases.values()) | set(champion_history(settings)[-10:])
    versions = sorted(
        (int(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")),
        reverse=True,
    )
    doomed = [str(v) for v in versions[keep:] if str(v) not in protected]
    for number in doomed:
        mlflow_client.delete_model_version(name, number)
    return doomed
