"""The trainer's MLflow run: its params, the records an operator had it skip, its checkpoints."""

from __future__ import annotations

import logging
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import mlflow.pyfunc
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from rtml.errors import ServiceError
from rtml.registry import CHECKPOINT_TAG, TRAINER_TAG, client, typed_experiment
from rtml.settings import Settings

log = logging.getLogger(__name__)


# The trainer's run and its checkpoints ------------------------------------------------------------
def _trainer_run(settings: Settings) -> Any | None:
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TRAINER_TAG}` = '{settings.model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


SKIP_TAG = "rtml.skip"  # run tag: records (`topic[partition]@offset`) the trainer passes over


def trainer_skips(settings: Settings, run_id: str) -> list[str]:
    """The records an operator told this model's trainer to pass over (`rtml skip --trainer`)."""
    value = client(settings).get_run(run_id).data.tags.get(SKIP_TAG, "")
    return [origin for origin in value.split(",") if origin]


def trainer_run_id(settings: Settings) -> str:
    """The id of this model's trainer run; ServiceError if no trainer has run yet."""
    run = _trainer_run(settings)
    if run is None:
        raise ServiceError(
            f"{settings.model_name} has no trainer run yet: start `rtml train` once, or check "
            "RTML_MODEL_NAME and RTML_SHARD"
        )
    return str(run.info.run_id)


def add_trainer_skip(settings: Settings, run_id: str, origin: str) -> bool:
    """Tell the trainer to pass over the record at `origin`; False if it already was told."""
    skips = trainer_skips(settings, run_id)
    if origin in skips:
        return False
    skips.append(origin)
    while len(",".join(skips)) > 5000:  # a tag holds 5,000 characters: the oldest go first
        skips.pop(0)
    client(settings).set_tag(run_id, SKIP_TAG, ",".join(skips))
    return True


def trainer_run(settings: Settings, params: Mapping[str, Any]) -> str:
    """The trainer's run for this model, resumed (status RUNNING) if it exists; returns its id.

    A restarted trainer continues its run: one run per model, whose metrics span restarts.
    `params` are logged when the run is created.
    """
    mlflow_client = client(settings)
    found = _trainer_run(settings)
    if found is not None:
        mlflow_client.update_run(found.info.run_id, status="RUNNING")
        log.info("resuming the trainer run %s", found.info.run_id)
        return str(found.info.run_id)
    run = mlflow_client.create_run(
        typed_experiment(settings),
        run_name=f"trainer {settings.model_name}",
        tags={TRAINER_TAG: settings.model_name},
    )
    mlflow_client.log_batch(
        run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
    )
    return str(run.info.run_id)


def log_params(settings: Settings, run_id: str, params: Mapping[str, str]) -> None:
    """Add `params` to a run; a resumed run that has them with other values keeps its own."""
    try:
        client(settings).log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    except MlflowException as exc:
        log.warning("the run %s keeps the parameters it was started with (%s)", run_id, exc)


def end_trainer_run(settings: Settings, run_id: str) -> None:
    client(settings).set_terminated(run_id, "FINISHED")


def save_checkpoint(
    settings: Settings,
    run_id: str,
    state: Mapping[str, Any],
    slot: str,
    metrics: Mapping[str, float],
    step: int,
) -> str:
    """Upload the trainer's `state` into `slot` of its run, then point the run's tag at it.

    Two slots alternate: the tag moves only once an upload is complete, so a crash mid-upload
    leaves the previous checkpoint in place. Returns the artifact path.
    """
    mlflow_client = client(settings)
    with tempfile.TemporaryDirectory(prefix="rtml-checkpoint-") as tmp:
        path = Path(tmp) / "state.pkl"
        path.write_bytes(pickle.dumps(dict(state)))
        mlflow_client.log_artifact(run_id, str(path), artifact_path=f"checkpoint/{slot}")
    artifact = f"checkpoint/{slot}/state.pkl"
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in metrics.items() if v - v == 0],
        tags=[RunTag(CHECKPOINT_TAG, artifact), RunTag("rtml.learned", str(step))],
    )
    return artifact


class Restored(NamedTuple):
    learner: Any
    offsets: dict[int, int]
    topic_id: str | None  # the `examples` topic's id the offsets belong to
    artifact: str  # where in the trainer's run it was read from


def latest_checkpoint(settings: Settings) -> Restored | None:
    """The newest checkpoint's learner and the offsets to continue from, if there is one."""
    run = _trainer_run(settings)
    artifact = run.data.tags.get(CHECKPOINT_TAG) if run is not None else None
    if run is None or not artifact:
        return None
    with tempfile.TemporaryDirectory(prefix="rtml-checkpoint-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id,
            artifact_path=artifact,
            dst_path=tmp,
            tracking_uri=settings.mlflow_uri,
        )
        state = pickle.loads(Path(local).read_bytes())
    offsets = {int(k): int(v) for k, v in state["offsets"].items()}
    return Restored(state["learner"], offsets, state.get("topic_id"), artifact)


def learned(settings: Settings) -> int | None:
    """How many examples the trainer's newest checkpoint had learned (None: no trainer yet)."""
    run = _trainer_run(settings)
    value = run.data.tags.get("rtml.learned") if run is not None else None
    return int(value) if value else None
