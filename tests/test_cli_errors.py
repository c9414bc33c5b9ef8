"""Errors a user can hit are one line that says what to do, with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtml.app.stack import free_port
from rtml.settings import Settings


def _rtml(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml.app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env | {"RTML_STATE_DIR": str(tmp_path / "state")} | extra


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # librdkafka writes its own connection log lines (%3|...); rtml's answer is the last line
    ours = [line for line in done.stderr.splitlines() if not line.startswith("%")]
    assert ours and ours[-1].startswith("error: "), done.stderr[-3000:]
    return ours[-1]


def test_serve_and_predict_stream_with_mlflow_unreachable(tmp_path: Path) -> None:
    env = _env(tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    for command in ("serve", "predict-stream"):
        line = _one_line(_rtml(env, command, cwd=tmp_path))
        assert "MLflow" in line and "cannot be reached" in line and "rtml up" in line


def test_monitor_with_kafka_unreachable_exits_non_zero(tmp_path: Path) -> None:
    env = _env(tmp_path, RTML_KAFKA_PORT=str(free_port()), RTML_MONITOR_PORT=str(free_port()))
    line = _one_line(_rtml(env, "monitor", cwd=tmp_path))
    assert "Kafka" in line


@pytest.mark.integration
def test_promote_and_rollback_of_what_does_not_exist(settings: Settings, tmp_path: Path) -> None:
    env = _env(tmp_path) | settings.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port")
    env["RTML_MODEL_NAME"] = f"nothing-{free_port()}"
    line = _one_line(_rtml(env, "promote", "99999", cwd=tmp_path))
    assert "no version 99999" in line and "rtml status" in line
    line = _one_line(_rtml(env, "rollback", cwd=tmp_path))
    assert "no earlier champion" in line and "rtml promote VERSION" in line


def test_a_candle_file_unlike_the_settings_is_refused_with_what_to_set(tmp_path: Path) -> None:
    daily = tmp_path / "daily.csv"
    days = [f"2024-01-{d:02d}" for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)]  # weekdays
    daily.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "".join(f"IDX,{d},1,2,0.5,1.5,100\n" for d in days)
    )
    line = _one_line(_rtml(_env(tmp_path), "backfill", "--source", str(daily), cwd=tmp_path))
    assert "RTML_CANDLE_SECONDS=86400" in line and "RTML_GAP_POLICY=skip" in line
