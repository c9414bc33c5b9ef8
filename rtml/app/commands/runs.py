"""The whole loop at once: `demo` on the synthetic market or a file, `evaluate` on a real one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rtml.app.commands.options import reading_options, source_option, target_options
from rtml.app.datasets import DATASETS
from rtml.settings import Settings

if TYPE_CHECKING:
    from rtml.pipelines.market.files import Reading


@click.command()
@click.option("--duration", type=float, default=None, help="Seconds to run [until Ctrl-C].")
@source_option
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
@target_options
@reading_options
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
    from rtml.app.demo import Demo, DemoRun, own_stack
    from rtml.app.stack import Stack

    replaying = source != "synthetic" and bool(Path(source).suffix)
    if replaying:
        # a file: a stack of its own, so a re-run starts from the same clean split
        folder = settings.state / "demos" / time.strftime("%Y%m%d%H%M%S")
        settings = own_stack(settings, folder, keep_ports=True)
        click.echo(f"== replaying {source} on a stack of its own in {folder}")
    plan = DemoRun(
        source=source,
        days=days,
        speed=speed,
        seed=seed,
        reading=reading,
        own_ports=replaying,
        register_interval_s=register_interval,
    )
    run = Demo(settings, plan, out=click.echo)
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


@click.command()
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
@target_options
@reading_options
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
