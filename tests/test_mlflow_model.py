"""The registered champion is an MLflow model like any other: it loads and serves without rtml.

A fresh virtual environment gets only the requirements MLflow recorded for the champion, then
`mlflow.pyfunc.load_model("models:/<name>@champion")` must give the predictions rtml's own
predictor gives on the same rows, and `mlflow models serve` must answer `/invocations`.
These install packages from the package index (or uv's cache).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from rtml import registry
from rtml.app.processes import free_port
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.pipelines.training.models import build_model
from rtml.serving.model_holder import ModelHolder
from rtml.settings import Settings
from tests.venvs import UV, fresh_venv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def _rows(n: int) -> list[dict[str, float]]:
    rng = random.Random(3)
    return [{name: rng.gauss(0, 0.01) for name in FEATURE_NAMES} for _ in range(n)]


@pytest.fixture(scope="module")
def champion(stack_settings: Settings, stack: object) -> Settings:
    """A champion trained as the trainer trains: a River pipeline from `build_model`."""
    local = stack_settings.model_copy(update={"model_name": f"portable-{uuid.uuid4().hex[:6]}"})
    model = build_model("linear")
    for x in _rows(300):
        model.learn_one(x, 0.5 * x["ret_1"] - 0.2 * x["vol_15"])
    version = registry.log_version(
        local, model, feature_names=FEATURE_NAMES, metadata={"trained_through": 1.0e9}
    )
    registry.promote(local, version)
    return local


@pytest.fixture(scope="module")
def clean_venv(champion: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding only what MLflow recorded for the champion."""
    uri = f"models:/{champion.model_name}@{registry.CHAMPION}"
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            uri, dst_path=str(tmp_path_factory.mktemp("model")), tracking_uri=champion.mlflow_uri
        )
    )
    requirements = model_dir / "requirements.txt"
    assert "river==" in requirements.read_text()
    venv = tmp_path_factory.mktemp("clean") / "venv"
    fresh_venv(venv, "-r", str(requirements))
    return venv


def _clean_env(settings: Settings, venv: Path) -> dict[str, str]:
    """No rtml anywhere: not installed in the venv, not on the path, not in the environment."""
    tools = venv.parent / "tools"
    tools.mkdir(exist_ok=True)
    if not (tools / "uv").exists():
        (tools / "uv").symlink_to(UV)
    base = Path(getattr(sys, "_base_executable", sys.executable)).parent
    # the machine's own settings (certificates, package indexes, proxies) stay
    leaks = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")
    keep = {k: v for k, v in os.environ.items() if k not in leaks and not k.startswith("RTML_")}
    return keep | {
        "PATH": os.pathsep.join([str(venv / "bin"), str(tools), str(base), "/usr/bin", "/bin"]),
        "MLFLOW_TRACKING_URI": settings.mlflow_uri,
        "PYTHONNOUSERSITE": "1",
    }


LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow.pyfunc
import pandas as pd
assert importlib.util.find_spec("rtml") is None, "rtml must not be importable here"
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = json.loads(sys.stdin.read())
print(json.dumps([float(p) for p in model.predict(pd.DataFrame(rows))]))
"""


def test_the_champion_loads_without_rtml_and_predicts_what_the_predictor_serves(
    champion: Settings, clean_venv: Path, tmp_path: Path
) -> None:
    rows = _rows(25)
    holder = ModelHolder(champion)
    assert holder.refresh() and holder.current is not None
    assert holder.current.trained_through == 1.0e9  # metadata travels inside the model
    served = [holder.current.learner.predict_row(row) for row in rows]

    script = tmp_path / "load.py"
    script.write_text(LOAD_AND_PREDICT)
    done = subprocess.run(
        [
            str(clean_venv / "bin" / "python"),
            str(script),
            f"models:/{champion.model_name}@{registry.CHAMPION}",
        ],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        env=_clean_env(champion, clean_venv),
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == served


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(
    champion: Settings, clean_venv: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            str(clean_venv / "bin" / "mlflow"),
            "models",
            "serve",
            "--env-manager",
            "uv",
            "-m",
            f"models:/{champion.model_name}@{registry.CHAMPION}",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_clean_env(champion, clean_venv) | {"MLFLOW_ENV_ROOT": str(tmp_path / "envs")},
        cwd=tmp_path,
        start_new_session=True,
    )
    rows = _rows(5)
    body = json.dumps({"dataframe_records": rows}).encode()
    answer = None
    try:
        deadline = time.monotonic() + 900
        while answer is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            if time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not answer within 900 s")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(1.0)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        shutil.rmtree(tmp_path / "envs", ignore_errors=True)
    holder = ModelHolder(champion)
    holder.refresh()
    assert holder.current is not None
    assert answer["predictions"] == [holder.current.learner.predict_row(r) for r in rows]
