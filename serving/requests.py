"""What a request to the predictor may carry: its token, and feature rows read strictly."""

from __future__ import annotations

import hmac
import math
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response

from rtml.pipelines.features.indicators import EXTRA_COLUMNS, FEATURE_NAMES
from rtml.records import BadRecord, decode_object
from rtml.settings import Settings


def require_token(settings: Settings, request: Request) -> None:
    """With `RTML_API_TOKEN` set, demand `Authorization: Bearer <token>` (401 otherwise)."""
    check_token(settings, request.headers.get("authorization", "").encode())


def check_token(settings: Settings, given: bytes) -> None:
    """The scheme is read in any case (RFC 7235: `bearer`, `BEARER`), the token exactly.

    >>> from pydantic import SecretStr
    >>> s = Settings(api_token=SecretStr("t0k"))
    >>> check_token(s, b"bearer t0k"), check_token(s, b"Bearer  t0k")
    (None, None)
    """
    token = settings.api_token
    if token is None:
        return
    scheme, _, credentials = given.partition(b" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), expected):
        raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


MODEL_INPUTS = frozenset(FEATURE_NAMES)
KNOWN_COLUMNS = frozenset(FEATURE_NAMES + EXTRA_COLUMNS)
"""What a feature row may hold: the features, and the columns stored beside them."""


def json_response(body: dict[str, Any]) -> Response:
    """JSON written by orjson: a prediction that is not finite is `null`, not an error, and
    FastAPI's generic encoding of the answer is skipped.

    >>> json_response({"prediction": float("nan"), "model_version": "3"}).body
    b'{"prediction":null,"model_version":"3"}'
    """
    return Response(orjson.dumps(body), media_type="application/json")


class BadInput(Exception):
    """A request body that is refused: `status` and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_rows(raw: bytes, max_rows: int, max_bytes: int = 1_000_000) -> list[dict[str, float]]:
    """The model inputs of a `POST /predict` body, strictly: each value is a finite JSON
    number or null (a missing feature). Booleans, strings, NaN and Infinity are refused with
    the field named; so are unknown columns, and nesting or integers no row needs.

    >>> parse_rows(b'{"rows": [{"ret_1": 0.01, "ret_5": null, "close": 101}]}', 10)
    [{'ret_1': 0.01}]
    >>> parse_rows(b'{"rows": [{"ret_1": true}]}', 10)
    Traceback (most recent call last):
    ...
    rtml.serving.requests.BadInput: rows[0].ret_1 must be a number or null, got true
    >>> parse_rows(b'{"rows": [{"ret_1": 0.1}, {"vol_15": NaN}]}', 10)
    Traceback (most recent call last):
    ...
    rtml.serving.requests.BadInput: rows[1].vol_15 must be finite, got NaN
    """
    try:
        body = decode_object(raw, max_bytes)
    except BadRecord as exc:
        if exc.kind == "too_large":
            raise BadInput(413, f"the body is {len(raw)} bytes; at most {max_bytes}") from None
        raise BadInput(422, f"the body must be a JSON object: {exc}") from None
    rows = body.get("rows")
    extra = sorted(set(body) - {"rows"})
    if extra:
        raise BadInput(422, f'unknown fields {extra[:5]}; the body is {{"rows": [...]}}')
    if not isinstance(rows, list) or not rows:
        raise BadInput(422, "rows must be a non-empty list of feature objects")
    if len(rows) > max_rows:
        raise BadInput(413, f"at most {max_rows} rows per request")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(422, f"rows[{i}] must be an object of feature values")
        unknown = sorted(set(row) - KNOWN_COLUMNS)
        if unknown:
            raise BadInput(
                422, f"unknown features {unknown[:10]}; the model reads {', '.join(FEATURE_NAMES)}"
            )
        x = {}
        for name, value in row.items():
            kind = type(value)
            if value is None:
                continue
            if kind is not float and kind is not int:
                shown = orjson.dumps(value)[:40].decode(errors="replace")
                raise BadInput(422, f"rows[{i}].{name} must be a number or null, got {shown}")
            if not math.isfinite(value):
                shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
                raise BadInput(422, f"rows[{i}].{name} must be finite, got {shown}")
            if name in MODEL_INPUTS:  # close and volume may ride along; the model reads neither
                x[name] = float(value)
        out.append(x)
    return out
