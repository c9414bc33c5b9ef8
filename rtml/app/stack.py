"""The embedded single-machine stack: a Kafka-API broker, Redis and an MLflow server, no Docker.

`up` starts what is not running (or reuses what is healthy), applies the Feast repo and creates
the topics; `down` stops only what `up` started; `status` reports each service. All state,
logs and pid files live under the settings' state directory. A service whose address is given
in the settings is external: it is health-checked but never started or stopped here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rtml import feast_config
from rtml.app.processes import (
    BIND_FAILED,
    KAFKA,
    MLFLOW,
    REDIS,
    SERVICES,
    PortTaken,
    ServiceStatus,
    UpReport,
    alive,
    free_port,
    group_members,
    kafka_healthy,
    port_is_free,
    service_command,
)
from rtml.errors import ServiceError
from rtml.settings import Settings

log = logging.getLogger(__name__)

SAY_EVERY_S = 10.0
"""A wait says what it waits for at least this often."""


class Stack:
    """Manages the embedded services described by `settings`."""

    def __init__(self, settings: Settings, repick_ports: bool = False) -> None:
        """With `repick_ports`, the ports in `settings` were picked by rtml (`free_port`), not
        by the user: a service whose port another process took in the meantime is started on
        a new one, and `self.settings` then holds the ports the services listen on."""
        self.settings = settings
        self.state = settings.state
        self.repick_ports = repick_ports
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._log_offset: dict[str, int] = {}
        self._progress: Callable[[str], None] = log.info  # `up`'s, for what it waits on

    # Paths -------------------------------------------------------------------------------
    def log_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    # Descriptions ------------------------------------------------------------------------
    def address(self, name: str) -> str:
        s = self.settings
        return {KAFKA: s.kafka_bootstrap, REDIS: s.redis, MLFLOW: s.mlflow_uri}[name]

    def external(self, name: str) -> bool:
        s = self.settings
        return {KAFKA: s.kafka_external, REDIS: s.redis_external, MLFLOW: s.mlflow_external}[name]

    def port(self, name: str) -> int:
        s = self.settings
        return {KAFKA: s.kafka_port, REDIS: s.redis_port, MLFLOW: s.mlflow_port}[name]

    def command(self, name: str) -> list[str]:
        return service_command(name, self.settings.bind_host, self.port(name), self.state)

    def healthy(self, name: str) -> bool:
        address = self.address(name)
        try:
            if name == KAFKA:
                return kafka_healthy(self.settings)
            if name == REDIS:
                import redis

                return bool(redis.Redis.from_url(address, socket_timeout=1).ping())
            import httpx

            return httpx.get(f"{address}/health", timeout=1.0).status_code == 200
        except Exception:
            return False

    # Processes ---------------------------------------------------------------------------
    def _recorded_pid(self, name: str) -> int | None:
        try:
            return int(json.loads(self.pid_file(name).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def pid(self, name: str) -> int | None:
        """The pid of the service `up` started, if it is still running."""
        pid = self._recorded_pid(name)
        return pid if pid is not None and alive(pid) else None

    def processes(self, name: str) -> list[int]:
        """Every live process of the service `up` started (its whole process group)."""
        pid = self.pid(name)
        if pid is None:
            return []
        return [p for p in group_members(pid) if alive(p)]

    def stop_service(self, name: str) -> bool:
        """Stop one embedded service; True if it was running."""
        return self._stop(name)

    def start_service(self, name: str, timeout: float | None = None) -> None:
        """Start one embedded service and wait until it is healthy.

        Unlike `up`, it creates no topics and applies no feature repo: the broker comes back
        as a restarted embedded broker does, empty.
        """
        self._start(name)
        self._wait_started(name, time.monotonic() + (timeout or self.settings.up_timeout_s))

    def _start(self, name: str) -> None:
        host, port = self.settings.bind_host, self.port(name)
        if self.repick_ports and not port_is_free(host, port):
            self._repick(name)
            port = self.port(name)
        deadline = time.monotonic() + 5  # a port held by a process that is still exiting
        while not port_is_free(host, port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not port_is_free(host, port):
            raise ServiceError(self._taken_message(name))
        for sub in ("logs", "run", name):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        log_file = self.log_file(name)
        self._log_offset[name] = log_file.stat().st_size if log_file.exists() else 0
        argv = self.command(name)
        # MLflow's GenAI job runner starts eight more processes that rtml does not use.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_file(name).open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state / name,
                env=env,
            )
        self._children[name] = proc
        self.pid_file(name).write_text(json.dumps({"pid": proc.pid, "argv": argv}))
        log.debug("started %s (pid %d), log %s", name, proc.pid, self.log_file(name))

    def _taken_message(self, name: str) -> str:
        var = f"RTML_{name.upper()}_PORT"
        return (
            f"{name}: port {self.port(name)} on {self.settings.bind_host} is taken by a process "
            f"rtml did not start. Stop it, or choose another port with {var}."
        )

    def _repick(self, name: str) -> None:
        taken = self.port(name)
        self.settings = self.settings.model_copy(
            update={f"{name}_port": free_port(self.settings.bind_host)}
        )
        log.warning("%s: port %d was taken; using %d", name, taken, self.port(name))

    def _wait_started(self, name: str, deadline: float) -> None:
        """Wait until `name` is healthy; with `repick_ports`, start it again on a new port
        (a few times) if another process took its port before it could bind it."""
        for attempt in range(3):
            try:
                self._wait_healthy(name, deadline)
                return
            except PortTaken:
                if not self.repick_ports or attempt == 2:
                    raise
                self._stop(name)
                self._repick(name)
                self._start(name)

    def _wait_healthy(self, name: str, deadline: float) -> None:
        began = said = time.monotonic()
        while time.monotonic() < deadline:
            if self.healthy(name):
                return
            if time.monotonic() - said >= SAY_EVERY_S:  # no silent minute
                said = time.monotonic()
                self._progress(
                    f"   still waiting for {name} at {self.address(name)} "
                    f"({said - began:.0f} s of at most {deadline - began:.0f})"
                )
            if not self.external(name) and self.pid(name) is None:
                if BIND_FAILED in self._since_start(name).lower():
                    raise PortTaken(name, self.port(name), self._taken_message(name))
                raise ServiceError(
                    f"{name} exited while starting ({self._exit_status(name)}); "
                    f"see {self.log_file(name)}:\n" + self._logged_since_start(name)
                )
            time.sleep(0.2)
        where = "" if self.external(name) else f"; see {self.log_file(name)}"
        raise ServiceError(
            f"{name} at {self.address(name)} was not healthy within "
            f"{self.settings.up_timeout_s:.0f} s{where}. Raise RTML_UP_TIMEOUT_S on a slow machine."
        )

    def _since_start(self, name: str) -> str:
        """What `name` logged since it was last started here."""
        try:
            with self.log_file(name).open("rb") as f:
                f.seek(self._log_offset.get(name, 0))
                return f.read(1 << 20).decode(errors="replace")
        except OSError:
            return ""

    def _exit_status(self, name: str) -> str:
        """How the process this stack last started for `name` ended, as far as it knows."""
        proc = self._children.get(name)
        code = None if proc is None else proc.poll()
        if code is None:
            return "its exit status is unknown: it was not started by this process"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def _logged_since_start(self, name: str, lines: int = 15) -> str:
        """The last lines `name` logged since it was started here; an earlier run's lines
        (such as its "ready") would tell a story about another process."""
        since = self._since_start(name).splitlines()
        if not since:
            return "(it logged nothing since it was started)"
        return "\n".join(since[-lines:])

    def _tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _stop(self, name: str, timeout: float = 10.0) -> bool:
        pid = self.pid(name)
        stopped = False
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                self._reap(name)
                time.sleep(0.1)
            stopped = True
        # A leader that died (crash, SIGKILL) can leave children behind in its group that
        # still hold its port, such as Redis's append-only-file rewriter: end them too. Only
        # processes working in this service's state directory count, so a stale pid file
        # whose number was reused never touches anyone else's processes.
        group = self._recorded_pid(name)
        if group is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = [p for p in group_members(group) if alive(p) and self._owns(name, p)]
                if not left:
                    break
                for member in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(member, signal.SIGKILL)
                time.sleep(0.05)
        self._reap(name)
        self.pid_file(name).unlink(missing_ok=True)
        return stopped

    def _owns(self, name: str, pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/cwd").resolve() == (self.state / name).resolve()
        except OSError:
            return False

    def _reap(self, name: str) -> None:
        proc = self._children.get(name)
        if proc is not None and proc.poll() is not None:
            self._children.pop(name)

    # Feast -------------------------------------------------------------------------------
    def _feast_fingerprint(self) -> str:
        digest = hashlib.sha256()
        repo = self.settings.feature_repo
        for path in sorted([*repo.glob("*.py"), *repo.glob("*.yaml")]):
            digest.update(path.name.encode() + path.read_bytes())
        # the feature views' schema is read from the feature definitions' module
        spec = importlib.util.find_spec("rtml.pipelines.features.indicators")
        if spec is not None and spec.origin:
            digest.update(Path(spec.origin).read_bytes())
        digest.update(feast_config.feast_yaml(self.settings).encode())
        digest.update(json.dumps(feast_config.feast_env(self.settings), sort_keys=True).encode())
        return digest.hexdigest()

    def _feast_stamp(self) -> Path:
        return self.state / "feast" / "applied.sha256"

    def feast_is_current(self) -> bool:
        stamp = self._feast_stamp()
        return (
            self.settings.feast_registry_path.exists()
            and stamp.exists()
            and stamp.read_text() == self._feast_fingerprint()
        )

    def feast_apply(self) -> subprocess.Popen[bytes]:
        """Run `feast apply` on the feature repo with the settings' addresses (non-blocking)."""
        for sub in ("feast", "logs", "offline/features", "offline/targets"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        feast = Path(sys.executable).parent / "feast"
        feast_config.write_feast_yaml(self.settings)
        env = {**os.environ, **feast_config.feast_env(self.settings)}
        with self.log_file("feast").open("ab") as out:
            return subprocess.Popen(
                [str(feast), "-c", str(self.settings.feature_repo), "apply"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def wait_feast(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        began = time.monotonic()
        code = None
        while code is None:
            try:
                code = proc.wait(timeout=max(0.1, min(SAY_EVERY_S, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    proc.kill()
                    raise ServiceError(
                        f"feast apply did not finish within {self.settings.up_timeout_s:.0f} s; "
                        f"see {self.log_file('feast')}. Raise RTML_UP_TIMEOUT_S on a slow machine."
                    ) from None
                self._progress(f"   feast apply still running ({time.monotonic() - began:.0f} s)")
        if code != 0:
            raise ServiceError(
                f"feast apply failed (exit {code}); see {self.log_file('feast')}:\n"
                + self._tail("feast")
            )
        self._feast_stamp().write_text(self._feast_fingerprint())

    # Commands ----------------------------------------------------------------------------
    def up(
        self, progress: Callable[[str], None] = log.info, services: tuple[str, ...] = SERVICES
    ) -> UpReport:
        """Bring `services` up (all by default); Feast needs Redis, topics need Kafka."""
        began = time.monotonic()
        deadline = began + self.settings.up_timeout_s
        self._progress = progress
        started, reused, external = [], [], []
        for name in services:
            if self.external(name):
                external.append(name)
            elif self.pid(name) is not None:
                reused.append(name)
            else:
                self._stop(name)  # clears a stale pid file
                self._start(name)
                started.append(name)
        for name in started:
            progress(f"starting {name} at {self.address(name)} (log: {self.log_file(name)})")

        feast = None
        try:
            if REDIS in services:
                self._wait_started(REDIS, deadline)
                feast = None if self.feast_is_current() else self.feast_apply()
            if KAFKA in services:
                self._wait_started(KAFKA, deadline)
                from rtml.kafka import Topics, ensure_topics

                ensure_topics(self.settings, Topics.of(self.settings).with_dlqs())
            if MLFLOW in services:
                self._wait_started(MLFLOW, deadline)
            if feast is not None:
                progress("applying feature_repo with feast")
                self.wait_feast(feast, deadline)
        except BaseException:  # a start that fails (or Ctrl-C) leaves no `feast apply` behind
            if feast is not None and feast.poll() is None:
                feast.kill()
                feast.wait(10)
            raise
        report = UpReport(
            started=tuple(started),
            reused=tuple(reused),
            external=tuple(external),
            feast_applied=feast is not None,
            seconds=time.monotonic() - began,
        )
        (self.state / "run").mkdir(parents=True, exist_ok=True)
        (self.state / "run" / "up.json").write_text(json.dumps(report.__dict__))
        return report

    def down(self) -> list[str]:
        return [name for name in SERVICES if not self.external(name) and self._stop(name)]

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus(
                name=name,
                address=self.address(name),
                managed=not self.external(name),
                pid=None if self.external(name) else self.pid(name),
                healthy=self.healthy(name),
            )
            for name in SERVICES
        ]

    def last_up(self) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads((self.state / "run" / "up.json").read_text())
        except (OSError, ValueError):
            return None
        return data
