"""The `rtml` command: the entrypoint where settings are read and logging is configured."""

from __future__ import annotations

import functools
import logging
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rtml.app.datasets import DATASETS
from rtml.errors import RtmlError
from rtml.pipelines.features.targets import TARGETS
from rtml.pipelines.market.presets import PRESETS
from rtml.settings import Settings

if TYPE_CHECKING:
    from rtml.pipelines.market.files import Reading


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask a loop to finish its current batch, commit and return."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


QUIET = ("feast", "dask", "distributed", "mlflow", "alembic", "httpx", "fsspec", "botocore")
"""Libraries whose INFO lines (Feast's "Registry cache expired" several times a second) are
noise beside rtml's own: shown from WARNING on, unless -v."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        import warnings

        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
        # dask's pandas deprecation notes, raised inside Feast's offline reads
        warnings.filterwarnings("ignore", category=FutureWarning, module="dask")
    # a refused connection is reported once, in words, by the command; not per retry
    logging.getLogger("urllib3").setLevel(logging.ERROR)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """rtml: real-time ML with incremental re-training, centred on a feature store."""
    _setup_logging(verbose)
    ctx.obj = Settings.from_env()


@cli.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Start the embedded stack (or reuse what is healthy), apply Feast, create topics."""
    from rtml.app.stack import Stack

    stack = Stack(settings)
    report = stack.up(progress=click.echo)
    for s in stack.status():
        click.echo(s.line())
    click.echo(
        f"up in {report.seconds:.1f} s (started: {', '.join(report.started) or 'none'}; "
        f"reused: {', '.join(report.reused) or 'none'}; "
        f"external: {', '.join(report.external) or 'none'}; "
        f"feast apply: {'ran' if report.feast_applied else 'current'})"
    )


@cli.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the services that `rtml up` started; external ones are left alone."""
    from rtml.app.stack import Stack

    stopped = Stack(settings).down()
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cli.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Show each service, its address and health, and how long the last `up` took."""
    from rtml.app.stack import Stack

    stack = Stack(settings)
    rows = stack.status()
    for s in rows:
        click.echo(s.line())
    last = stack.last_up()
    if last:
        click.echo(f"last up took {float(last['seconds']):.1f} s")  # type: ignore[arg-type]
    if not all(s.healthy for s in rows):
        raise SystemExit(1)
    _model_status(settings)


def _model_status(settings: Settings) -> None:
    """The champion of each model and who decided it."""

    from rtml import registry

    names = [
        settings.model_copy(update={"shard": shard}).as_shard() for shard in settings.shards
    ] or [settings]
    for local in names:
        champion = registry.alias_version(local, registry.CHAMPION)
        candidate = registry.alias_version(local, registry.CANDIDATE)
        found = registry.decision(local) or {}
        serving = champion or "none: the predictors serve the naive baseline (no change)"
        line = f"model {local.model_name}: champion {serving}"
        line += f", candidate {candidate or 'none'}"
        if found:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(found["at"])))
            line += f"; {found['action']} by {found['by']} at {when}"
            if found.get("pinned"):
                line += ", pinned (`rtml promote --auto` hands it back to the gate)"
        click.echo(line)


@cli.command()
@click.pass_obj
def env(settings: Settings) -> None:
    """Print `export` lines for a shell that runs `feast` by hand: eval "$(rtml env)"."""
    for key, value in settings.feast_env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@cli.command("feast-apply")
@click.pass_obj
def feast_apply(settings: Settings) -> None:
    """Apply feature_repo/ to the configured registry and online store."""

    from rtml.app.stack import Stack

    stack = Stack(settings)
    stack.wait_feast(stack.feast_apply(), time.monotonic() + settings.up_timeout_s)
    click.echo(f"applied {settings.feature_repo}")


def _trade_source(
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


def _target_options(command: Callable[..., None]) -> Callable[..., None]:
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


_source_option = click.option(
    "--source",
    default="synthetic",
    show_default=True,
    help="synthetic, kraken, a ws:// URL speaking Kraken's v2 format, or a CSV, JSON, "
    "Parquet or Arrow file of trades or candles, or a folder of them (a file a day or a "
    "symbol: replayed as one market in event time).",
)


def _reading_options(command: Callable[..., None]) -> Callable[..., None]:
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


_trades_per_candle = click.option(
    "--trades-per-candle",
    type=click.FloatRange(min=0.0, min_open=True),
    default=20.0,
    show_default=True,
    help="Synthetic: trades of each symbol per candle, on average (hold traffic equal across "
    "symbol counts by giving fewer per candle to more symbols).",
)


@cli.command()
@_source_option
@click.option("--seed", default=0, show_default=True)
@click.option("--candles", type=int, default=None, help="Stop after this many synthetic candles.")
@click.option("--speed", default=1.0, show_default=True, help="Times real time; 0: max speed.")
@click.option("--limit", type=int, default=None, help="Stop after this many trades.")
@click.option(
    "--start-ts", type=float, default=None, help="Event time of the first synthetic candle [now]."
)
@click.option(
    "--continue",
    "continue_history",
    is_flag=True,
    help="Synthetic: start where the offline store ends, at each symbol's last close.",
)
@_trades_per_candle
@click.pass_obj
@_reading_options
def feed(
    settings: Settings,
    source: str,
    reading: Reading,
    seed: int,
    candles: int | None,
    speed: float,
    limit: int | None,
    start_ts: float | None,
    continue_history: bool,
    trades_per_candle: float,
) -> None:
    """Produce trades from a source to the `trades` topic."""
    from rtml.kafka import Topics, ensure_topics, make_producer
    from rtml.pipelines.features.feed import paced, publish

    stop = threading.Event()
    install_signal_handlers(stop)
    topics = Topics.of(settings)
    ensure_topics(settings, topics.with_dlqs())
    start_prices = None
    if continue_history:
        from rtml import feature_store as fs

        start_ts, start_prices = fs.history_end(settings)
        if start_ts is None:
            click.echo("the offline store is empty: the synthetic market starts now", err=True)
    items = _trade_source(
        settings, source, seed, candles, start_ts, reading, stop, start_prices, trades_per_candle
    )
    if source == "synthetic" or Path(source).exists():
        items = paced(items, speed)
    producer = make_producer(settings)
    stats = publish(producer, topics.trades, items, stop=stop, limit=limit, progress=True)
    click.echo(stats.line())


@cli.command()
@click.option("--group", default="rtml-features", show_default=True, help="Consumer group.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def features(settings: Settings, group: str, duration: float | None) -> None:
    """Run the feature pipeline: trades to candles, features and labels in Feast and Kafka."""
    from rtml.pipelines.features.feature_pipeline import FeaturePipeline

    pipeline = FeaturePipeline(settings, group_id=group)
    install_signal_handlers(pipeline.stop)
    click.echo(pipeline.run(max_seconds=duration).line())


@cli.command()
@_source_option
@click.option("--seed", default=0, show_default=True)
@click.option("--days", default=2.0, show_default=True, help="Synthetic history length.")
@click.option(
    "--start-ts", type=float, default=None, help="Event time of the first candle [days ago]."
)
@_trades_per_candle
@click.pass_obj
@_target_options
@_reading_options
def backfill(
    settings: Settings,
    source: str,
    reading: Reading,
    seed: int,
    days: float,
    start_ts: float | None,
    trades_per_candle: float,
) -> None:
    """Build the offline store from a replay file or a synthetic history, without Kafka."""

    from rtml.pipelines.features.feed import backfill as run_backfill

    candles = None
    if source == "synthetic":
        candles = int(days * 86400 / settings.candle_seconds)
        if start_ts is None:
            start_ts = time.time() - candles * settings.candle_seconds
    items = _trade_source(
        settings, source, seed, candles, start_ts, reading, threading.Event(), None,
        trades_per_candle,
    )  # fmt: skip
    click.echo(run_backfill(settings, items).line())


@cli.command()
def formats() -> None:
    """The replay file formats: rtml's canonical columns and the vendors' presets."""
    from rtml.pipelines.market.files import CANDLE_COLUMNS, OPTIONAL, TRADE_COLUMNS

    def named(columns: Iterable[str]) -> str:
        return ", ".join(f"[{c}]" if c in OPTIONAL else c for c in columns)

    click.echo("canonical (the default; map yours with --column NAME=COLUMN, [optional]):")
    click.echo(f"  trades   {named(TRADE_COLUMNS)}")
    click.echo(f"  candles  {named(CANDLE_COLUMNS)}")
    click.echo(
        "  ts: epoch s, ms, us or ns, or ISO-8601; CSV (compressed too), JSON, Parquet, Arrow"
    )
    click.echo("presets (--format NAME; --format auto tries them in this order):")
    for preset in PRESETS.values():
        click.echo(f"  {preset.name:<20} {preset.kind:<8} {preset.about}")


@cli.group()
def dlq() -> None:
    """Dead letters: what was rejected, why and where from; replay once the cause is fixed."""


@dlq.command("show")
@click.argument("topic", type=click.Choice(["trades", "features", "examples", "predictions"]))
@click.option("--last", default=5, show_default=True, help="Show the newest N records too.")
@click.pass_obj
def dlq_show(settings: Settings, topic: str, last: int) -> None:
    """Count TOPIC's dead letters by reason and by origin; show the newest."""
    from collections import Counter

    from rtml.kafka import Topics, read_dead_letters
    from rtml.kafka import dlq as dead_letters_of

    name = dead_letters_of(getattr(Topics.of(settings), topic))
    letters, foreign = read_dead_letters(settings, name, timeout=30)
    records = [record for _, record in letters]
    click.echo(f"{name}: {len(records)} record(s)")
    if foreign:
        click.echo(f"  {foreign:8d}  other record(s) on it that are not rtml's dead letters")
    reasons = Counter(str(r.get("reason", "")).split(":", 1)[0] for r in records)
    for reason, n in reasons.most_common():
        click.echo(f"  {n:8d}  {reason}")
    origins = Counter(str(r.get("origin", "")).split("@", 1)[0] for r in records)
    for origin, n in origins.most_common(10):
        click.echo(f"  {n:8d}  from {origin}")
    for record in records[-last:] if last > 0 else []:
        raw = str(record.get("raw", ""))
        click.echo(f"  {record.get('origin')}: {str(record.get('reason'))[:200]} | {raw[:120]!r}")


@dlq.command("replay")
@click.argument("topic", type=click.Choice(["trades", "features", "examples", "predictions"]))
@click.option("--reason", default=None, help="Only records rejected for this reason class.")
@click.pass_obj
def dlq_replay(settings: Settings, topic: str, reason: str | None) -> None:
    """Produce TOPIC's dead letters back onto TOPIC, each once, keyed as they came; for after
    the cause is fixed (e.g. a symbol added to RTML_SYMBOLS).

    A replayed letter gets a marker on the DLQ, and a record rejected again after a replay
    is not brought back by later runs: run it twice, the topics hold what one run left.
    Letters whose value or key was cut to fit are refused, with the reason."""
    from rtml.app.letters import replay_letters

    click.echo(replay_letters(settings, topic, reason=reason).line())


@cli.command()
@click.argument("topic", type=click.Choice(["trades", "features", "examples", "predictions"]))
@click.option("--group", default=None, help="The consumer group to move past the record.")
@click.option(
    "--trainer", is_flag=True, help="Move the trainer past it (its offsets are in its checkpoint)."
)
@click.option("--partition", type=int, required=True, help="The record's partition.")
@click.option("--offset", type=int, required=True, help="The record's offset.")
@click.option("--reason", default="an operator skipped it", show_default=True)
@click.pass_obj
def skip(
    settings: Settings,
    topic: str,
    group: str | None,
    trainer: bool,
    partition: int,
    offset: int,
    reason: str,
) -> None:
    """Dead-letter the record at TOPIC[PARTITION]@OFFSET and move GROUP, or the trainer, past it.

    For the day a record gets through that no check knows: stop the consumers, run this,
    start them again. The record lands in TOPIC's DLQ with the reason `skipped`, so
    `rtml dlq replay` can bring it back. A group is committed past it (a group with members
    refuses commits from outside, so stop them first); the trainer, whose offsets live in its
    checkpoint, is told through its MLflow run to pass over it when it reads it."""
    if (group is None) == (not trainer) or (trainer and topic != "examples"):
        raise click.UsageError("give --group G, or --trainer with the examples topic")
    import uuid

    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from rtml.kafka import Topics, consumer_config, dead_letter, make_consumer, make_producer

    name = getattr(Topics.of(settings), topic)
    origin = f"{name}[{partition}]@{offset}"
    reader = make_consumer(
        settings, f"rtml-skip-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": False}
    )
    try:
        reader.assign([TopicPartition(name, partition, offset)])
        msg = reader.poll(10)
    finally:
        reader.close()
    if msg is None or msg.error() is not None or msg.offset() != offset:
        raise click.ClickException(
            f"no record at {name}[{partition}]@{offset}: check the partition and offset "
            f"(`rtml dlq show {topic}` prints where rejected records came from)"
        )
    if trainer:
        _skip_for_trainer(settings.as_shard(), name, msg, origin, reason)
        return
    assert group is not None
    group_reader = Consumer(consumer_config(settings, group))
    try:
        at = group_reader.committed([TopicPartition(name, partition)], timeout=10)[0].offset
        if at > offset:
            click.echo(f"{group} is already past {origin} (at {at})")
            return
        if max(at, 0) != offset:
            # committing past it would skip the records before it too
            raise click.ClickException(
                f"{group} stands at {at if at >= 0 else 'the start'} of partition {partition}, "
                f"not at {offset}: this command skips only the record a group stands at"
            )
        producer = make_producer(settings)
        dead_letter(producer, name, f"skipped: {reason}", msg.value(), key=msg.key(), origin=origin)
        if producer.flush(30) > 0:
            raise click.ClickException("the dead letter was not delivered; nothing was committed")
        try:
            group_reader.commit(
                offsets=[TopicPartition(name, partition, offset + 1)], asynchronous=False
            )
        except KafkaException as exc:
            raise click.ClickException(
                f"could not commit {group} past {origin} ({exc}): stop the group's consumers "
                "first, then run this again"
            ) from exc
    finally:
        group_reader.close()
    click.echo(f"dead-lettered {origin} to {name}.dlq and committed {group} at {offset + 1}")


def _skip_for_trainer(settings: Settings, name: str, msg: Any, origin: str, reason: str) -> None:
    from rtml import registry
    from rtml.kafka import dead_letter, make_producer

    run_id = registry.trainer_run_id(settings)
    if origin in registry.trainer_skips(settings, run_id):
        click.echo(f"the trainer of {settings.model_name} already passes over {origin}")
        return
    # the dead letter first: if the tag then fails, running this again doubles it, never loses it
    producer = make_producer(settings)
    dead_letter(producer, name, f"skipped: {reason}", msg.value(), key=msg.key(), origin=origin)
    if producer.flush(30) > 0:
        raise click.ClickException("the dead letter was not delivered; run this again")
    registry.add_trainer_skip(settings, run_id, origin)
    click.echo(
        f"dead-lettered {origin} to {name}.dlq; the trainer of {settings.model_name} passes "
        "over it from its next start"
    )


@cli.command()
@click.pass_obj
def compact(settings: Settings) -> None:
    """Merge the offline store's parquet parts, one row per (symbol, event time)."""
    from rtml import feature_store as fs

    for name in fs.OFFLINE_DATASETS:
        parts, rows = fs.compact(settings.offline_dir / name)
        if rows < 0:
            click.echo(f"{name}: {parts} part(s), nothing to merge")
        else:
            click.echo(f"{name}: {parts} parts merged into one of {rows} rows")


@cli.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--max-examples", type=int, default=None, help="Stop once this many are learned.")
@click.pass_obj
@_target_options
def train(settings: Settings, duration: float | None, max_examples: int | None) -> None:
    """Run the trainer: warm start or resume, learn from `examples`, checkpoint, gate."""
    from rtml.pipelines.training.trainer import Trainer

    trainer = Trainer(settings.as_shard())
    install_signal_handlers(trainer.stop)
    learner = trainer.run(max_seconds=duration, max_examples=max_examples)
    click.echo(f"learned {learner.learned} examples; metrics {learner.metrics()}")


@cli.command()
@click.pass_obj
@_target_options
def retrain(settings: Settings) -> None:
    """Refit from the offline store now, register the result and put it through the gate."""
    from rtml.pipelines.training.trainer import retrain as run_retrain

    version, decision = run_retrain(settings.as_shard())
    verdict = "promoted to champion" if decision.promote else "not promoted"
    click.echo(f"version {version}: {decision.reason}; {verdict}")


@cli.command()
@click.argument("version", required=False)
@click.option("--auto", "auto", is_flag=True, help="Hand the champion back to the trainer's gate.")
@click.pass_obj
def promote(settings: Settings, version: str | None, auto: bool) -> None:
    """Make VERSION the champion that predictors serve, pinned until `promote --auto`."""
    from rtml import registry

    settings = settings.as_shard()
    if auto == (version is not None):
        raise click.UsageError("give a VERSION to pin, or --auto to hand control to the gate")
    if auto:
        kept = registry.auto(settings)
        click.echo(
            f"the trainer's gate chooses the champion of {settings.model_name} again "
            f"(version {kept or 'none'} until it promotes another)"
        )
        return
    assert version is not None
    registry.promote(settings, version, by=registry.person(), pin=True)
    click.echo(
        f"champion of {settings.model_name} is version {version}, pinned: the trainer will not "
        "move it until `rtml promote --auto`"
    )


@cli.command()
@click.pass_obj
def rollback(settings: Settings) -> None:
    """Move the champion back to the previous champion, pinned until `promote --auto`."""
    from rtml import registry

    settings = settings.as_shard()
    version = registry.rollback(settings)
    click.echo(
        f"champion of {settings.model_name} is version {version}, pinned: the trainer will not "
        "move it until `rtml promote --auto`"
    )


@cli.command()
@click.pass_obj
def serve(settings: Settings) -> None:
    """Serve predictions over HTTP from the champion model, swapping in new champions."""
    from rtml.serving.app import serve as run_server

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was in
    # place before; this one lets the finished server exit 0 instead of dying by the signal.
    install_signal_handlers(threading.Event())
    run_server(settings)


@cli.command("predict-stream")
@click.option("--group", default="rtml-predictor", show_default=True, help="Consumer group.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def predict_stream(settings: Settings, group: str, duration: float | None) -> None:
    """Predict every `features` record with the champion, onto `predictions`."""
    from rtml.serving.model_holder import models_for
    from rtml.serving.stream import StreamingPredictor

    holder = models_for(settings)
    holder.refresh()
    holder.start()
    predictor = StreamingPredictor(settings, holder, group_id=group)
    install_signal_handlers(predictor.stop)
    try:
        click.echo(f"predicted {predictor.run(max_seconds=duration)} records")
    finally:
        holder.stop()


@cli.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def monitor(settings: Settings, duration: float | None) -> None:
    """Join predictions with realized targets; serve the dashboard and /metrics."""
    from rtml.serving.dashboard import run_monitor

    click.echo(f"dashboard: http://{settings.monitor_host}:{settings.monitor_port}/")
    install_signal_handlers(threading.Event())  # exit 0 after uvicorn's graceful shutdown
    run_monitor(settings, max_seconds=duration)


@cli.command()
@click.option("--duration", type=float, default=None, help="Seconds to run [until Ctrl-C].")
@_source_option
@click.option("--days", default=2.0, show_default=True, help="Synthetic history to backfill.")
@click.option("--speed", default=600.0, show_default=True, help="Feed speed, times real time.")
@click.option("--seed", default=1, show_default=True, help="Seed of the synthetic market.")
@click.option(
    "--register-interval",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds between registered versions: at 600x, 3 s is 30 minutes of market time.",
)
@click.pass_obj
@_target_options
@_reading_options
def demo(
    settings: Settings,
    duration: float | None,
    source: str,
    days: float,
    reading: Reading,
    speed: float,
    seed: int,
    register_interval: float,
) -> None:
    """The whole loop on the embedded stack, with a status line; a summary at the end."""
    from rtml.app.demo import Demo, own_stack
    from rtml.app.stack import Stack

    replaying = source != "synthetic" and bool(Path(source).suffix)
    if replaying:
        # a file: a stack of its own, so a re-run starts from the same clean split
        folder = settings.state / "demos" / time.strftime("%Y%m%d%H%M%S")
        settings = own_stack(settings, folder, keep_ports=True)
        click.echo(f"== replaying {source} on a stack of its own in {folder}")
    run = Demo(
        settings,
        source=source,
        days=days,
        speed=speed,
        seed=seed,
        out=click.echo,
        reading=reading,
        own_ports=replaying,
        register_interval_s=register_interval,
    )
    try:
        evaluation = run.run(duration)
    finally:
        if replaying:
            Stack(settings).down()
            click.echo(
                f"   its MLflow store stays in {settings.state}: `RTML_STATE_DIR={settings.state} "
                "rtml up` brings that stack back"
            )
    for line in run.report(evaluation):
        click.echo(line)


@cli.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--dataset",
    type=click.Choice(sorted(DATASETS)),
    default=None,
    help="A real market file from a package on the index, instead of FILE.",
)
@click.option("--refit-every", default=60, show_default=True, help="Candles between batch refits.")
@click.option("--speed", default=0.0, show_default=True, help="Times real time; 0: max speed.")
@click.option(
    "--register-interval",
    type=float,
    default=None,
    help="Seconds between registered versions [RTML_REGISTER_INTERVAL_S].",
)
@click.pass_obj
@_target_options
@_reading_options
def evaluate(
    settings: Settings,
    file: Path | None,
    dataset: str | None,
    reading: Reading,
    refit_every: int,
    speed: float,
    register_interval: float | None,
) -> None:
    """Replay a market file through the whole system; score what was served beside the
    initial fit, a periodic batch refit, and the naive and mean baselines."""
    from rtml.app import datasets
    from rtml.app.evaluate import evaluate_file

    if (file is None) == (dataset is None):
        raise click.UsageError("give a FILE or --dataset NAME (for example --dataset msft)")
    if file is None:
        assert dataset is not None
        click.echo(f"== fetching the {dataset} dataset from its package on the index")
        file = datasets.fetch(dataset, settings.state / "datasets")
    evaluate_file(
        settings,
        file,
        reading,
        refit_every=refit_every,
        speed=speed,
        register_interval_s=register_interval,
        out=click.echo,
    )


_SERVICES = {
    "mlflow": ("MLflow", "MLFLOW_TRACKING_URI"),
    "requests": ("MLflow", "MLFLOW_TRACKING_URI"),
    "urllib3": ("MLflow", "MLFLOW_TRACKING_URI"),
    "confluent_kafka": ("Kafka", "KAFKA_BOOTSTRAP_SERVERS"),
    "redis": ("Redis", "REDIS_URL"),
}
_UNREACHABLE = (
    "Connection refused",
    "Max retries exceeded",
    "NewConnectionError",
    "Failed to resolve",
    "ALL_BROKERS_DOWN",
    "_TRANSPORT",
    "Timed out",
    "timed out",
)


def _address(name: str) -> str:
    try:
        settings = Settings()
    except Exception:
        return "the configured address"
    if name == "MLflow":
        return settings.mlflow_uri
    if name == "Kafka":
        return settings.kafka_bootstrap
    return settings.feast_redis_connection.split(",")[0]


def _service_error(exc: BaseException) -> str | None:
    """One line for a failure of a service rtml talks to; None for anything else."""
    root = type(exc).__module__.split(".")[0]
    if root not in _SERVICES:
        return None
    name, variable = _SERVICES[root]
    text = " ".join(str(exc).split())
    if any(marker in text for marker in _UNREACHABLE):
        what = f"{name} at {_address(name)} cannot be reached"
    else:
        what = f"{name} failed: {text[:300] or type(exc).__name__}"
    return (
        f"{what}. `rtml status` shows the embedded stack and `rtml up` starts it; "
        f"for an external {name}, check {variable}."
    )


def main() -> None:
    try:
        cli()
    except RtmlError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
    except Exception as exc:
        message = _service_error(exc)
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        raise SystemExit(3) from exc


if __name__ == "__main__":
    main()
