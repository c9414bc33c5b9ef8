"""The one wrapper around the MLflow model registry: log versions, move aliases, load by alias.

Models are River estimators logged as MLflow pyfunc models. Pickle is River's only
serialization, so a model is loaded only from the registry the settings name, and every version
pins the river version it was logged with.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any, NamedTuple, Protocol

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

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


class OnlineRegressor(Protocol):
    def predict_one(self, x: dict[str, float]) -> float: ...


def pip_requirements() -> list[str]:
    """Explicit requirements (inferring them takes seconds): pin what unpickles the model."""
    return [f"river=={version('river')}", f"pandas=={version('pandas')}"]


class RiverPyfunc(PythonModel):
    """A River regressor as an MLflow pyfunc: one prediction per input row.

    Missing or non-finite feature values are left out of a row, as River models expect.
    """

    def __init__(self, model: OnlineRegressor) -> None:
        self.model = model

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[float]:
        rows: list[dict[str, Any]] = model_input.to_dict(orient="records")  # type: ignore[assignment]
        return [self.predict_row(row) for row in rows]

    def predict_row(self, row: Mapping[str, Any]) -> float:
        x = {
            k: float(v)
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        return float(self.model.predict_one(x))


class _KnownPickleWarning(logging.Filter):
    """MLflow warns on every version that a Python object is cloudpickled. River models have
    no other serialization; the trust boundary is documented once, in the README."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "causes it to be serialized using CloudPickle" not in record.getMessage()


logging.getLogger("mlflow.pyfunc").addFilter(_KnownPickleWarning())


def signature(feature_names: list[str]) -> ModelSignature:
    """Optional float inputs (River skips missing features), one float output."""
    inputs = Schema([ColSpec(DataType.double, name, required=False) for name in feature_names])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.double)]))


def client(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def log_version(
    settings: Settings,
    model: OnlineRegressor,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    feature_names: list[str] | None = None,
) -> str:
    """Log `model` in the active run (or a new one) and register it; returns the version."""
    name = name or settings.model_name
    mlflow.set_tracking_uri(settings.mlflow_uri)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=RiverPyfunc(model),
        pip_requirements=pip_requirements(),
        signature=signature(feature_names) if feature_names else None,
    )
    # registering with its tags is one call; tagging afterwards would be one per tag
    registered = mlflow.register_model(info.model_uri, name, tags=dict(tags or {}))
    version_id = str(registered.version)
    log.info("registered %s version %s", name, version_id)
    return version_id


def alias_version(settings: Settings, alias: str, name: str | None = None) -> str | None:
    """The version `alias` points at, or None (also when the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).get_model_version_by_alias(name or settings.model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such model or alias
        raise  # the registry is unreachable or failing: not the same as "no version"
    return str(found.version)


HISTORY_TAG = "champion_history"


def champion_history(settings: Settings) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        model = client(settings).get_registered_model(settings.model_name)
    except MlflowException:
        return []
    history: list[str] = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    return history


def promote(settings: Settings, version: str) -> None:
    """Point `champion` at `version` and remember the move for rollback."""
    mlflow_client = client(settings)
    name = settings.model_name
    mlflow_client.get_model_version(name, version)  # raises for an unknown version
    history = champion_history(settings)
    if history[-1:] != [version]:
        history.append(version)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-100:]))
    log.info("champion of %s is now version %s", name, version)


def rollback(settings: Settings) -> str:
    """Move `champion` back to the previous champion; returns the version now served."""
    history = champion_history(settings)
    if len(history) < 2:
        raise ConfigError(
            f"{settings.model_name} has no earlier champion to roll back to; "
            "use `rtml promote VERSION` to choose one."
        )
    history.pop()
    mlflow_client = client(settings)
    mlflow_client.set_registered_model_alias(settings.model_name, CHAMPION, history[-1])
    mlflow_client.set_registered_model_tag(settings.model_name, HISTORY_TAG, json.dumps(history))
    return history[-1]


def prune(settings: Settings, keep: int) -> list[str]:
    """Delete versions beyond the newest `keep` that no alias or recent champion points at.

    The MLflow UI slows down with tens of thousands of versions; a trainer makes one per
    checkpoint.
    """
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


class Restored(NamedTuple):
    learner: Any
    offsets: dict[int, int]
    topic_id: str | None  # the `examples` topic's id the offsets belong to


def latest_checkpoint(settings: Settings) -> Restored | None:
    """The newest checkpoint's learner and the offsets to continue from, if there is one."""
    version = alias_version(settings, CANDIDATE)
    if version is None:
        return None
    tags = client(settings).get_model_version(settings.model_name, version).tags
    offsets = {int(k): int(v) for k, v in json.loads(tags.get("offsets", "{}")).items()}
    return Restored(load(settings, CANDIDATE).model, offsets, tags.get("examples_topic_id"))


def load_champion_learner(settings: Settings) -> Any | None:
    if alias_version(settings, CHAMPION) is None:
        return None
    return load(settings, CHAMPION).model


def load_version(settings: Settings, version: str, name: str | None = None) -> RiverPyfunc:
    """One version by number: an alias can move between looking it up and loading it."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name or settings.model_name}/{version}")
    model: RiverPyfunc = loaded.unwrap_python_model()
    return model


def load(settings: Settings, alias: str, name: str | None = None) -> RiverPyfunc:
    """The River pyfunc that `alias` points at, unwrapped from MLflow's loader."""
    name = name or settings.model_name
    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    model: RiverPyfunc = loaded.unwrap_python_model()
    return model
