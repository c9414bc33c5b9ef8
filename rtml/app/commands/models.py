"""Training and serving: `train`, `retrain`, `promote`, `rollback`, `serve`, `predict-stream`,
`monitor`."""

from __future__ import annotations

import threading

import click

from rtml.app.commands.options import (
    install_signal_handlers,
    reachable_or_exit,
    target_options,
)
from rtml.settings import Settings


@click.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--max-examples", type=int, default=None, help="Stop once this many are learned.")
@click.pass_obj
@target_options
def train(settings: Settings, duration: float | None, max_examples: int | None) -> None:
    """Run the trainer: warm start or resume, learn from `examples`, checkpoint, gate."""
    from rtml.kafka import Topics
    from rtml.pipelines.training.trainer import Trainer
    from rtml.presence import announce

    local = settings.as_shard()
    trainer = Trainer(local)
    examples = (Topics.of(local).examples,)
    announce(local, "trainer", group=trainer.group_id, topics=examples, model=local.model_name)
    install_signal_handlers(trainer.stop)
    learner = trainer.run(max_seconds=duration, max_examples=max_examples)
    click.echo(f"learned {learner.learned} examples; metrics {learner.metrics()}")


@click.command()
@click.pass_obj
@target_options
def retrain(settings: Settings) -> None:
    """Refit from the offline store now, register the result and put it through the gate."""
    from rtml.pipelines.training.retrain import retrain as run_retrain

    version, decision = run_retrain(settings.as_shard())
    verdict = "promoted to champion" if decision.promote else "not promoted"
    click.echo(f"version {version}: {decision.reason}; {verdict}")


@click.command()
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


@click.command()
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


@click.command()
@click.pass_obj
def serve(settings: Settings) -> None:
    """Serve predictions over HTTP from the champion model, swapping in new champions."""
    reachable_or_exit(settings, "mlflow", "redis")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was in
    # place before; this one lets the finished server exit 0 instead of dying by the signal.
    from rtml.presence import announce
    from rtml.serving.app import serve as run_server

    install_signal_handlers(threading.Event())
    url = f"http://{settings.api_host}:{settings.api_port}"
    announce(settings, "api", url=url, model=settings.model_name)
    run_server(settings)


@click.command("predict-stream")
@click.option("--group", default="rtml-predictor", show_default=True, help="Consumer group.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def predict_stream(settings: Settings, group: str, duration: float | None) -> None:
    """Predict every `features` record with the champion, onto `predictions`."""
    reachable_or_exit(settings, "mlflow", "kafka")
    from rtml.presence import announce
    from rtml.serving.model_holder import models_for
    from rtml.serving.stream import StreamingPredictor

    holder = models_for(settings)
    holder.refresh()
    holder.start()
    predictor = StreamingPredictor(settings, holder, group_id=group)
    topics = (predictor.topics.features,)
    announce(settings, "predict-stream", group=group, topics=topics, model=settings.model_name)
    install_signal_handlers(predictor.stop)
    try:
        click.echo(f"predicted {predictor.run(max_seconds=duration)} records")
    finally:
        holder.stop()


@click.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
def monitor(settings: Settings, duration: float | None) -> None:
    """Join predictions with realized targets; serve the dashboard and /metrics."""
    reachable_or_exit(settings, "kafka")
    from rtml.presence import announce
    from rtml.serving.dashboard import run_monitor

    url = f"http://{settings.monitor_host}:{settings.monitor_port}"
    click.echo(f"dashboard: {url}/")
    announce(settings, "monitor", url=url, model=settings.model_name)
    install_signal_handlers(threading.Event())  # exit 0 after uvicorn's graceful shutdown
    run_monitor(settings, max_seconds=duration)
