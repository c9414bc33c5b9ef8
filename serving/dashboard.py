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

from rtml.serving.app import require_token
from rtml.serving.monitor import MonitorCollector, MonitorService
from rtml.settings import Settings

log = logging.getLogger(__name__)


def create_dashboard_app(service: MonitorService) -> FastAPI:
    settings = service.settings
    app = FastAPI(title="rtml monitor", version="0.1.0")
    registry = CollectorRegistry()
    registry.register(MonitorCollector(service.monitor))
    page = resources.files("rtml.serving").joinpath("static/dashboard.html").read_text()

    def authorize(request: Request) -> None:
        require_token(settings, request)

    auth = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return page

    @app.get("/api/state", dependencies=auth)
    def state(points: int = 500) -> dict[str, Any]:
        with service.lock:
            return service.monitor.snapshot(points=max(1, min(points, 10_000)))

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
