"""Where rtml's running services say they are, for `rtml status`: one small file per process
under the state directory, written at start and removed at exit. A file whose process is gone
(kill -9) is passed over, and removed by the next reader."""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from pathlib import Path
from typing import Annotated

import msgspec

from rtml.settings import Settings

MAX_FILE_BYTES = 64 * 1024
"""A presence file is a few hundred bytes; anything larger is not one of rtml's."""

_Text = Annotated[str, msgspec.Meta(max_length=1000)]


class Presence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One running service, as it announced itself. Read back by one schema, so a file that
    anyone could write (a negative pid, a string for a time, a huge or nested value) is
    passed over rather than signalled or printed."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,39}$")]  # api, trainer, ...
    pid: Annotated[int, msgspec.Meta(gt=1, lt=2**22)]  # never 0 or -1: kill(0|-1) is a group
    started: Annotated[float, msgspec.Meta(ge=0, le=1e11)]  # epoch seconds
    url: _Text | None = None  # where it answers HTTP (/healthz)
    group: _Text | None = None  # its consumer group, for its lag
    topics: Annotated[tuple[_Text, ...], msgspec.Meta(max_length=100)] = ()  # what it reads
    model: _Text | None = None


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
    path.write_bytes(msgspec.json.encode(me))
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
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            entry = msgspec.json.decode(path.read_bytes(), type=Presence)
        except (OSError, msgspec.DecodeError):
            continue  # being written, or not ours
        if _alive(entry.pid):
            found.append(entry)
        else:
            withdraw(path)
    return sorted(found, key=lambda p: (p.name, p.started))
