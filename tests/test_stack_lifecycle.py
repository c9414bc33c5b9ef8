"""`up` is idempotent, restarts only what died, and `down` leaves no process behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rtml.app.stack import KAFKA, MLFLOW, REDIS, Stack, _alive, free_port
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
    assert not [p for p in members if _alive(p)]
    assert [s.healthy for s in own.status()] == [False, False, True]
