"""What several commands share: where trades come from, how a file is read, the target, signals."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rtml.errors import RtmlError, ServiceError
from rtml.pipelines.features.targets import TARGETS
from rtml.pipelines.market.presets import PRESETS
from rtml.settings import Settings

if TYPE_CHECKING:
    from rtml.pipelines.market.files import Reading


def reachable_or_exit(settings: Settings, *services: str) -> None:
    """Before a long-running command loads anything heavy: each of `services` (kafka, redis,
    mlflow) answers the stack's health check, or the command stops at once saying which and
    what to do (a library's own retries would take a minute or more to say the same)."""
    from rtml.app.processes import NAMES, what_to_do
    from rtml.app.stack import Stack

    stack = Stack(settings)
    for service in services:
        if not stack.healthy(service):
            name = NAMES[service]
            raise ServiceError(
                f"{name} at {stack.address(service)} cannot be reached. {what_to_do(name)}"
            )


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask a loop to finish its current batch, commit and return."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def trade_source(
    settings: Settings,
    source: str,
    seed: int,
    candles: int | None,
    start_ts: float | None,
    reading: Reading,
    stop: threading.Event,
    start_prices: dict[str, float] | None = None,
    trades_per_candle: float = 20,
) -> Iterable[Any]:
    from rtml.pipelines.market import files, kraken, sources

    if source == "synthetic":
        market = sources.SyntheticMarket(
            settings.symbols,
            seed=seed,
            candle_seconds=settings.candle_seconds,
            start_ts=start_ts,
            start_prices=start_prices,
            trades_per_candle=trades_per_candle,
        )
        return market.candles_of_trades(candles)
    if source == "kraken" or source.startswith(("ws://", "wss://")):
        url = kraken.KRAKEN_WS_URL if source == "kraken" else source
        return kraken.stream(settings.symbols, url=url, stop=stop)
    path = Path(source)
    if path.is_dir():  # a file a day or a symbol: one market, in event time
        from rtml.pipelines.market import folders

        check_candle_file(settings, folders.replay_files(path)[0], reading)
        return folders.replay_folder(path, reading, settings.candle_seconds)
    check_candle_file(settings, path, reading)
    return files.replay(path, reading, settings.candle_seconds)


def column_mapping(columns: tuple[str, ...]) -> dict[str, str]:
    bad = [c for c in columns if "=" not in c]
    if bad:
        raise click.BadParameter(
            f"{bad[0]!r}: write NAME=FILE_COLUMN, e.g. size=qty", param_hint="--column"
        )
    return dict(c.split("=", 1) for c in columns)


def check_candle_file(settings: Settings, path: Path, reading: Reading) -> None:
    """A candle file's own candle length must be the settings', and its sessions too unless
    the user chose the gap policy (`--gap-policy`, RTML_GAP_POLICY): one line saying what to
    set otherwise, before anything starts."""
    from rtml.pipelines.market.sessions import candle_profile

    profile = candle_profile(path, reading)
    if profile is None:
        return
    wrong = []
    if profile.seconds != settings.candle_seconds:
        wrong.append(f"RTML_CANDLE_SECONDS={profile.seconds}")
    chosen = "gap_policy" in settings.model_fields_set
    if profile.gap_policy != settings.gap_policy and not chosen:
        wrong.append(f"--gap-policy {profile.gap_policy} (or RTML_GAP_POLICY)")
    if wrong:
        raise RtmlError(
            f"{path} holds {profile.seconds} s candles with {profile.reason}; set "
            f"{' and '.join(wrong)} to replay it as it is"
        )


def target_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--target` and `--horizon`, which override RTML_TARGET and RTML_HORIZON for one command."""

    @functools.wraps(command)
    def run(
        settings: Settings, *args: Any, target: str | None, horizon: int | None, **kw: Any
    ) -> None:
        update = {k: v for k, v in (("target", target), ("horizon", horizon)) if v is not None}
        if update:  # both checked by their options; a copy keeps what the user set apart
            settings = settings.model_copy(update=update)
        command(settings, *args, **kw)

    run = click.option(
        "--horizon",
        type=click.IntRange(1, 100),
        default=None,
        help="H, the candles a label looks ahead [RTML_HORIZON, 5].",
    )(run)
    return click.option(
        "--target",
        type=click.Choice(sorted(TARGETS)),
        default=None,
        help="What is learned: the H-candle return or realised volatility [RTML_TARGET, return].",
    )(run)


source_option = click.option(
    "--source",
    default="synthetic",
    show_default=True,
    help="synthetic, kraken, a ws:// URL speaking Kraken's v2 format, or a CSV, JSON, "
    "Parquet or Arrow file of trades or candles, or a folder of them (a file a day or a "
    "symbol: replayed as one market in event time).",
)


def reading_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--format`, `--column`, `--time-format`: how a replay file is read (a `Reading`), and
    `--gap-policy`, which overrides RTML_GAP_POLICY for one command."""

    @functools.wraps(command)
    def run(
        settings: Settings,
        *args: Any,
        fmt: str,
        columns: tuple[str, ...],
        time_format: str | None,
        delimiter: str | None,
        gap_policy: str | None,
        **kw: Any,
    ) -> None:
        from rtml.pipelines.market.files import Reading

        if gap_policy is not None:
            settings = settings.model_copy(update={"gap_policy": gap_policy})
        reading = Reading(fmt, column_mapping(columns), time_format, delimiter)
        command(settings, *args, reading=reading, **kw)

    for option in (
        click.option(
            "--gap-policy",
            type=click.Choice(["flat", "skip"]),
            default=None,
            help="A silent window: a flat candle, or none (markets that close) "
            "[RTML_GAP_POLICY; a file's own sessions otherwise].",
        ),
        click.option("--delimiter", default=None, help="The file's field delimiter [,]."),
        click.option(
            "--time-format",
            default=None,
            help="The file's times as a strftime format, e.g. '%d.%m.%Y %H:%M'.",
        ),
        click.option(
            "--column", "columns", multiple=True, help="Map a replay column: NAME=FILE_COLUMN."
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["canonical", "auto", *PRESETS]),
            default="canonical",
            show_default=True,
            help="How the replay file is written: rtml's columns, a vendor's preset "
            "(`rtml formats`), or auto (the first preset that reads it).",
        ),
    ):
        run = option(run)
    return run


trades_per_candle = click.option(
    "--trades-per-candle",
    type=click.FloatRange(min=0.0, min_open=True),
    default=20.0,
    show_default=True,
    help="Synthetic: trades of each symbol per candle, on average (hold traffic equal across "
    "symbol counts by giving fewer per candle to more symbols).",
)
