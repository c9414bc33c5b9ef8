"""`up` is idempotent, restarts only what died, and `down` leaves no process behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rtml.app.processes import KAFKA, MLFLOW, REDIS, alive, free_port
from rtml.app.stack import Stack
from rtml.settings import Settings

pytestmark = pytest.mark.integration


def test_up_reuses_restarts_one_and_down_cleans_up(stack: Stack, tmp_path: Path) -> None:
    # A second stack of its own for Kafka and Redis; the session's MLflow stands in as external.
    own = Stack(
        Settings(
            state_dir=tmp_path,
            kafka_port=free_port(),
            redis_port=free_port(),
            mlflow_tracking_uri=stack.settings.mlflow_uri,
            feature_repo=stack.settings.feature_repo,
        )
    )
    try:
        first = own.up()
        assert first.started == (KAFKA, REDIS) and first.external == (MLFLOW,)
        assert first.feast_applied

        again = own.up()
        assert again.started == () and again.reused == (KAFKA, REDIS)
        assert not again.feast_applied  # the repo and settings did not change

        redis_pid = own.pid(REDIS)
        kafka_pid = own.pid(KAFKA)
        assert redis_pid and kafka_pid
        os.kill(redis_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while own.pid(REDIS) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

        healed = own.up()
        assert healed.started == (REDIS,) and healed.reused == (KAFKA,)
        assert own.pid(KAFKA) == kafka_pid and own.pid(REDIS) not in (None, redis_pid)
        assert all(s.healthy for s in own.status())

        members = own.processes(KAFKA) + own.processes(REDIS)
        assert members
    finally:
        stopped = own.down()
    assert stopped == [KAFKA, REDIS]
    assert not [p for p in members if alive(p)]
    assert [s.healthy for s in own.status()] == [False, False, True]


def _stack_processes() -> set[int]:
    """The embedded services' processes (and `feast apply`) running on this machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if any(name in cmdline for name in (b"tansu", b"redis-server", b"mlflow", b"feast")):
            found.add(int(entry.name))
    return found


def test_a_bench_whose_stack_fails_to_start_leaves_no_process(tmp_path: Path) -> None:
    """`make bench` starts a stack of its own; when that start fails (here, MLflow cannot be
    ready within a 2-second limit), what it started is stopped before its folder goes."""
    import subprocess
    import sys

    before = _stack_processes()
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "processor"],
        cwd=root,
        env={**env, "RTML_UP_TIMEOUT_S": "2", "RTML_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0, done.stdout[-2000:]
    assert "RTML_UP_TIMEOUT_S" in done.stderr, done.stderr[-3000:]
    time.sleep(1)
    assert _stack_processes() - before == set()
