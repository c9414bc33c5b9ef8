"""The `rtml` command: the entrypoint where settings are read and logging is configured."""

from __future__ import annotations

import logging
import sys

import click

from rtml.app.commands import data, letters, models, runs, services
from rtml.app.processes import what_to_do
from rtml.errors import RtmlError
from rtml.settings import Settings

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


_SERVICES = {
    "mlflow": "MLflow",
    "requests": "MLflow",
    "urllib3": "MLflow",
    "confluent_kafka": "Kafka",
    "redis": "Redis",
}
"""The service behind an exception, by the module it was raised from."""
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
    name = _SERVICES[root]
    text = " ".join(str(exc).split())
    if any(marker in text for marker in _UNREACHABLE):
        what = f"{name} at {_address(name)} cannot be reached"
    else:
        what = f"{name} failed: {text[:300] or type(exc).__name__}"
    return f"{what}. {what_to_do(name)}"


for command in (
    services.up,
    services.down,
    services.status,
    services.env,
    services.feast_apply,
    data.feed,
    data.features,
    data.backfill,
    data.formats,
    models.train,
    models.retrain,
    models.promote,
    models.rollback,
    models.serve,
    models.predict_stream,
    models.monitor,
    runs.demo,
    runs.evaluate,
    letters.dlq,
    letters.skip,
    letters.compact,
):
    cli.add_command(command)


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
