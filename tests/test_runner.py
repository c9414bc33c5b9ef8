"""The shared consumer loop with in-memory source and sink: commit cadence, dead-letter routing,
revokes and stops. No broker: what the loop decides is checked record by record."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Sequence

import orjson
import pytest
from confluent_kafka import KafkaError, Message

from rtml.consumers import Position
from rtml.dead_letters import DLQ_KEY_BYTES, DLQ_RAW_BYTES
from rtml.metrics import Counters, serve_metrics
from rtml.records import MAX_RECORD_BYTES, BadRecord
from rtml.runner import Hooks, Pace, Runner
from rtml.settings import Settings
from rtml.testing import MemorySink, MemorySource

T = "examples"


def msg(partition: int, offset: int, value: bytes = b"ok", key: bytes | None = b"k") -> Message:
    return Message(topic=T, partition=partition, offset=offset, key=key, value=value)


def eof(partition: int) -> Message:
    return Message(topic=T, partition=partition, error=KafkaError(KafkaError._PARTITION_EOF))


class Step:
    """Rejects values starting with b"bad", fails on b"bug", records what it saw."""

    def __init__(self, sink: MemorySink, stop_at: tuple[int, int] | None = None) -> None:
        self.sink = sink
        self.seen: list[tuple[int, int]] = []
        self.stop_at = stop_at
        self.runner: Runner | None = None

    def __call__(self, m: Message) -> None:
        value = m.value() or b""
        if value.startswith(b"bad"):
            raise BadRecord("wrong_type", value.decode())
        if value == b"bug":
            raise ZeroDivisionError("a bug this record found")
        self.seen.append((m.partition() or 0, m.offset() or 0))
        self.sink.produce("out", value=value, key=m.key())
        if self.stop_at == self.seen[-1]:
            assert self.runner is not None
            self.runner.stop.set()


class CheckedSource(MemorySource):
    """Fails the test if offsets are committed while produced records are undelivered."""

    def __init__(self, sink: MemorySink, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sink = sink

    def commit(self, offsets: dict[Position, int]) -> bool:
        assert self.sink.pending == 0, "committed before what the records led to was delivered"
        return super().commit(offsets)


def run(
    batches: Sequence[Sequence[Message]],
    partitions: Sequence[int] = (0, 1),
    stop_at: tuple[int, int] | None = None,
    commit_interval_s: float = 0.0,
    sink: MemorySink | None = None,
    hooks: Hooks = Hooks(),  # noqa: B008 (frozen)
    dead_letters: list[str] | None = None,
) -> tuple[Runner, CheckedSource, MemorySink, Step]:
    sink = sink if sink is not None else MemorySink()
    drained = threading.Event()
    source = CheckedSource(sink, batches, [(T, p) for p in partitions], drained)
    step = Step(sink, stop_at)
    runner = Runner(
        source,
        sink,
        step,
        Counters("test"),
        stop=drained,
        pace=Pace(commit_interval_s=commit_interval_s),
        hooks=hooks,
        dead_letters=dead_letters,
    )
    step.runner = runner
    runner.run(max_seconds=30)
    return runner, source, sink, step


def test_offsets_are_committed_after_delivery_and_only_for_what_was_processed() -> None:
    runner, source, sink, step = run(
        [[msg(0, 0), msg(1, 0), msg(0, 1)], [eof(0), eof(1)], [msg(1, 1)]]
    )
    assert step.seen == [(0, 0), (1, 0), (0, 1), (1, 1)]
    # one commit per batch that processed records (interval 0); an end-of-partition batch
    # commits nothing
    assert source.committed == [{(T, 0): 2, (T, 1): 1}, {(T, 1): 2}]
    assert len(sink.on("out")) == 4 and source.closed
    assert runner.counters.read[T] == 4


def test_commits_wait_for_the_interval_and_the_stop_commits_the_rest() -> None:
    _, source, _, _ = run([[msg(0, 0)], [msg(0, 1)], [msg(0, 2)]], commit_interval_s=3600)
    assert source.committed == [{(T, 0): 3}]


def test_rejects_go_to_their_topics_dlq_with_class_key_and_origin_and_the_loop_goes_on() -> None:
    huge = b'"' * 600_000
    runner, source, sink, step = run(
        [[msg(0, 0), msg(0, 1, b"bad one"), msg(1, 0, b"bug", key=None), msg(0, 2, huge)]]
    )
    assert step.seen == [(0, 0)]  # the huge record never reached the step
    dead = [(k, orjson.loads(v or b"")) for k, v in sink.on(f"{T}.dlq")]
    assert [(k, d["reason"].partition(":")[0], d["origin"]) for k, d in dead] == [
        (b"k", "wrong_type", f"{T}[0]@1"),
        (f"{T}[1]".encode(), "error", f"{T}[1]@0"),  # keyless: keyed by its partition
        (b"k", "too_large", f"{T}[0]@2"),
    ]
    assert "ZeroDivisionError" in dead[1][1]["reason"]
    assert dead[2][1]["raw_bytes"] == len(huge) > MAX_RECORD_BYTES
    assert len(dead[2][1]["raw"]) == DLQ_RAW_BYTES
    assert runner.counters.rejected == {(T, "wrong_type"): 1, (T, "error"): 1, (T, "too_large"): 1}
    assert source.committed == [{(T, 0): 3, (T, 1): 1}]  # rejected records are passed


def test_a_huge_key_is_refused_and_its_dead_letter_fits_the_broker() -> None:
    """A key is the producer's to choose: 100 KB of key with a one-byte value is as large as
    a value of that size, and the dead letter keeps only the key's first KB."""
    key = b"k" * 100_000
    _, _, sink, step = run([[msg(0, 0, b"x", key=key), msg(0, 1, b"bad", key=key)]])
    assert step.seen == []
    dead = sink.on(f"{T}.dlq")
    assert [orjson.loads(v or b"")["reason"].partition(":")[0] for _, v in dead] == [
        "too_large",
        "too_large",
    ]
    assert all(k == key[:DLQ_KEY_BYTES] for k, _ in dead)


def test_a_full_producer_queue_waits_for_deliveries_and_loses_nothing() -> None:
    """A broker slow to take records fills the producer's local queue (BufferError): the dead
    letters wait for deliveries instead of failing the loop."""
    sink = MemorySink(capacity=2)
    runner, source, _, _ = run([[msg(0, i, b"bad %d" % i) for i in range(7)]], sink=sink)
    assert len(sink.on(f"{T}.dlq")) == 7
    assert sink.polls >= 3 and runner.counters.rejected == {(T, "wrong_type"): 7}
    assert source.committed == [{(T, 0): 7}]


def test_a_slow_broker_pauses_reading_and_the_consumer_keeps_polling() -> None:
    """Records waiting for a slow broker pile up in the producer's queue. Past `backlog` the
    runner pauses its partitions and keeps polling its consumer (a member that stops polling
    for max.poll.interval.ms is evicted) until half are delivered, instead of reading on until
    a produce blocks inside a step. A partition assigned meanwhile is paused as well."""
    sink = MemorySink(per_poll=1)
    batches = [[msg(0, 5 * b + i) for i in range(5)] for b in range(4)]
    drained = threading.Event()
    source = CheckedSource(sink, batches, [(T, 0), (T, 1)], drained)
    source.rebalance(2, "assign", [(T, 2)])
    step = Step(sink)
    runner = Runner(
        source,
        sink,
        step,
        Counters("t"),
        stop=drained,
        pace=Pace(commit_interval_s=3600, backlog=4),
    )
    runner.run(max_seconds=30)
    assert len(sink.on("out")) == 20 and source.committed == [{(T, 0): 20}]
    assert sink.peak <= 4 + 5  # never more than the backlog and one batch's records
    assert source.pauses[0] == [(T, 0), (T, 1)] and [(T, 2)] in source.pauses
    assert source.consumed_paused >= 3 and not source.paused


def test_a_topic_owned_by_another_component_is_counted_not_dead_lettered() -> None:
    told: list[tuple[str, str]] = []
    runner, _, sink, _ = run(
        [[msg(0, 0, b"bad"), msg(0, 1, b'"' * 600_000)]],
        dead_letters=["predictions"],
        hooks=Hooks(on_reject=lambda topic, kind: told.append((topic, kind))),
    )
    assert sink.on(f"{T}.dlq") == []
    assert runner.counters.rejected_by(T) == {"wrong_type": 1, "too_large": 1}
    assert told == [(T, "wrong_type"), (T, "too_large")]  # the guard's reject too


def test_a_revoke_commits_first_and_records_of_a_partition_gone_are_left_to_its_new_owner() -> None:
    sink = MemorySink()
    drained = threading.Event()
    batches = [[msg(0, 0), msg(1, 0)], [msg(0, 1), msg(1, 1)], [msg(0, 2)]]
    source = CheckedSource(sink, batches, [(T, 0), (T, 1)], drained)
    step = Step(sink)
    revoked: list[list[Position]] = []

    def on_revoke(partitions: list[Position]) -> None:
        # by the time the component hears of it, what partition 1 led to is committed
        revoked.append(partitions)
        assert source.committed and source.committed[-1].get((T, 1)) == 1

    runner = Runner(
        source,
        sink,
        step,
        Counters("t"),
        stop=drained,
        pace=Pace(commit_interval_s=3600),
        hooks=Hooks(on_revoke=on_revoke),
    )
    source.rebalance(1, "revoke", [(T, 1)])
    runner.run(max_seconds=30)
    assert revoked == [[(T, 1)]]
    assert step.seen == [(0, 0), (1, 0), (0, 1), (0, 2)]  # (1, 1) fetched, but gone
    assert source.committed == [{(T, 0): 1, (T, 1): 1}, {(T, 0): 3}]
    assert runner.assignment == {(T, 0)}


def test_lost_partitions_are_dropped_without_a_commit() -> None:
    sink = MemorySink()
    drained = threading.Event()
    source = CheckedSource(sink, [[msg(0, 0), msg(1, 0)], [msg(0, 1)]], [(T, 0), (T, 1)], drained)
    runner = Runner(
        source, sink, Step(sink), Counters("t"), stop=drained, pace=Pace(commit_interval_s=3600)
    )
    source.rebalance(1, "lost", [(T, 1)])
    runner.run(max_seconds=30)
    assert source.committed == [{(T, 0): 2}]  # nothing for partition 1: its new owner has it


def test_a_stop_mid_batch_commits_only_what_was_processed() -> None:
    _, source, _, step = run([[msg(0, 0), msg(0, 1), msg(0, 2)]], stop_at=(0, 1))
    assert step.seen == [(0, 0), (0, 1)]
    assert source.committed == [{(T, 0): 2}]  # (0, 2) is read again at the next start


class FailingSource(CheckedSource):
    def __init__(self, *args: object, fails: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fails = fails

    def commit(self, offsets: dict[Position, int]) -> bool:
        if self.fails:
            self.fails -= 1
            return False
        return super().commit(offsets)


class StuckSink(MemorySink):
    def __init__(self, stuck: int) -> None:
        super().__init__()
        self.stuck = stuck

    def poll(self, timeout: float) -> int:
        return 0 if self.stuck else super().poll(timeout)  # nothing is delivered while stuck

    def flush(self, timeout: float) -> int:
        if self.stuck:
            self.stuck -= 1
            return self.pending
        return super().flush(timeout)


def test_deliveries_are_served_every_turn_so_a_broker_that_keeps_up_never_pauses_reading() -> None:
    """A producer counts a record as waiting until its delivery report is served. Served only
    at commits (every second), the reports of a fast step filled the backlog within the
    second, and reading paused and resumed over and over though the broker kept up."""
    sink = MemorySink()  # delivers everything at each poll: a broker that keeps up
    batches = [[msg(0, 5 * b + i) for i in range(5)] for b in range(10)]
    drained = threading.Event()
    source = CheckedSource(sink, batches, [(T, 0)], drained)
    runner = Runner(
        source,
        sink,
        Step(sink),
        Counters("t"),
        stop=drained,
        pace=Pace(commit_interval_s=3600, backlog=8),
    )
    runner.run(max_seconds=30)
    assert len(sink.on("out")) == 50 and source.committed == [{(T, 0): 50}]
    assert sink.peak <= 5 and source.pauses == []


@pytest.mark.parametrize("cause", ["commit fails", "deliveries outstanding"])
def test_a_commit_not_made_is_carried_by_the_next_one(cause: str) -> None:
    sink = StuckSink(stuck=1 if cause == "deliveries outstanding" else 0)
    drained = threading.Event()
    batches = [[msg(0, 0)], [msg(0, 1)]]
    fails = 1 if cause == "commit fails" else 0
    source = FailingSource(sink, batches, [(T, 0)], drained, fails=fails)
    runner = Runner(
        source, sink, Step(sink), Counters("t"), stop=drained, pace=Pace(commit_interval_s=0)
    )
    runner.run(max_seconds=30)
    assert source.committed == [{(T, 0): 2}]


def test_nothing_is_read_until_the_component_is_ready() -> None:
    sink = MemorySink()
    drained = threading.Event()
    source = MemorySource([[msg(0, 0)]], [(T, 0)], drained)
    step = Step(sink)
    Runner(source, sink, step, Counters("t"), stop=drained, hooks=Hooks(ready=lambda: False)).run(
        0.5
    )
    assert step.seen == [] and source.batches  # left unread


def test_counters_are_exported_on_the_metrics_port() -> None:
    counters = Counters("trainer")
    counters.read["examples"] += 3
    counters.done["learned"] += 2
    counters.reject("examples", "future")
    served = serve_metrics(Settings(metrics_port=0), counters)
    assert served.port is not None
    url = f"http://127.0.0.1:{served.port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'rtml_records_read_total{component="trainer",topic="examples"} 3.0' in text
    assert 'rtml_records_done_total{component="trainer",outcome="learned"} 2.0' in text
    assert (
        'rtml_records_rejected_total{component="trainer",reason="future",topic="examples"} 1.0'
        in text
    )
    served.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    assert serve_metrics(Settings(), counters).port is None  # unset: nowhere


def test_a_stateful_component_commits_behind_what_it_holds_open_and_catches_up_later() -> None:
    """The feature pipeline's case: a record whose window is still open must be read again
    after a restart, so the commit stops at it. A commit lowered that way keeps its offset
    pending, and a later commit (the window closed, no new record) moves it on."""
    sink = MemorySink()
    drained = threading.Event()
    batches: list[list[Message]] = [[msg(0, 0), msg(0, 1), msg(0, 2)], [], []]
    source = CheckedSource(sink, batches, [(T, 0)], drained)
    open_from = {0: 1}  # the record at offset 1 opened a window that is still open
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            open_from.clear()  # the window closed (a quiet symbol's idle close)

    def committable(offsets: dict[Position, int]) -> dict[Position, int]:
        return {(t, p): min(open_from.get(p, o), o) for (t, p), o in offsets.items()}

    runner = Runner(
        source,
        sink,
        Step(sink),
        Counters("t"),
        stop=drained,
        pace=Pace(commit_interval_s=0),
        hooks=Hooks(tick=tick, committable=committable),
    )
    runner.run(max_seconds=30)
    assert source.committed[0] == {(T, 0): 1}  # behind the open window
    assert source.committed[-1] == {(T, 0): 3}  # once it closed, with no record since
    assert not runner.processed


def test_a_commit_waits_for_what_the_component_makes_durable() -> None:
    sink = MemorySink()
    drained = threading.Event()
    source = CheckedSource(sink, [[msg(0, 0)], [msg(0, 1)]], [(T, 0)], drained)
    durable = iter([False, True, True])  # a store away at the first commit
    runner = Runner(
        source,
        sink,
        Step(sink),
        Counters("t"),
        stop=drained,
        pace=Pace(commit_interval_s=0),
        hooks=Hooks(before_commit=lambda: next(durable)),
    )
    runner.run(max_seconds=30)
    assert source.committed == [{(T, 0): 2}]  # the first commit was not made; the next carries it


def test_a_reject_a_replay_finds_dead_lettered_already_is_not_sent_twice() -> None:
    """After a restart the same bad records are read again; the component knows which of them
    the DLQ holds already (the feature pipeline reads it back)."""
    on_dlq = {f"{T}[0]@1"}
    runner, _, sink, _ = run(
        [[msg(0, 0, b"bad a"), msg(0, 1, b"bad b"), msg(0, 2, b'"' * 600_000)]],
        hooks=Hooks(replayed=lambda topic, key, value: orjson.loads(value)["origin"] in on_dlq),
    )
    dead = [orjson.loads(v or b"")["origin"] for _, v in sink.on(f"{T}.dlq")]
    assert dead == [f"{T}[0]@0", f"{T}[0]@2"]  # the guard's reject too
    assert runner.counters.rejected_by(T) == {"wrong_type": 1, "too_large": 1}
    assert runner.counters.done["replayed"] == 1


def test_a_component_waiting_on_a_service_holds_its_partitions_and_steps_what_came_after() -> None:
    """A write waiting on Redis calls `hold` every half second: the partitions pause and the
    consumer polls (the group keeps the member). A revoke meanwhile commits nothing (the write
    is not done); what a poll still handed out is stepped after `release`, in order."""
    sink = MemorySink()
    drained = threading.Event()
    source = CheckedSource(sink, [[msg(0, 0)], [msg(0, 1)], [msg(0, 2)]], [(T, 0), (T, 1)], drained)
    source.rebalance(1, "revoke", [(T, 1)])
    step = Step(sink)
    runner = Runner(
        source, sink, step, Counters("t"), stop=drained, pace=Pace(commit_interval_s=3600)
    )
    waited = False

    def write() -> None:  # the component's write after each batch
        nonlocal waited
        if step.seen == [(0, 0)] and not waited:
            waited = True
            runner.hold()  # Redis is away; the revoke comes in this poll
            source.paused.clear()  # a record fetched before the pause is handed out anyway
            runner.hold()
            runner.hold()
            assert step.seen == [(0, 0)]  # nothing is stepped while the write waits
        runner.release()

    runner.hooks = Hooks(tick=write)
    runner.run(max_seconds=30)
    assert step.seen == [(0, 0), (0, 1), (0, 2)]
    assert source.pauses[0] == [(T, 0), (T, 1)] and source.consumed_paused >= 1
    assert source.committed == [{(T, 0): 3}]  # the revoke while held committed nothing
    assert not source.paused
