"""`rtml status`: the stack, rtml's own running services with their health, lag and the version
they serve, and each model's champion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rtml.app.processes import free_port
from rtml.kafka import ensure_topics, make_consumer, make_producer
from rtml.presence import announce, present
from rtml.settings import Settings
from tests.waiting import wait_until


def test_a_service_whose_process_is_gone_is_not_listed_and_its_file_goes(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "services"
    folder.mkdir()
    path = folder / f"features-{gone.pid}.json"
    path.write_text(json.dumps({"name": "features", "pid": gone.pid, "started": 0.0}))
    (folder / "half-written.json").write_text("{")
    assert present(Settings(state_dir=tmp_path)) == []
    assert not path.exists()


@pytest.mark.integration
def test_status_lists_the_running_services_their_lag_and_the_version_served(
    stack_settings: Settings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    # the session stack's state (its Feast registry), a model and an API port of its own
    local = stack_settings.model_copy(
        update={"model_name": f"status-{tag}", "api_port": free_port()}
    )
    topic, group = f"status-{tag}", f"group-{tag}"
    ensure_topics(local, [topic], partitions=1)
    producer = make_producer(local)
    for i in range(5):
        producer.produce(topic, b"%d" % i)
    producer.flush(30)
    consumer = make_consumer(local, group)
    from confluent_kafka import TopicPartition

    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()

    env = local.child_env("state_dir", "kafka_port", "redis_port", "mlflow_port", "api_port")
    env["RTML_MODEL_NAME"] = local.model_name
    announce = (
        "import time; from rtml.presence import announce; from rtml.settings import Settings; "
        f"announce(Settings(), 'features', group={group!r}, topics=({topic!r},)); time.sleep(300)"
    )
    features = subprocess.Popen([sys.executable, "-c", announce], env=env)
    rtml = str(Path(sys.executable).parent / "rtml")
    log = (tmp_path / "serve.log").open("wb")
    api = subprocess.Popen([rtml, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def status() -> str:
        done = subprocess.run(
            [rtml, "status"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        return done.stdout

    try:
        wait_until(
            lambda: "serving" in status() or api.poll() is not None, 120, "the API to answer"
        )
        assert api.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        shown = status()
        lines = {line.split()[0]: line for line in shown.splitlines() if line.strip()}
        assert f"pid {features.pid}" in lines["features"]
        assert f"group {group} lag 3" in lines["features"]  # 5 records, 2 committed
        assert lines["api"].split()[1] == "UP"
        assert f"serving {local.model_name} naive baseline" in lines["api"]
        assert f"model {local.model_name}: champion none" in shown
    finally:
        features.kill()
        features.wait(10)
        api.terminate()
        api.wait(30)
        log.close()
    after = status()
    assert "features" not in after.split() and "no rtml service is running" in after


def test_presence_files_anyone_could_write_are_passed_over(tmp_path: Path) -> None:
    """A forged file must not make `rtml status` signal a process group (pid 0 or -1), crash on
    a wrong type, or read a huge value; the real announcement beside them is listed."""
    settings = Settings(state_dir=tmp_path)
    announce(settings, "api", url="http://127.0.0.1:1")
    folder = tmp_path / "services"
    me = os.getpid()
    hostile = {
        "minus-one": {"name": "features", "pid": -1, "started": 0.0},
        "zero": {"name": "features", "pid": 0, "started": 0.0},
        "text-pid": {"name": "features", "pid": "1", "started": 0.0},
        "text-time": {"name": "features", "pid": me, "started": "yesterday"},
        "future": {"name": "features", "pid": me, "started": 1e300},
        "unknown-key": {"name": "features", "pid": me, "started": 0.0, "cmd": "rm -rf /"},
        "bad-name": {"name": "../../etc", "pid": me, "started": 0.0},
        "nested": {"name": "features", "pid": me, "started": 0.0, "topics": [[["t"] * 50] * 50]},
        "list": [1, 2, 3],
    }
    for stem, body in hostile.items():
        (folder / f"{stem}.json").write_text(json.dumps(body))
    (folder / "huge.json").write_text(
        '{"name": "features", "pid": 5, "topics": ["' + "x" * 2**20 + '"]}'
    )
    listed = present(settings)
    assert [(p.name, p.pid) for p in listed] == [("api", me)]
    assert all((folder / f"{stem}.json").exists() for stem in hostile)  # not ours: left as is
