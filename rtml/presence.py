"""Where rtml's running services say they are, for `rtml status`: one small file per process
under the state directory, written at start and removed at exit. A file whose process is gone
(kill -9) is passed over, and removed by the next reader."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rtml.settings import Settings


@dataclass(frozen=True)
class Presence:
    name: str  # api, monitor, features, trainer, predict-stream
    pid: int
    started: float
    url: str | None = None  # where it answers HTTP (/healthz)
    group: str | None = None  # its consumer group, for its lag
    topics: tuple[str, ...] = field(default_factory=tuple)  # what the group reads
    model: str | None = None


def _folder(settings: Settings) -> Path:
    return settings.state / "services"


def announce(
    settings: Settings,
    name: str,
    *,
    url: str | None = None,
    group: str | None = None,
    topics: tuple[str, ...] = (),
    model: str | None = None,
) -> Path:
    """Say this process runs service `name` until it exits."""
    me = Presence(name, os.getpid(), time.time(), url, group, topics, model)
    folder = _folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{me.pid}.json"
    path.write_text(json.dumps(asdict(me)))
    atexit.register(withdraw, path)
    return path


def withdraw(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def present(settings: Settings) -> list[Presence]:
    """The services running now, by name and start."""
    found = []
    for path in sorted(_folder(settings).glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            entry = Presence(**{**raw, "topics": tuple(raw.get("topics", ()))})
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        if _alive(entry.pid):
            found.append(entry)
        else:
            withdraw(path)
    return sorted(found, key=lambda p: (p.name, p.started))
