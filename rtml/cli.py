"""The `rtml` command: the entrypoint where settings are read and logging is configured."""

from __future__ import annotations

import logging
import shlex
import sys

import click

from rtml.errors import RtmlError
from rtml.settings import Settings


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """rtml: real-time ML with incremental re-training, centred on a feature store."""
    _setup_logging(verbose)
    ctx.obj = Settings()


@cli.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Start the embedded stack (or reuse what is healthy), apply Feast, create topics."""
    from rtml.stack import Stack

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
    from rtml.stack import Stack

    stopped = Stack(settings).down()
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cli.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Show each service, its address and health, and how long the last `up` took."""
    from rtml.stack import Stack

    stack = Stack(settings)
    rows = stack.status()
    for s in rows:
        click.echo(s.line())
    last = stack.last_up()
    if last:
        click.echo(f"last up took {float(last['seconds']):.1f} s")  # type: ignore[arg-type]
    if not all(s.healthy for s in rows):
        raise SystemExit(1)


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
    import time

    from rtml.stack import Stack

    stack = Stack(settings)
    stack.wait_feast(stack.feast_apply(), time.monotonic() + settings.up_timeout_s)
    click.echo(f"applied {settings.feature_repo}")


def main() -> None:
    try:
        cli()
    except RtmlError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
