"""Dead letters and records an operator moves past: `dlq show`, `dlq replay`, `skip`, `compact`."""

from __future__ import annotations

from typing import Any

import click

from rtml.settings import Settings


@click.group()
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


@click.command()
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

    from rtml.dead_letters import dead_letter
    from rtml.kafka import Topics, consumer_config, make_consumer, make_producer

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
    from rtml import checkpoints
    from rtml.dead_letters import dead_letter
    from rtml.kafka import make_producer

    run_id = checkpoints.trainer_run_id(settings)
    if origin in checkpoints.trainer_skips(settings, run_id):
        click.echo(f"the trainer of {settings.model_name} already passes over {origin}")
        return
    # the dead letter first: if the tag then fails, running this again doubles it, never loses it
    producer = make_producer(settings)
    dead_letter(producer, name, f"skipped: {reason}", msg.value(), key=msg.key(), origin=origin)
    if producer.flush(30) > 0:
        raise click.ClickException("the dead letter was not delivered; run this again")
    checkpoints.add_trainer_skip(settings, run_id, origin)
    click.echo(
        f"dead-lettered {origin} to {name}.dlq; the trainer of {settings.model_name} passes "
        "over it from its next start"
    )


@click.command()
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
