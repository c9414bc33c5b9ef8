"""The reference for rtml's HTTP latency: the least a server can do and still answer from Feast.

One ASGI callable under uvicorn, with uvicorn's defaults as `rtml serve` has them: every
request reads the symbol's online features through Feast (the same call `rtml serve` makes)
and answers them as JSON. No model, no token, no validation, no metrics. Loaded by the same
generator at the same rate on the same CPUs as `rtml serve`, its latency is what the machine,
HTTP and Feast cost together; the ratio to it is what rtml adds.

Run as `python -m bench.bare_server`, configured by the environment like `rtml serve`.
"""

from __future__ import annotations

import gc
from typing import Any

import orjson

from rtml import feature_store as fs
from rtml.settings import Settings


def make_app(store: Any) -> Any:
    features = fs.feature_service(store)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        symbol = scope["path"].rsplit("/", 1)[-1]
        values = fs.online_features(store, [symbol], features, with_timestamps=True)
        body = orjson.dumps(values)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    settings = Settings()
    app = make_app(fs.open_store(settings))
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
