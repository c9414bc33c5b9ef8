"""`rtml demo`: the whole loop on the embedded stack, every component in its own process.

Start the stack, backfill a history into the offline store, then run the trainer (its warm start
is the initial fit), the feature pipeline, the HTTP predictor, the streaming predictor, the
monitor and, last, the feed. A status line every few seconds shows what the system learned and
serves; at the end the served predictions are scored against what the initial fit alone would
have predicted on the same examples, and against the naive baseline.

Each demo run uses its own topics (`demo<run>.`) and its own registered model
(`rtml-demo-<run>`), so runs never read each other's records or checkpoints.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtml import checkpoints, registry
from rtml import feature_store as fs
from rtml.app.children import CHILD_FIELDS, SERVICES, Child, Children
from rtml.app.scores import Evaluation, evaluate
from rtml.errors import ServiceError
from rtml.pipelines.features.targets import target
from rtml.pipelines.market.files import AS_IS, Reading
from rtml.settings import Settings

INITIAL = "initial"
"""The alias of the demo's initial fit."""


MAX_DEMO_SYMBOLS = 200


def own_stack(settings: Settings, folder: Path, keep_ports: bool = False) -> Settings:
    """`settings` for a stack of its own in `folder`, on free ports: a replay of a file starts
    from a clean split every time, and never mixes with another run's history. With
    `keep_ports`, the API and the dashboard keep the user's ports when they are free."""
    from rtml.app.processes import free_port, port_is_free

    def port(wanted: int) -> int:
        return wanted if keep_ports and port_is_free(settings.bind_host, wanted) else free_port()

    return settings.model_copy(
        update={
            "state_dir": folder,
            "kafka_port": free_port(),
            "redis_port": free_port(),
            "mlflow_port": free_port(),
            "api_port": port(settings.api_port),
            "monitor_port": port(settings.monitor_port),
            "kafka_bootstrap_servers": None,
            "redis_url": None,
            "mlflow_tracking_uri": None,
        }
    )


def _span(versions: list[int]) -> str:
    """The champions a demo served, short enough for one line (all are in the MLflow UI).

    >>> _span([0, 4]), _span([1, 4, 7, 9])
    ('baseline, v4', '4 versions, v1 ... v9')
    """
    names = [f"v{v}" if v else "baseline" for v in versions]
    if len(names) <= 3:
        return ", ".join(names) or "none"
    return f"{len(names)} versions, {names[0]} ... {names[-1]}"


def _progress_in(log: Path) -> str | None:
    """The newest progress line in a child's log: tqdm rewrites its bar with carriage
    returns, so the last one of the log's tail (`warm start 1/1:  45%|...| 9000/20000`)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    parts = tail.replace("\r", "\n").split("\n")
    bars = [part.strip() for part in parts if re.match(r"\s*warm start \d+/\d+:", part)]
    if not bars:
        return None
    name, _, rest = bars[-1].partition(":")
    done = rest.split("|")[-1].split("[")[0].strip() if "|" in rest else rest.strip()
    percent = rest.split("|")[0].strip() if "|" in rest else ""
    return f"{name}: {percent} {done}".strip()


@dataclass(frozen=True)
class DemoRun:
    """What a demo replays and how fast, and how often it reports."""

    source: str = "synthetic"  # or a replay file
    days: float = 2.0  # of synthetic history to backfill
    speed: float = 600.0  # times real time
    seed: int = 1
    checkpoint_interval_s: float = 2.0
    status_every: float = 5.0
    register_interval_s: float | None = None  # RTML_REGISTER_INTERVAL_S's when None
    reading: Reading | None = None  # how a replay file is read
    # the stack's ports in the settings were picked by `own_stack`: a service whose port
    # another process took first is started on a new one
    own_ports: bool = False


class Demo:
    def __init__(
        self,
        settings: Settings,
        run: DemoRun = DemoRun(),
        out: Callable[[str], None] = print,
    ) -> None:
        source, reading = run.source, run.reading
        register_interval_s = run.register_interval_s
        self.own_ports = run.own_ports
        self.run_id = time.strftime("%Y%m%d%H%M%S")
        self.source_name = source
        self.reading = reading or AS_IS
        self._tables: dict[Path, Any] = {}
        """The replay file's column names for rtml's (`ts` -> `Date`), as the feed takes them."""
        self.settings = settings.model_copy(
            update={
                "topic_prefix": f"demo{self.run_id}.",
                "model_name": f"rtml-demo-{self.run_id}",
                "checkpoint_interval_s": run.checkpoint_interval_s,
                "api_access_log": False,
                # how often a version that passes the gate is registered; RTML_'s by default
                "register_interval_s": register_interval_s or settings.register_interval_s,
            }
        )
        self.source, self.days, self.speed, self.seed = source, run.days, run.speed, run.seed
        self.status_every = run.status_every
        self.out = out
        self.children = Children(self.settings.state / "logs")
        self.rtml = str(Path(sys.executable).parent / "rtml")
        self.first_champion: str | None = None
        self.static: Any = None
        self.stream_start: float | None = None
        """Event time where the stored history ends and the demo's stream begins."""
        self.stopped_in: dict[str, float] = {}
        self.started_at = math.nan
        # (scored examples, examples the trainer checkpointed), and since when
        self._joined: object = None
        self._joined_at = math.nan

    # -- processes ------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        return self.settings.child_env(*CHILD_FIELDS) | {"PYTHONUNBUFFERED": "1"}

    def spawn(self, name: str, args: list[str]) -> Child:
        return self.children.spawn(name, [self.rtml, *args], self.child_env())

    def check_children(self) -> None:
        self.children.check()

    def stop(self, timeout: float = 15.0) -> dict[str, float]:
        """SIGTERM each child, the feed first; returns how long each took to exit."""
        self.stopped_in = self.children.stop(timeout, self.out)
        return self.stopped_in

    # -- the run --------------------------------------------------------------------------

    def _has_history(self) -> bool:
        return fs.history_end(self.settings)[0] is not None

    def prepare(self) -> None:
        from rtml.app.stack import Stack

        self.check_source()
        self.out("== starting the embedded stack (Kafka-API broker, Redis, MLflow; feast apply)")
        stack = Stack(self.settings, repick_ports=self.own_ports)
        stack.up(progress=self.out)
        self.settings = stack.settings  # the ports the services listen on
        if self.source != "synthetic":
            self.take_symbols(Path(self.source))
        if self._has_history():
            self.out("== the offline store already has a history: no backfill")
            return
        if self.source == "synthetic":
            self.out(f"== backfilling {self.days:g} days of synthetic 1-minute candles")
            args = ["backfill", "--days", str(self.days), "--seed", str(self.seed + 1000)]
        else:
            history, stream = self.split_replay(Path(self.source))
            self.out(f"== backfilling the first half of {self.source}; the feed replays the rest")
            args = ["backfill", "--source", str(history)]
            self.source = str(stream)
        subprocess.run([self.rtml, *args], env=self.child_env(), check=True)

    def _read(self, path: Path) -> Any:
        """The replay file's rows with rtml's column names, in event time (`files.Table`)."""
        from rtml.pipelines.market.files import read_table

        if path not in self._tables:
            self._tables[path] = read_table(path, self.reading, say=lambda m: self.out(f"   {m}"))
        return self._tables[path]

    def check_source(self) -> None:
        """A replay file is readable, holds trades or candles, and has rows: said before
        anything starts."""
        from rtml.errors import ConfigError

        if self.source == "synthetic":
            return
        path = Path(self.source)
        if path.is_dir():
            raise ConfigError(
                f"{path} is a folder: the demo replays one file (half of it as history); "
                "`rtml backfill --source` and `rtml feed --source` replay a folder of files"
            )
        frame = self._read(path).frame
        if len(frame) < 4:
            raise ConfigError(f"{path} has {len(frame)} rows: too few to learn from")

    def take_symbols(self, path: Path) -> None:
        """Serve what the replay file holds: its symbols (the pipeline, trainer and predictors
        refuse symbols that are not configured) and, for candles, their length and sessions."""
        from rtml.pipelines.market.sessions import profile_of

        table = self._read(path)
        frame = table.frame
        profile = profile_of(frame, table.preset.gap_policy) if table.kind == "candles" else None
        if profile is not None:
            # a gap policy the user set (--gap-policy, RTML_GAP_POLICY) wins over the file's
            chosen = "gap_policy" in self.settings.model_fields_set
            policy = self.settings.gap_policy if chosen else profile.gap_policy
            update = {"candle_seconds": profile.seconds, "gap_policy": policy}
            self.out(
                f"   {path.name}: {profile.seconds} s candles, gap policy {policy} ("
                + ("chosen by the user" if chosen else profile.reason)
                + ")"
            )
            self.settings = self.settings.model_copy(update=update)
        symbols = tuple(sorted(str(s) for s in frame["symbol"].dropna().unique()))
        if len(symbols) > MAX_DEMO_SYMBOLS:
            raise ServiceError(
                f"{path} holds {len(symbols)} symbols; the demo serves at most "
                f"{MAX_DEMO_SYMBOLS}: filter the file first"
            )
        if symbols and set(symbols) != set(self.settings.symbols):
            self.out(f"   symbols from {path.name}: {', '.join(symbols)}")
            self.settings = self.settings.model_copy(update={"symbols": symbols})

    def split_replay(self, path: Path) -> tuple[Path, Path]:
        """The replay file's first half in event time as history, the rest as the stream,
        both with rtml's column names (a file written newest first splits the same way)."""
        import pandas as pd

        from rtml.pipelines.market.files import file_kind

        frame = self._read(path).frame.drop(columns="_start")
        half = len(frame) // 2
        folder = self.settings.state / f"demo-{self.run_id}"
        folder.mkdir(parents=True, exist_ok=True)
        # written as rtml writes them, whatever the user's file was named (`.CSV.GZ`, `.txt`)
        parquet = file_kind(path) in ("parquet", "arrow")
        suffix = ".parquet" if parquet else ".csv"
        parts = (folder / f"history{suffix}", folder / f"stream{suffix}")
        for part, rows in zip(parts, (frame.iloc[:half], frame.iloc[half:]), strict=True):
            if parquet:
                rows.to_parquet(part, index=False)
            else:
                pd.DataFrame(rows).to_csv(part, index=False)
        return parts

    def start(self) -> None:
        self.out(f"== starting the services (logs: {self.settings.state / 'logs'}/demo-*.log)")
        for name, args in SERVICES:
            self.spawn(name, args)
        self.out("== waiting for the initial fit (the trainer's warm start) to be registered")
        self.first_champion = self.wait_for_first_version()
        if registry.alias_version(self.settings, registry.CHAMPION) is None:
            self.out(
                f"   the gate did not promote version {self.first_champion}: the predictors "
                "serve the naive baseline until a version beats it"
            )
        # the initial fit, kept as the static model to compare with (the alias keeps it
        # from being pruned, and names it in the MLflow UI)
        registry.client(self.settings).set_registered_model_alias(
            self.settings.model_name, INITIAL, self.first_champion
        )
        self.static = registry.load_version(self.settings, self.first_champion).model
        s = self.settings
        self.out(
            f"   dashboard  http://{s.monitor_host}:{s.monitor_port}/\n"
            f"   API        http://{s.api_host}:{s.api_port}/predict/{s.symbols[0]}\n"
            f"   MLflow UI  {s.mlflow_uri}  (model {s.model_name})"
        )
        self.stream_start, _ = fs.history_end(s)
        args = ["feed", "--source", self.source, "--speed", str(self.speed)]
        if self.source == "synthetic":  # prices and event time continue the stored history
            args += ["--seed", str(self.seed), "--continue"]
        self.spawn("feed", args)
        self.started_at = time.monotonic()

    def wait_for_first_version(self, timeout: float = 300.0) -> str:
        """The initial fit's version, once registered (champion or not: the gate decides);
        meanwhile, every 10 s, the warm start's progress as the trainer logs it."""
        began = said = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            self.check_children()
            for alias in (registry.CHAMPION, registry.CANDIDATE):
                version = registry.alias_version(self.settings, alias)
                if version is not None:
                    return version
            if time.monotonic() - said >= 10.0:
                said = time.monotonic()
                trainer = next((c for c in self.children if c.name == "trainer"), None)
                where = _progress_in(trainer.log) if trainer is not None else None
                self.out(f"   {where or 'the trainer is starting'} ({said - began:.0f} s)")
            time.sleep(1.0)
        raise ServiceError(
            f"no model was registered in {timeout:.0f} s; see {self.settings.state / 'logs'}"
            "/demo-trainer.log"
        )

    def monitor_state(self) -> dict[str, Any]:
        s = self.settings
        request = urllib.request.Request(f"http://{s.monitor_host}:{s.monitor_port}/api/state")
        if s.api_token is not None:
            request.add_header("Authorization", f"Bearer {s.api_token.get_secret_value()}")
        with urllib.request.urlopen(request, timeout=2) as response:
            state: dict[str, Any] = json.loads(response.read())
        return state

    def status_line(self) -> str:
        elapsed = time.monotonic() - self.started_at
        parts = [f"[{elapsed:5.0f} s]"]
        learned = checkpoints.learned(self.settings)
        if learned is not None:
            parts.append(f"learned {learned:,}")
        champion = registry.alias_version(self.settings, registry.CHAMPION)
        parts.append(f"champion v{champion}" if champion else "serving the naive baseline")
        try:
            state = self.monitor_state()
        except OSError:
            return " | ".join([*parts, "monitor not answering yet"])
        served, base = state["served_mae"], state["baseline_mae"]
        if served is not None and base is not None:
            parts.append(f"rolling MAE served {served:.5f} vs naive {base:.5f}")
        if state["staleness"]:  # event time between a prediction and the model's newest label
            lag = state["staleness"][-1][1]
            wall = f", {lag / self.speed:.1f} s at {self.speed:g}x" if self.speed > 0 else ""
            parts.append(f"model lag {lag / 60:.0f} min{wall}")
        parts.append(f"scored {state['counts']['joined']:,}")
        return " | ".join(parts)

    def done(self, settle_s: float = 10.0) -> bool:
        """The feed has replayed everything, and for `settle_s` nothing new was scored and the
        trainer checkpointed nothing new (in event time it decides on every example, however
        far behind the feed it runs)."""
        feed = next((c for c in self.children if c.name == "feed"), None)
        if feed is None or feed.proc.poll() is None:
            return False
        try:
            progress = (
                self.monitor_state()["counts"]["joined"],
                checkpoints.learned(self.settings),
            )
        except OSError:
            return False
        now = time.monotonic()
        if progress != self._joined:
            self._joined, self._joined_at = progress, now
        return now - self._joined_at >= settle_s

    def run(self, duration: float | None, until_done: bool = False) -> Evaluation:
        """Prepare, start, print status until `duration` (or Ctrl-C, or, with `until_done`,
        the end of the replay), stop, score."""
        self.out(f"rtml demo {self.run_id}: topics {self.settings.topic_prefix}*")
        self.prepare()
        self._joined, self._joined_at = None, time.monotonic()
        try:
            self.start()
            next_status = time.monotonic()
            while duration is None or time.monotonic() - self.started_at < duration:
                self.check_children()
                if until_done and self.done():
                    break
                if time.monotonic() >= next_status:
                    try:
                        self.out(self.status_line())
                    except Exception as exc:  # a service is away for a moment: say so, go on
                        self.out(f"   status unavailable: {exc}")
                    next_status += self.status_every
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.out("\n== interrupted")
        finally:
            self.out("== stopping the services")
            self.stop()
        if self.static is None:
            raise ServiceError("the demo stopped before the initial fit was registered")
        return evaluate(self.settings, self.static)

    def report(self, ev: Evaluation) -> list[str]:
        s = ev.summary()
        versions = list(dict.fromkeys(ev.versions))
        label = target(self.settings.target)
        lines = [
            f"== summary of demo {self.run_id} (target: {label.name}, H={self.settings.horizon})",
            f"   scored examples        {int(s['examples']):,}",
            f"   champions served       {_span(versions)}",
            f"   MAE served (champion at the time, or naive)  {s['served_mae']:.6f}",
            f"   MAE static (initial fit v{self.first_champion} only)     {s['static_mae']:.6f}",
            f"   MAE naive                                    {s['naive_mae']:.6f}",
        ]
        if ev.versions:
            lines.append(
                f"   served by a learned model  {s['model_share']:.0%} of the examples "
                "(the naive forecast the rest: no version had beaten it)"
            )
        if math.isfinite(s["served_mae"]) and s["naive_mae"] and s["static_mae"]:
            lines.append(
                f"   served / naive {s['served_mae'] / s['naive_mae']:.3f}, served / static "
                f"{s['served_mae'] / s['static_mae']:.3f} (below 1: served erred less)"
            )
        if ev.refused:
            left_out = ", ".join(f"{kind} {n:,}" for kind, n in sorted(ev.refused.items()))
            lines.append(f"   records left out       {left_out}")
        return lines
