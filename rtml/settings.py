"""Typed, frozen settings: read from the environment (and `.env`) once, at the entrypoint.

Every external address comes from here, so the same code runs on the embedded single-machine
stack and on Kafka/Redpanda, Redis and an MLflow server elsewhere. The three addresses that
have a conventional variable of their own (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``,
``MLFLOW_TRACKING_URI``) are read from it; giving one marks that service as external, and
``rtml up`` then uses it instead of starting the embedded one.

>>> s = Settings(state_dir="/tmp/x", kafka_port=1234)
>>> s.kafka_bootstrap, s.kafka_external
('127.0.0.1:1234', False)
>>> Settings(redis_url="redis://:pw@cache:6380/2").feast_redis_connection
'cache:6380,db=2,password=pw,socket_timeout=1.0,socket_connect_timeout=1.0'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from rtml.errors import ConfigError

SERVICE_VARIABLES = {
    "kafka_bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS", "RTML_KAFKA_BOOTSTRAP_SERVERS"),
    "redis_url": ("REDIS_URL", "RTML_REDIS_URL"),
    "mlflow_tracking_uri": ("MLFLOW_TRACKING_URI", "RTML_MLFLOW_TRACKING_URI"),
}
"""The variables that point at external services, the usual name first."""


KAFKA_PASSTHROUGH = "RTML_KAFKA__"


def kafka_passthrough(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """librdkafka properties given as `RTML_KAFKA__<PROPERTY>` variables, `_` read as `.`.

    >>> kafka_passthrough({"RTML_KAFKA__CLIENT_ID": "rtml-1", "RTML_KAFKA__SSL_CA_LOCATION": "/ca"})
    {'client.id': 'rtml-1', 'ssl.ca.location': '/ca'}
    """
    return {
        name[len(KAFKA_PASSTHROUGH) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.upper().startswith(KAFKA_PASSTHROUGH) and len(name) > len(KAFKA_PASSTHROUGH)
    }


def _variable(field: str) -> str:
    """The environment variable a field is read from."""
    aliases = SERVICE_VARIABLES.get(field)
    return aliases[0] if aliases else f"RTML_{field.upper()}"


PACKAGE_DIR = Path(__file__).resolve().parent


def _feature_repo() -> Path:
    """The Feast repo: inside an installed package, or the checkout's top-level folder."""
    installed = PACKAGE_DIR / "feature_repo"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "feature_repo"


class Settings(BaseSettings):
    """All of rtml's configuration. Field ``foo`` is read from ``RTML_FOO`` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="RTML_", env_file=".env", extra="ignore", frozen=True
    )

    # Embedded stack
    state_dir: Path = Path(".rtml")
    bind_host: str = "127.0.0.1"
    kafka_port: int = Field(default=19092, ge=0, le=65535)
    redis_port: int = Field(default=16379, ge=0, le=65535)
    mlflow_port: int = Field(default=15000, ge=0, le=65535)
    up_timeout_s: float = Field(default=90.0, gt=0)

    # External services: when given, `rtml up` does not start the embedded one.
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices(*SERVICE_VARIABLES["kafka_bootstrap_servers"])
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices(*SERVICE_VARIABLES["redis_url"])
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices(*SERVICE_VARIABLES["mlflow_tracking_uri"])
    )

    redis_timeout_s: float = Field(default=1.0, gt=0)

    # Kafka clients
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # any librdkafka property, for every client rtml makes (TLS files, `client.id`, ...): from a
    # Java-style properties file, then RTML_KAFKA__<PROPERTY> variables (`_` for `.`:
    # RTML_KAFKA__SSL_CA_LOCATION=/etc/ca.pem), which win
    kafka_config_file: Path | None = None
    kafka_properties: dict[str, str] = Field(default_factory=lambda: kafka_passthrough(os.environ))
    topic_prefix: str = ""
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    # Measured on the embedded broker: eager `range` assignment and short group timeouts make
    # consumer groups settle in seconds; they are valid for Apache Kafka and Redpanda too.
    kafka_session_timeout_ms: int = Field(default=6000, gt=0)
    kafka_heartbeat_interval_ms: int = Field(default=1000, gt=0)
    kafka_max_poll_interval_ms: int = Field(default=10000, gt=0)

    # Feast
    feature_repo: Path = _feature_repo()
    feast_project: str = "rtml"
    # where training history is joined point-in-time: `file` reads each view's rows in the span
    # and joins them in this process (the embedded store); `duckdb` has Feast's DuckDB offline
    # store join them over the same parquet parts (pip install 'rtml[duckdb]'), as a
    # warehouse's store would where the data is
    offline_store: Literal["file", "duckdb"] = "file"

    # Market data and labels
    symbols: Annotated[tuple[str, ...], NoDecode] = ("BTC/USD", "ETH/USD", "SOL/USD")
    candle_seconds: int = Field(default=60, ge=1)
    # what a candle is labelled with H candles later (`pipelines.targets`): `return` or
    # `volatility`; H is at most `features.MAX_HORIZON`, the candles a symbol keeps less one
    target: Literal["return", "volatility"] = "return"
    horizon: int = Field(default=5, ge=1, le=100)
    allowed_lateness_s: float = Field(default=5.0, ge=0)
    # a window without trades: `flat` candle at the last close (24/7 markets), or `skip` it
    # (markets with sessions: H then counts candles that exist)
    gap_policy: Literal["flat", "skip"] = "flat"
    # how far past both its symbol's newest time and the clock an event time may be (never
    # under two candles), else `future` (event_time.future_reason). Wide by default, as the demo's
    # simulator runs ahead of the clock; a live deployment sets minutes
    max_future_s: float = Field(default=7 * 86400.0, gt=0)
    # the longest silence a symbol's series bridges (a longer one restarts it, with no flat
    # candles and no label across it), and how far a settled series may jump ahead in replay
    # time (a third record in a row agreeing on a longer jump is a real gap)
    max_silence_s: float = Field(default=7 * 86400.0, gt=0)
    # redenominations and splits, declared: {"SYMBOL": epoch seconds}. A trade more than
    # MAX_MOVE-fold from its symbol's last close is refused however many come in a row, except
    # the symbol's first trade at or after its declared time here, which restarts its level
    price_resets: dict[str, float] = Field(default_factory=dict)
    # the feature pipeline's commits: topics flushed, offline parts written, offsets committed
    commit_interval_s: float = Field(default=5.0, gt=0)
    # Prometheus metrics of the headless consumers (features, train, predict-stream); unset:
    # none. 0 takes a free port and logs it. The API and the monitor serve theirs on /metrics.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    # Model registry
    model_name: str = "rtml-price-change"
    # Scale-out by model shards: each shard's trainer owns some symbols and registers its own
    # model, `<model_name>-<shard>`; predictors route each symbol to its shard's champion.
    # RTML_SHARDS='{"majors": ["BTC/USD", "ETH/USD"], "alts": ["SOL/USD"]}'
    shards: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    shard: str | None = None  # set for a trainer: which shard it is
    experiment_name: str = "rtml"

    # Predictor
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    max_batch_rows: int = Field(default=1000, ge=1)
    model_poll_s: float = Field(default=1.0, gt=0)
    api_access_log: bool = True

    # Monitor and dashboard
    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(default=8001, ge=0, le=65535)
    monitor_history: int = Field(default=2000, ge=1)
    monitor_log_interval_s: float = Field(default=10.0, gt=0)

    # Trainer
    model: str = "ols"
    model_params: dict[str, float] = Field(default_factory=dict)
    warm_start_epochs: int = Field(default=1, ge=0)
    metrics_window: int = Field(default=500, ge=1)
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    # count-based checkpoints at most this often: catching up at thousands of examples a
    # second, one every `checkpoint_every` would keep the uploader busy, and it shares the
    # interpreter with learning
    checkpoint_min_interval_s: float = Field(default=1.0, ge=0)
    # a checkpoint that passes the gate becomes a model version at most this often
    register_interval_s: float = Field(default=120.0, ge=0)
    checkpoint_queue: int = Field(default=4, ge=1)
    # event time: a checkpoint every `checkpoint_every` examples and no other, each gated (and
    # registered and promoted when it passes) before the trainer learns on; so its decisions
    # fall on the same examples however fast the stream runs (`rtml evaluate` sets it)
    checkpoint_sync: bool = False
    max_mae: float = Field(default=0.05, gt=0)
    # the chance that a version no better than what is served (the champion, or the naive
    # forecast) is ever promoted over it, however many checkpoints are gated (`pipelines.gate`)
    gate_alpha: float = Field(default=0.05, gt=0, le=1)  # 1: every tested version passes
    # a candidate that errs more than the naive forecast on the newest examples by this many
    # block standard errors is refused, and a champion that does is retired
    gate_z: float = 2.0
    drift_delta: float = Field(default=0.002, gt=0, lt=1)
    drift_response: Literal["none", "reset", "challenger"] = "none"
    keep_versions: int = Field(default=50, ge=1)

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols_as_written(cls, value: object) -> object:
        """`RTML_SYMBOLS=BTC/USD,ETH/USD` as users write a list, or a JSON array, as `as_env`
        writes it; at least one symbol, each once.

        >>> Settings(symbols="BTC/USD, ETH/USD").symbols, Settings(symbols='["X/USD"]').symbols
        (('BTC/USD', 'ETH/USD'), ('X/USD',))
        """
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise ValueError(f"not a JSON array: {text[:80]!r}") from None
            else:
                value = [part.strip() for part in text.split(",")]
        if isinstance(value, list | tuple):
            if not value or any(not isinstance(v, str) or not v.strip() for v in value):
                raise ValueError("give one symbol or more, e.g. BTC/USD,ETH/USD")
            value = tuple(v.strip() for v in value)
            if len(set(value)) < len(value):
                raise ValueError(f"a symbol is given twice in {list(value)[:10]}")
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        """`RTML_API_TOKEN=` (empty) means no token, never the empty token.

        >>> Settings(api_token="").api_token is None
        True
        """
        return None if value == "" else value

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the environment (and `.env`), or a ConfigError naming each
        variable that is wrong and why, rather than a validation traceback.

        >>> os.environ["RTML_CANDLE_SECONDS"] = "0"
        >>> try:
        ...     Settings.from_env()
        ... except ConfigError as exc:
        ...     print(exc)
        RTML_CANDLE_SECONDS='0': Input should be greater than or equal to 1
        >>> del os.environ["RTML_CANDLE_SECONDS"]
        """
        try:
            return cls()
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                variable = _variable(field)
                given = error.get("input")
                shown = f"={given!r:.80}" if isinstance(given, str | int | float) else ""
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{variable}{shown}: {message}")
            raise ConfigError("; ".join(problems)) from None
        except SettingsError as exc:  # a JSON setting that is not JSON
            found = re.search(r'field "(\w+)"', str(exc))
            variable = _variable(found[1]) if found else "a setting"
            example = {
                "RTML_SHARDS": """ (e.g. '{"majors": ["BTC/USD"], "alts": ["SOL/USD"]}')""",
                "RTML_MODEL_PARAMS": """ (e.g. '{"lr": 0.01}')""",
            }.get(variable, "")
            raise ConfigError(
                f"{variable} is not valid JSON: {exc.__cause__ or exc}; write it as JSON{example}"
            ) from None

    def shard_model(self, shard: str) -> str:
        """The registered model of `shard`."""
        return f"{self.model_name}-{shard}"

    def as_shard(self) -> Settings:
        """A trainer's view of its shard: its symbols and its model; unchanged when unsharded.

        >>> s = Settings(shards={"a": ("X/USD",), "b": ("Y/USD",)}, shard="b").as_shard()
        >>> s.symbols, s.model_name
        (('Y/USD',), 'rtml-price-change-b')
        """
        if self.shard is None:
            return self
        if self.shard not in self.shards:
            raise ConfigError(
                f"RTML_SHARD={self.shard!r} is not one of RTML_SHARDS ({sorted(self.shards)}); "
                "set RTML_SHARDS to a JSON object of shard name -> symbols"
            )
        return self.model_copy(
            update={
                "symbols": tuple(self.shards[self.shard]),
                "model_name": self.shard_model(self.shard),
                "shard": None,
            }
        )

    def model_routes(self) -> dict[str, str]:
        """symbol -> registered model, for predictors; empty when unsharded.

        >>> Settings(shards={"a": ("X/USD", "Z/USD"), "b": ("Y/USD",)}).model_routes()["Y/USD"]
        'rtml-price-change-b'
        """
        routes: dict[str, str] = {}
        for shard, symbols in self.shards.items():
            for symbol in symbols:
                if symbol in routes:
                    raise ConfigError(f"{symbol} is in more than one of RTML_SHARDS")
                routes[symbol] = self.shard_model(shard)
        return routes

    @property
    def max_future_bound_s(self) -> float:
        """How far past both its newest time and the clock an event time may be:
        RTML_MAX_FUTURE_S, and never under two candles (one step from a window's first trade
        to the next's spans that)."""
        return max(self.max_future_s, 2.0 * self.candle_seconds)

    @property
    def max_silence_bound_s(self) -> float:
        """The longest silence a series bridges: RTML_MAX_SILENCE_S, never under two candles."""
        return max(self.max_silence_s, 2.0 * self.candle_seconds)

    @property
    def state(self) -> Path:
        return self.state_dir.resolve()

    @property
    def kafka_external(self) -> bool:
        return self.kafka_bootstrap_servers is not None

    @property
    def redis_external(self) -> bool:
        return self.redis_url is not None

    @property
    def mlflow_external(self) -> bool:
        return self.mlflow_tracking_uri is not None

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.bind_host}:{self.kafka_port}"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://{self.bind_host}:{self.redis_port}/0"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"

    @property
    def feast_redis_connection(self) -> str:
        """The Redis URL in Feast's ``host:port,key=value`` connection-string form."""
        url = urlparse(self.redis)
        parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
        db = url.path.lstrip("/")
        if db and db != "0":
            parts.append(f"db={db}")
        if url.password:
            parts.append(f"password={url.password}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        # without timeouts a Redis that stops answering would hang every read
        parts.append(f"socket_timeout={self.redis_timeout_s}")
        parts.append(f"socket_connect_timeout={self.redis_timeout_s}")
        return ",".join(parts)

    @property
    def offline_dir(self) -> Path:
        """Where the offline store's append-only parquet parts live."""
        return self.state / "offline"

    @property
    def feast_registry_path(self) -> Path:
        return self.state / "feast" / "registry.db"

    def child_env(self, *names: str) -> dict[str, str]:
        """This process's environment for a child that must use these settings' services:
        the `names` as `as_env` gives them, and the service locations stated outright, so a
        variable this process inherited or set (MLflow's `set_tracking_uri` exports
        MLFLOW_TRACKING_URI) cannot point the child at another stack.

        >>> before = os.environ.get("MLFLOW_TRACKING_URI")
        >>> settings = Settings(mlflow_port=9, mlflow_tracking_uri=None)
        >>> os.environ["MLFLOW_TRACKING_URI"] = "http://elsewhere:5000"  # as set_tracking_uri does
        >>> env = settings.child_env("mlflow_port")
        >>> "MLFLOW_TRACKING_URI" in env, env["RTML_MLFLOW_PORT"]
        (False, '9')
        >>> if before is None:
        ...     del os.environ["MLFLOW_TRACKING_URI"]
        ... else:
        ...     os.environ["MLFLOW_TRACKING_URI"] = before
        """
        inherited = {v for aliases in SERVICE_VARIABLES.values() for v in aliases}
        env = {k: v for k, v in os.environ.items() if k not in inherited}
        env.update(self.as_env(*names))
        for field, aliases in SERVICE_VARIABLES.items():
            value = getattr(self, field)
            if value is not None:
                env[aliases[0]] = value
        return env

    def as_env(self, *names: str) -> dict[str, str]:
        """The `RTML_*` variables that give a child process these settings' `names`.

        >>> env = Settings(symbols=("A/USD",), kafka_port=9, api_access_log=False).as_env(
        ...     "symbols", "kafka_port", "api_access_log")
        >>> env["RTML_SYMBOLS"], env["RTML_KAFKA_PORT"], env["RTML_API_ACCESS_LOG"]
        ('["A/USD"]', '9', 'false')
        """
        env = {}
        for name in names:
            value = getattr(self, name)
            if isinstance(value, tuple | dict):
                text = json.dumps(list(value) if isinstance(value, tuple) else value)
            elif isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, Path):
                text = str(value.resolve())
            else:
                text = str(value)
            env[f"RTML_{name.upper()}"] = text
        return env
