"""The monitor's web page and API: `rtml monitor`.

`GET /` is the dashboard (price, predictions vs actuals, rolling MAE, champion changes,
staleness; it refreshes every 2 s), `GET /api/state` the JSON it draws, `/metrics` Prometheus
text, `/healthz` a liveness probe. With `RTML_API_TOKEN` set, the data endpoints need the bearer
token; open the page as `/?token=...` and it sends the token itself.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rtml.settings import Settings

from .monitor import TOP_SYMBOLS
from .monitor_service import MonitorCollector, MonitorService
from .requests import require_token

log = logging.getLogger(__name__)


SECURITY_HEADERS = {
    # the page holds the bearer token: only its own script runs, data is fetched from here only
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token may be in the page's query string
}


def create_dashboard_app(service: MonitorService) -> FastAPI:
    settings = service.settings
    app = FastAPI(title="rtml monitor", version="0.1.0")
    registry = CollectorRegistry()
    registry.register(MonitorCollector(service.monitor))
    registry.register(service.counters)  # the shared loop's: read, done, rejected by class
    static = resources.files("rtml.serving").joinpath("static")
    page = static.joinpath("dashboard.html").read_text()
    script = static.joinpath("dashboard.js").read_text()
    style = static.joinpath("dashboard.css").read_text()

    @app.middleware("http")
    async def protect(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def authorize(request: Request) -> None:
        require_token(settings, request)

    auth = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return page

    @app.get("/dashboard.js")
    def dashboard_script() -> Response:
        return Response(script, media_type="text/javascript")

    @app.get("/dashboard.css")
    def dashboard_style() -> Response:
        return Response(style, media_type="text/css")

    @app.get("/api/state", dependencies=auth)
    def state(
        points: int = 500, symbol: str | None = None, top: int = TOP_SYMBOLS, page: int = 0
    ) -> dict[str, Any]:
        """What the page draws: one symbol's series and one page of the error table, so its
        size and the time it holds the monitor's lock do not grow with the symbols."""
        with service.lock:
            snapshot = service.monitor.snapshot(
                points=max(1, min(points, 10_000)),
                symbol=symbol,
                top=max(1, min(top, 100)),
                page=max(0, page),
            )
        return {**snapshot, "decision": service.decision}

    @app.get("/metrics", dependencies=auth)
    def prometheus() -> Response:
        with service.lock:
            body = generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_monitor(settings: Settings, max_seconds: float | None = None) -> None:
    """Consume in a background thread, serve the dashboard until stopped."""
    import uvicorn

    service = MonitorService(settings)
    failure: list[Exception] = []

    def consume() -> None:
        try:
            service.run(max_seconds)
        except Exception as exc:  # e.g. Kafka unreachable: the process must not exit 0
            failure.append(exc)

    worker = threading.Thread(target=consume, name="monitor")
    worker.start()
    config = uvicorn.Config(
        create_dashboard_app(service),
        host=settings.monitor_host,
        port=settings.monitor_port,
        log_level="warning",
    )
    server = uvicorn.Server(config)

    def stop_server_when_done() -> None:  # --duration ends the consumer first
        worker.join()
        server.should_exit = True

    threading.Thread(target=stop_server_when_done, daemon=True).start()
    log.info("dashboard on http://%s:%s/", settings.monitor_host, settings.monitor_port)
    try:
        server.run()
    finally:
        service.stop.set()
        worker.join()
    if failure:
        raise failure[0]
