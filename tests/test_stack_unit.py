"""Stack logic that needs no services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtml import feast_config
from rtml.app.processes import KAFKA, MLFLOW, REDIS, PortTaken, alive, free_port, port_is_free
from rtml.app.stack import Stack
from rtml.errors import ServiceError
from rtml.settings import Settings


def test_alive_sees_running_and_zombie_processes() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(proc.pid)
    finally:
        proc.kill()
    # killed but not reaped yet: a zombie, which must count as dead
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    assert not alive(proc.pid)
    proc.wait()
    assert not alive(proc.pid)


def test_port_in_use_is_reported_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        stack = Stack(Settings(state_dir=tmp_path, redis_port=port))
        with pytest.raises(ServiceError, match="RTML_REDIS_PORT"):
            stack._start(REDIS)


def test_external_services_are_not_managed(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap_servers="kafka.example:9092",
        mlflow_tracking_uri="http://mlflow.example:5000",
    )
    stack = Stack(settings)
    assert stack.external(KAFKA) and stack.external(MLFLOW) and not stack.external(REDIS)
    assert stack.address(KAFKA) == "kafka.example:9092"
    assert stack.down() == []


def test_stale_pid_file_is_not_a_running_service(tmp_path: Path) -> None:
    stack = Stack(Settings(state_dir=tmp_path))
    stack.pid_file(REDIS).parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stack.pid_file(REDIS).write_text(f'{{"pid": {proc.pid}, "argv": []}}')
    assert stack.pid(REDIS) is None


def test_feast_env_follows_settings(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, redis_port=7777)
    env = feast_config.feast_env(settings)
    assert env["RTML_STATE_DIR"] == str(tmp_path.resolve())
    assert env["FEAST_FS_YAML_FILE_PATH"] == str(
        tmp_path.resolve() / "feast" / "feature_store.yaml"
    )
    config = yaml.safe_load(feast_config.feast_yaml(settings))
    assert config["online_store"]["connection_string"].startswith("127.0.0.1:7777,socket_timeout=")
    assert config["registry"] == str(tmp_path.resolve() / "feast" / "registry.db")
    # the repo's own file is the same, with the embedded stack's defaults
    repo = yaml.safe_load((settings.feature_repo / "feature_store.yaml").read_text())
    defaults = yaml.safe_load(feast_config.feast_yaml(Settings(state_dir=Path(".rtml"))))
    assert repo.keys() == defaults.keys()
    assert {k: v for k, v in repo.items() if k != "registry"} == {
        k: v for k, v in defaults.items() if k != "registry"
    }
    assert repo["registry"] == "../.rtml/feast/registry.db"


def test_settings_survive_the_trip_through_a_child_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = Settings(
        state_dir=tmp_path,
        symbols=("A/USD", "B/USD"),
        shards={"a": ("A/USD",)},
        kafka_port=9,
        api_access_log=False,
        checkpoint_interval_s=0.5,
    )
    names = (
        "state_dir",
        "symbols",
        "shards",
        "kafka_port",
        "api_access_log",
        "checkpoint_interval_s",
    )
    for key, value in given.as_env(*names).items():
        monkeypatch.setenv(key, value)
    child = Settings(_env_file=None)  # type: ignore[call-arg]
    for name in names:
        assert getattr(child, name) == getattr(given, name), name


def test_free_port_never_hands_out_one_port_twice() -> None:
    # 400 draws from ~12,000 ports would repeat one with near certainty if drawn independently
    ports = [free_port() for _ in range(400)]
    assert len(set(ports)) == len(ports)


@pytest.mark.parametrize("repick", [False, True])
def test_a_port_taken_before_the_service_binds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repick: bool
) -> None:
    """Another process takes the port between rtml's check and the service's bind (a real
    Redis fails to bind it). A user's port is reported with the setting to change; a port rtml
    picked itself is replaced, and the stack's settings follow."""
    import rtml.app.stack as stack_module

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        real = stack_module.port_is_free
        # the check passes (the race), so Redis itself meets the taken port
        monkeypatch.setattr(
            stack_module, "port_is_free", lambda host, port: port == taken or real(host, port)
        )
        stack = Stack(Settings(state_dir=tmp_path, redis_port=taken), repick_ports=repick)
        try:
            if not repick:
                with pytest.raises(PortTaken, match=f"port {taken} .*RTML_REDIS_PORT"):
                    stack.start_service(REDIS, timeout=30)
                return
            stack.start_service(REDIS, timeout=30)
            assert stack.settings.redis_port != taken
            assert stack.healthy(REDIS)
            assert "address already in use" in stack.log_file(REDIS).read_text().lower()
        finally:
            stack.down()


def test_a_service_that_exits_while_starting_says_how_and_shows_only_its_own_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log file is shared by every run of the service: an earlier run's "ready" shown
    beside a start that failed told the wrong story."""
    stack = Stack(Settings(state_dir=tmp_path, redis_port=free_port()))
    stack.log_file(REDIS).parent.mkdir(parents=True)
    stack.log_file(REDIS).write_text("* Ready to accept connections tcp\n")
    script = "import sys; print('Fatal error loading the DB', flush=True); sys.exit(3)"
    monkeypatch.setattr(stack, "command", lambda name: [sys.executable, "-c", script])
    with pytest.raises(ServiceError) as failed:
        stack.start_service(REDIS, timeout=30)
    message = str(failed.value)
    assert "exit status 3" in message and "Fatal error loading the DB" in message
    assert "Ready to accept" not in message
