"""`make bench`: throughput and cost figures, each beside a reference measured in the same run.

These machines are shared and noisy, so a figure alone says little; the ratio to a reference
taken moments before or after, on the same data, is what the report leads with. Runs its own
embedded Kafka and Redis in a temporary state directory.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.drift import bench_drift
from bench.figure import Figure
from bench.history import bench_read_back, bench_warm_start
from bench.pipeline import bench_kafka_pipeline, bench_offline_append, bench_processor
from bench.predictor import bench_predictor
from bench.scale import bench_symbols
from bench.staleness import bench_staleness
from bench.status import bench_status
from bench.trainer import bench_trainer
from rtml.app.processes import free_port
from rtml.app.stack import Stack
from rtml.settings import Settings

STEPS: dict[str, Callable[[Settings], list[Figure]]] = {
    "processor": lambda _: [bench_processor(600)],
    "pipeline": lambda s: [bench_kafka_pipeline(s, 600)],
    "read-back": lambda s: [bench_read_back(s)],
    "offline": lambda s: list(bench_offline_append(s)),
    "trainer": lambda s: bench_trainer(s, 15_000),
    "predictor": bench_predictor,
    "staleness": bench_staleness,
    "drift": bench_drift,
    "warm-start": bench_warm_start,
    "symbols": bench_symbols,
    "status": bench_status,
}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(STEPS),
        help=f"comma-separated steps to run, of: {', '.join(STEPS)}; the README is updated "
        "only when all run",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    out_dir = Path("bench-results")
    out_dir.mkdir(exist_ok=True)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            kafka_port=free_port(),
            redis_port=free_port(),
            mlflow_port=free_port(),
        )
        stack = Stack(settings, repick_ports=True)
        print("starting the embedded stack for the benchmark...", file=sys.stderr)
        try:  # a start that fails half way stops what it started, before its folder goes
            stack.up()
            settings = stack.settings  # the ports the services listen on
            for name in only:
                print(f"[{name}]", file=sys.stderr)
                for figure in STEPS[name](settings):
                    figures.append(figure)
                    print(figure.row(), file=sys.stderr)
        finally:
            stack.down()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {platform.python_version()}, {_cores()} cores"
    lines = [
        f"Benchmarks of {stamp} on {machine}.",
        "",
        "| figure | value | reference (same run) | ratio | goal |",
        "|---|---|---|---|---|",
        *(f.row() for f in figures),
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "report.json").write_text(
        json.dumps(
            {"date": stamp, "machine": machine, "figures": [asdict(f) for f in figures]}, indent=2
        )
    )
    if only == list(STEPS):
        _into_readme(Path("docs/benchmarks.md"), "\n".join(lines))  # every figure
        headline = [next((f for f in figures if f.name.startswith(h)), None) for h in HEADLINE]
        rows = [f.row() for f in headline if f is not None]
        _into_readme(Path("README.md"), "\n".join([*lines[:4], *rows]))  # one of each goal
        plot = out_dir / "drift.png"
        if plot.exists():  # the README shows the newest full run's plot
            Path("docs").mkdir(exist_ok=True)
            shutil.copyfile(plot, Path("docs") / "bench-drift.png")
    print("\n".join(lines))


HEADLINE = (
    "feature pipeline via Kafka",
    "trainer via Kafka with metrics",
    "HTTP /predict p99 at 491",
    "streaming predictions via Kafka",
    "drift: MAE of the incremental champion",
    "warm start seconds, 16 days",
)
"""The figures the README shows, the first of each name; docs/benchmarks.md shows them all."""


def _into_readme(readme: Path, table: str) -> None:
    """Put the table between the README's bench markers, so its numbers are the report's."""
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
