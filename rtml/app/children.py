"""The demo's services, each an `rtml` command in a process of its own, with its own log."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rtml.errors import ServiceError

# what each child gets from the demo's settings; the rest they read as the demo did
CHILD_FIELDS = (
    "state_dir",
    "bind_host",
    "kafka_port",
    "redis_port",
    "mlflow_port",
    "topic_prefix",
    "model_name",
    "symbols",
    "checkpoint_interval_s",
    "register_interval_s",
    "api_access_log",
    "api_port",
    "monitor_port",
    "candle_seconds",
    "gap_policy",
    "target",
    "horizon",
    "checkpoint_every",
    "checkpoint_sync",
    "metrics_window",
    "gate_alpha",
    "keep_versions",
)
# started in this order, stopped in the reverse; the feed starts once a champion serves
SERVICES = (
    ("trainer", ["train"]),
    ("features", ["features"]),
    ("predictor", ["serve"]),
    ("predict-stream", ["predict-stream"]),
    ("monitor", ["monitor"]),
)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Children:
    """The processes started, in order; stopped in the reverse."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Child] = []

    def __iter__(self) -> Iterator[Child]:
        return iter(self.started)

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"demo-{name}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def check(self) -> None:
        """A service that exited (the feed may, once its source ends) stops the demo, with
        the end of its log."""
        for child in self.started:
            code = child.proc.poll()
            if code is not None and not (child.name == "feed" and code == 0):
                tail = child.log.read_text(errors="replace").splitlines()[-15:]
                raise ServiceError(
                    f"{child.name} exited with {code}; its log {child.log} ends:\n"
                    + "\n".join(tail)
                )

    def stop(self, timeout: float, out: Callable[[str], None]) -> dict[str, float]:
        """SIGTERM each child, the feed first; returns how long each took to exit."""
        took: dict[str, float] = {}
        for child in reversed(self.started):  # the feed first, the monitor last
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                if child.name == "feed":
                    time.sleep(2.0)  # let the pipeline and predictors take its last trades
        began = time.monotonic()
        for child in self.started:
            try:
                child.proc.wait(max(0.1, began + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                out(f"{child.name} did not stop in {timeout:.0f} s; killing it")
                child.proc.kill()
                child.proc.wait()
            took[child.name] = time.monotonic() - began
        return took
