"""Errors a user can hit are one line that says what to do, with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtml.app.processes import free_port
from rtml.settings import Settings


def _rtml(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml.app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env | {"RTML_STATE_DIR": str(tmp_path / "state")} | extra


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # librdkafka writes its own connection log lines (%3|...); rtml's answer is the last line
    ours = [line for line in done.stderr.splitlines() if not line.startswith("%")]
    assert ours and ours[-1].startswith("error: "), done.stderr[-3000:]
    return ours[-1]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("RTML_CANDLE_SECONDS", "0", "RTML_CANDLE_SECONDS='0': Input should be greater than"),
        ("RTML_CANDLE_SECONDS", "1m", "RTML_CANDLE_SECONDS='1m': Input should be a valid int"),
        ("RTML_HORIZON", "-1", "RTML_HORIZON='-1'"),
        ("RTML_SYMBOLS", "", "RTML_SYMBOLS='': give one symbol or more"),
        ("RTML_SYMBOLS", "A/USD,A/USD", "a symbol is given twice"),
        ("RTML_KAFKA_PORT", "99999", "RTML_KAFKA_PORT='99999'"),
        ("RTML_SHARDS", "{majors: BTC}", "RTML_SHARDS is not valid JSON"),
    ],
)
def test_a_setting_that_is_wrong_says_which_and_why_in_one_line(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    """A symbol list written as users write lists was a traceback, and a candle length of 0
    was accepted (and divided by later)."""
    line = _one_line(_rtml(_env(tmp_path, **{variable: value}), "status", cwd=tmp_path))
    assert said in line, line


def test_symbols_are_read_as_users_write_a_list(tmp_path: Path) -> None:
    done = _rtml(_env(tmp_path, RTML_SYMBOLS="BTC/USD, ETH/USD"), "status", cwd=tmp_path)
    # the status of a stack that is not up (exit 1), not a settings error (exit 2)
    assert done.returncode == 1 and not done.stderr, done.stderr[-2000:]
    assert done.stdout.startswith("kafka")


def test_serve_and_predict_stream_with_mlflow_unreachable(tmp_path: Path) -> None:
    env = _env(tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    for command in ("serve", "predict-stream"):
        line = _one_line(_rtml(env, command, cwd=tmp_path))
        assert "MLflow" in line and "cannot be reached" in line and "rtml up" in line


def test_monitor_with_kafka_unreachable_exits_non_zero(tmp_path: Path) -> None:
    env = _env(tmp_path, RTML_KAFKA_PORT=str(free_port()), RTML_MONITOR_PORT=str(free_port()))
    line = _one_line(_rtml(env, "monitor", cwd=tmp_path))
    assert "Kafka" in line


@pytest.mark.integration
def test_promote_and_rollback_of_what_does_not_exist(settings: Settings, tmp_path: Path) -> None:
    env = _env(tmp_path) | settings.as_env("state_dir", "kafka_port", "redis_port", "mlflow_port")
    env["RTML_MODEL_NAME"] = f"nothing-{free_port()}"
    line = _one_line(_rtml(env, "promote", "99999", cwd=tmp_path))
    assert "no version 99999" in line and "rtml status" in line
    line = _one_line(_rtml(env, "rollback", cwd=tmp_path))
    assert "no earlier champion" in line and "rtml promote VERSION" in line


def test_a_candle_file_unlike_the_settings_is_refused_with_what_to_set(tmp_path: Path) -> None:
    daily = tmp_path / "daily.csv"
    days = [f"2024-01-{d:02d}" for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)]  # weekdays
    daily.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "".join(f"IDX,{d},1,2,0.5,1.5,100\n" for d in days)
    )
    line = _one_line(_rtml(_env(tmp_path), "backfill", "--source", str(daily), cwd=tmp_path))
    assert "RTML_CANDLE_SECONDS=86400" in line and "--gap-policy skip" in line


@pytest.mark.integration
def test_dlq_show_counts_reasons_and_replay_puts_records_back(
    settings: Settings, tmp_path: Path
) -> None:
    from rtml.dead_letters import dead_letter
    from rtml.kafka import Topics, dlq, ensure_topics, make_producer, read_messages

    local = settings.model_copy(update={"topic_prefix": f"dlq{free_port()}."})
    topics = Topics.of(local)
    ensure_topics(local, topics.with_dlqs())
    producer = make_producer(local)
    trade = b'{"symbol": "NEW/USD", "trade_id": "1", "price": 1, "size": 1, "side": "buy", "ts": 1}'
    dead_letter(producer, topics.trades, "unknown_symbol: not configured", trade, key=b"NEW/USD")
    dead_letter(producer, topics.trades, "not_json: oops", b"{oops", origin="trades[0]@7")
    dead_letter(producer, topics.trades, "too_large: big", b'"' * 100_000, origin="trades[1]@9")
    # a DLQ is a topic anyone can write to: what is not rtml's dead letter stops nothing
    for foreign in (b"garbage", b"[1, 2]", None, b'{"reason": "x: y", "raw_base64": "!!"}'):
        producer.produce(dlq(topics.trades), value=foreign)
    producer.flush(10)
    env = _env(tmp_path) | local.as_env(
        "state_dir", "kafka_port", "redis_port", "mlflow_port", "topic_prefix"
    )
    shown = _rtml(env, "dlq", "show", "trades", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "4 record(s)" in shown.stdout
    assert "3  other record(s) on it that are not rtml's dead letters" in shown.stdout
    for reason in ("unknown_symbol", "not_json", "too_large"):
        assert reason in shown.stdout

    replayed = _rtml(env, "dlq", "replay", "trades", "--reason", "unknown_symbol", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert "replayed 1 record(s)" in replayed.stdout
    assert read_messages(local, topics.trades, timeout=30) == [(b"NEW/USD", trade)]
    everything = _rtml(env, "dlq", "replay", "trades", cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr[-2000:]
    # 100 KB kept only its first 16; the copy that is not base64 cannot be read either
    assert "2 refused: the value was cut (or is not rtml's copy)" in everything.stdout
    assert "1 replayed by an earlier run" in everything.stdout  # each letter once
    assert "3 record(s) that are not rtml's dead letters left alone" in everything.stdout


def test_a_demo_or_evaluation_of_a_file_it_cannot_read_stops_before_starting_anything(
    tmp_path: Path,
) -> None:
    """A user's own column names: one line naming the file and the mapping to give, at once.
    A vendor's usual names (`Date`, `Name`) are understood without one."""
    path = tmp_path / "daily.csv"
    path.write_text("Day,O,H,L,C,V,Stock\n" + "2024-01-02,1,1,1,1,5,X\n" * 3)
    env = _env(tmp_path)
    for args in (["demo", "--source", str(path)], ["evaluate", str(path)]):
        line = _one_line(_rtml(env, *args, cwd=tmp_path))
        assert "daily.csv" in line and "--column" in line, line
    assert not (tmp_path / "state" / "kafka").exists()  # no stack was started
    # with the mapping the file is understood (too few rows to learn from, said as such)
    mapped = ["--column", "ts=Day", "--column", "symbol=Stock", "--column", "close=C"]
    mapped += ["--column", "open=O", "--column", "high=H", "--column", "low=L"]
    mapped += ["--column", "volume=V"]
    line = _one_line(_rtml(env, "evaluate", str(path), *mapped, cwd=tmp_path))
    assert "too few" in line, line
    vendor = tmp_path / "vendor.csv"
    vendor.write_text("Date,Open,High,Low,Close,Volume,Name\n" + "2024-01-02,1,1,1,1,5,X\n" * 3)
    line = _one_line(_rtml(env, "evaluate", str(vendor), cwd=tmp_path))
    assert "--format yahoo" in line, line  # the preset that reads it, and the command
    line = _one_line(_rtml(env, "evaluate", str(vendor), "--format", "yahoo", cwd=tmp_path))
    assert "too few" in line, line


def test_the_users_gap_policy_is_taken_and_a_file_with_sessions_asks_for_one(
    tmp_path: Path,
) -> None:
    """A gap policy the user set (`--gap-policy`, RTML_GAP_POLICY) is taken for any candle
    file; without one, a file whose market closes (a hole in most weeks) is refused with what
    to set, and one that never closes is replayed `flat`."""
    from rtml.app.commands.options import check_candle_file
    from rtml.errors import RtmlError
    from rtml.pipelines.market.files import AS_IS

    hourly = tmp_path / "hourly.csv"
    hours = [f"2024-01-0{1 + h // 24} {h % 24:02d}:00:00" for h in range(96)]
    hourly.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "".join(f"FX,{h},1,2,0.5,1.5,100\n" for h in hours)
    )
    daily = tmp_path / "daily.csv"
    days = [f"2024-01-{d:02d}" for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 15, 16)]
    daily.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        + "".join(f"IDX,{d},1,2,0.5,1.5,100\n" for d in days)
    )
    check_candle_file(Settings(candle_seconds=3600), hourly, AS_IS)
    for policy in ("flat", "skip"):
        check_candle_file(Settings(candle_seconds=3600, gap_policy=policy), hourly, AS_IS)
        check_candle_file(Settings(candle_seconds=86400, gap_policy=policy), daily, AS_IS)
    with pytest.raises(RtmlError, match=r"hole of 36 h or more in 2 of 2 weeks.*--gap-policy skip"):
        check_candle_file(Settings(candle_seconds=86400), daily, AS_IS)


def test_a_synthetic_source_takes_the_trades_per_candle(tmp_path: Path) -> None:
    """Scale benchmarks hold the traffic equal across symbol counts: fewer trades per candle
    for more symbols (`rtml feed` and `rtml backfill --trades-per-candle`)."""
    import threading

    from click.testing import CliRunner

    from rtml.app.cli import cli
    from rtml.app.commands.options import trade_source
    from rtml.pipelines.market.files import AS_IS
    from rtml.settings import Settings

    settings = Settings(state_dir=tmp_path, symbols=("A", "B"))
    counts = [
        len(list(trade_source(settings, "synthetic", 0, 100, 0.0, AS_IS, threading.Event(),
                               None, per_candle)))
        for per_candle in (1, 8)
    ]  # fmt: skip
    assert 200 <= counts[0] < 500 and 1200 < counts[1] < 2200, counts
    for command in ("feed", "backfill"):
        shown = CliRunner().invoke(cli, [command, "--help"])
        assert "--trades-per-candle" in shown.output, shown.output


def test_third_party_info_lines_are_quiet_unless_verbose() -> None:
    """Feast's "Registry cache expired" several times a second and the like drown rtml's own
    lines: libraries log from WARNING on, unless -v; librdkafka's info lines likewise."""
    import logging

    from rtml.app.cli import QUIET, _setup_logging
    from rtml.kafka import client_config
    from rtml.settings import Settings

    levels = {name: logging.getLogger(name).level for name in (*QUIET, "rtml")}
    root = logging.getLogger().level
    try:
        _setup_logging(verbose=False)
        logging.getLogger().setLevel(logging.INFO)  # as basicConfig sets it outside pytest
        assert not logging.getLogger("feast.infra.registry").isEnabledFor(logging.INFO)
        assert logging.getLogger("rtml.pipelines").isEnabledFor(logging.INFO)
        assert client_config(Settings())["log_level"] == 4
        _setup_logging(verbose=True)
        logging.getLogger().setLevel(logging.DEBUG)
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.NOTSET)  # -v: everything, as it comes
        assert client_config(Settings())["log_level"] == 7
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger().setLevel(root)
