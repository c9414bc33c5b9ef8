"""The embedded stack and the Feast repo: `up`, `down`, `status`, `env`, `feast-apply`."""

from __future__ import annotations

import shlex
import time

import click

from rtml.settings import Settings


@click.command()
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


@click.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the services that `rtml up` started; external ones are left alone."""
    from rtml.app.stack import Stack

    stopped = Stack(settings).down()
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@click.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Show the stack's services, rtml's running services (health, consumer lag, the version
    served) and each model's champion and who chose it."""
    from rtml.app.stack import Stack
    from rtml.app.status import model_lines, service_lines

    stack = Stack(settings)
    rows = stack.status()
    for s in rows:
        click.echo(s.line())
    last = stack.last_up()
    if last:
        click.echo(f"last up took {float(last['seconds']):.1f} s")  # type: ignore[arg-type]
    if not all(s.healthy for s in rows):
        raise SystemExit(1)
    for line in service_lines(settings):
        click.echo(line)
    for line in model_lines(settings):
        click.echo(line)


@click.command()
@click.pass_obj
def env(settings: Settings) -> None:
    """Print `export` lines for a shell that runs `feast` by hand: eval "$(rtml env)".

    They name the Feast repo (RTML_FEATURE_REPO: inside the package, once installed), its
    configuration for these settings (written now) and the state directory; then
    `cd "$RTML_FEATURE_REPO" && feast apply` works on rtml's stack."""
    from rtml import feast_config

    feast_config.write_feast_yaml(settings)
    exports = {"RTML_FEATURE_REPO": str(settings.feature_repo), **feast_config.feast_env(settings)}
    for key, value in exports.items():
        click.echo(f"export {key}={shlex.quote(value)}")


@click.command("feast-apply")
@click.pass_obj
def feast_apply(settings: Settings) -> None:
    """Apply feature_repo/ to the configured registry and online store."""

    from rtml.app.stack import Stack

    stack = Stack(settings)
    stack.wait_feast(stack.feast_apply(), time.monotonic() + settings.up_timeout_s)
    click.echo(f"applied {settings.feature_repo}")
