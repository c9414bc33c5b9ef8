"""The prediction API: the champion model on online features from Feast, over HTTP.

`GET /predict/{symbol}` reads the symbol's online features and predicts, on the event loop
ahead of FastAPI (`FastPredict`); `POST /predict` takes explicit feature rows. `/healthz` says
the process is up, `/readyz` that a model is loaded and
Redis answers, `/metrics` is Prometheus text. With `RTML_API_TOKEN` set, predictions and metrics
need `Authorization: Bearer <token>`; the probes stay open for orchestrators.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from rtml import feature_store as fs
from rtml.pipelines.features.indicators import FEATURE_NAMES
from rtml.settings import Settings

from .breaker import OutageBreaker
from .model_holder import BASELINE, ModelHolder, ModelRouter, Served, models_for
from .requests import BadInput, check_token, json_response, parse_rows
from .singleflight import SingleFlight

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


STALENESS = (
    "staleness_s: event time of these features minus the newest label time the model learned "
    "(trained_through), so a replay at any speed reads the same; feature_age_s: wall-clock "
    "now minus the features' event time, negative while a replay runs ahead of the clock. "
    "model 'baseline': no version has beaten the naive baseline yet, so it is served: "
    "prediction 0, no change"
)


class Metrics:
    """The API's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "rtml_request_seconds",
            "Request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
        )
        self.predictions = Counter(
            "rtml_predictions", "Predictions served", ["endpoint"], registry=self.registry
        )
        self.errors = Counter("rtml_errors", "Failed requests", ["reason"], registry=self.registry)
        self.by_symbol, self.by_rows = (self.predictions.labels(e) for e in ("symbol", "rows"))
        self.symbol_latency, self.rows_latency = (
            self.latency.labels(e) for e in ("symbol", "rows")
        )
        self.online_reads = Counter(
            "rtml_online_reads",
            "Online-store reads made: concurrent requests for one symbol share one",
            registry=self.registry,
        )
        self.version = Gauge(
            "rtml_model_version",
            "Served model version (0 while the naive baseline is served)",
            registry=self.registry,
        )
        self.baseline = Gauge(
            "rtml_serving_baseline",
            "1 while no version has earned champion and the naive baseline (no change) is served",
            registry=self.registry,
        )
        self.model_staleness = Gauge(
            "rtml_model_staleness_seconds",
            "Now minus the newest label time the served model learned",
            registry=self.registry,
        )
        self.feature_staleness = Gauge(
            "rtml_feature_staleness_seconds",
            "Now minus the event time of the last features served",
            registry=self.registry,
        )
        self.load_failures = Gauge(
            "rtml_model_load_failures", "Model versions that failed to load", registry=self.registry
        )


class FastPredict:
    """`GET /predict/{symbol}` straight on ASGI, ahead of FastAPI.

    The read and the prediction take about 0.6 ms; FastAPI's routing, dependency injection,
    middleware and the hop to a worker thread took as long again, on the one core a replica
    has. Everything else (POST, the probes, /metrics, the docs) goes to FastAPI, which still
    declares this route for its OpenAPI page. Answers and errors are the same bytes.
    """

    PREFIX = "/predict/"

    def __init__(self, app: FastAPI, predictor: Predictor) -> None:
        self.app, self.predictor = app, predictor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # routes, state, openapi(): FastAPI's own

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope.get("method") != "GET" or not path.startswith(self.PREFIX) or path == self.PREFIX:
            await self.app(scope, receive, send)
            return
        predictor = self.predictor
        response: Response
        try:
            authorization = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
            predictor.check_authorization(authorization)
            response = predictor.for_symbol(path[len(self.PREFIX) :])
        except HTTPException as exc:
            response = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        await response(scope, receive, send)


class Predictor:
    """What the endpoints do, apart from FastAPI's wiring."""

    def __init__(
        self, settings: Settings, holder: ModelHolder | ModelRouter, store: FeatureStore
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.store = store
        self.metrics = Metrics()
        self.redis_errors = fs.redis_errors()
        self.reads: SingleFlight[dict[str, list[Any]]] = SingleFlight()
        self.breaker = OutageBreaker(self._ping_store, self.redis_errors)

    def _ping_store(self) -> None:
        import redis

        timeout = self.settings.redis_timeout_s
        with redis.Redis.from_url(
            self.settings.redis, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as client:
            client.ping()

    def online_row(self, symbol: str) -> dict[str, list[Any]]:
        """The symbol's online features (callers on threads share a read under way). While
        the store is known to be down, its error at once (see `OutageBreaker`)."""
        self.breaker.check()

        def read() -> dict[str, list[Any]]:
            self.metrics.online_reads.inc()
            return fs.online_features(self.store, [symbol], with_timestamps=True)

        try:
            return self.reads.do(symbol, read)
        except self.redis_errors as exc:
            self.breaker.failed(exc)
            raise

    async def authorize(self, request: Request) -> None:
        """Async, so it runs on the event loop instead of taking a worker thread per request."""
        self.check_authorization(request.headers.get("authorization", "").encode())

    def check_authorization(self, given: bytes) -> None:
        """The bearer token (when one is set), counted when it is missing or wrong."""
        try:
            check_token(self.settings, given)
        except HTTPException:
            self.metrics.errors.labels("unauthorized").inc()
            raise

    def served(self, symbol: str | None) -> Served:
        self.metrics.load_failures.set(self.holder.load_failures)
        if symbol is None and self.holder.sharded:
            self.metrics.errors.labels("no_symbol").inc()
            raise HTTPException(422, "models are sharded: pass ?symbol= to choose its model")
        if self.holder.model_for(symbol or "") is None:
            self.metrics.errors.labels("unknown_symbol").inc()
            raise HTTPException(404, f"no shard in RTML_SHARDS serves {symbol!r:.80}")
        current = self.holder.for_symbol(symbol or "")
        if current is None:
            self.metrics.errors.labels("no_model").inc()
            raise HTTPException(
                503,
                f"no model of {', '.join(self.holder.missing())} loaded yet: the registry "
                "(MLFLOW_TRACKING_URI) has not answered; serving starts once it does",
            )
        return current

    @staticmethod
    def _predict(model: Served, x: dict[str, float]) -> float:
        value = model.scorer.predict_one(x)
        return float(value) if math.isfinite(value) else math.nan

    def for_symbol(self, symbol: str) -> Response:
        began = time.perf_counter()
        model = self.served(symbol)
        try:
            row = self.online_row(symbol)
        except self.redis_errors as exc:
            self.metrics.errors.labels("redis").inc()
            raise HTTPException(
                503, f"online store (Redis) unreachable: {exc}; serving resumes when it is back"
            ) from exc
        x = {n: float(row[n][0]) for n in FEATURE_NAMES if row.get(n, [None])[0] is not None}
        if not x:
            self.metrics.errors.labels("unknown_symbol").inc()
            raise HTTPException(404, f"no online features for {symbol!r:.80}")
        feature_ts = max(row[f"{n}__ts"][0] for n in x)
        now = time.time()
        prediction = self._predict(model, x)
        m = self.metrics
        m.by_symbol.inc()
        m.version.set(float(model.version))
        m.baseline.set(float(model.model == BASELINE))
        m.feature_staleness.set(now - feature_ts)
        if math.isfinite(model.trained_through):
            m.model_staleness.set(now - model.trained_through)
        m.symbol_latency.observe(time.perf_counter() - began)
        return json_response(
            {
                "symbol": symbol,
                "prediction": prediction,
                **self._model_fields(model),
                "features": x,
                "feature_timestamp": feature_ts,
                "feature_age_s": now - feature_ts,
                "staleness_s": feature_ts - model.trained_through,
                "staleness": STALENESS,
            }
        )

    async def for_rows(self, request: Request, symbol: str | None = None) -> Response:
        """The body is read only here, after the token was checked, and parsed strictly."""
        began = time.perf_counter()
        try:
            body = await request.body()
            rows = parse_rows(body, self.settings.max_batch_rows, self.settings.max_body_bytes)
        except BadInput as exc:
            self.metrics.errors.labels("too_large" if exc.status == 413 else "bad_input").inc()
            raise HTTPException(exc.status, str(exc)) from None
        model = self.served(symbol)
        out = [self._predict(model, x) for x in rows]
        self.metrics.by_rows.inc(len(out))
        self.metrics.rows_latency.observe(time.perf_counter() - began)
        return json_response({"predictions": out, **self._model_fields(model)})

    @staticmethod
    def _model_fields(model: Served) -> dict[str, Any]:
        return {
            "model": model.model,
            "model_version": model.version,
            "model_alias": model.alias,
            "trained_through": model.trained_through,
        }

    def readiness(self) -> list[str]:
        problems = [f"no version of {name} loaded" for name in self.holder.missing()]
        try:
            import redis

            redis.Redis.from_url(
                self.settings.redis, socket_timeout=self.settings.redis_timeout_s
            ).ping()
        except Exception as exc:
            problems.append(f"Redis unreachable: {exc}")
        return problems


def create_app(
    settings: Settings, holder: ModelHolder | ModelRouter, store: FeatureStore
) -> FastPredict:
    # a body over the limit is refused with a 413 as it arrives, declared length or not
    guarded = settings.api_token is not None  # the docs too: they list what the API serves
    hidden: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="rtml predictor",
        version="0.1.0",
        max_body_size=settings.max_body_bytes,
        **(hidden if guarded else {}),
    )
    predictor = app.state.predictor = Predictor(settings, holder, store)
    auth = [Depends(predictor.authorize)]
    if guarded:
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", dependencies=auth, include_in_schema=False)
        def docs() -> Response:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="rtml predictor")

    app.get("/predict/{symbol:path}", dependencies=auth)(predictor.for_symbol)
    app.post("/predict", dependencies=auth)(predictor.for_rows)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        problems = predictor.readiness()
        body = {"ready": not problems, "problems": problems, "serving": predictor.holder.served()}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/metrics", dependencies=auth)
    def prometheus() -> Response:
        return Response(generate_latest(predictor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return FastPredict(app, predictor)


def serve(settings: Settings) -> None:
    """`rtml serve`: load the champion, poll its alias, serve until stopped."""
    import uvicorn

    holder = models_for(settings)
    holder.refresh()
    holder.start()
    app = create_app(settings, holder, fs.open_store(settings))
    # Everything loaded so far (Feast, MLflow, the model) lives as long as the process: frozen,
    # the collector stops walking it, and a full collection no longer pauses requests ~100 ms.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            access_log=settings.api_access_log,
        )
    finally:
        holder.stop()
