"""feature_repo/ is a Feast repo of its own: plain `feast` commands work in a copy of it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import httpx
import pandas as pd
import pytest

from rtml.app.processes import free_port, port_is_free, redis_binary
from rtml.pipelines.features.indicators import EXTRA_COLUMNS, FEATURE_NAMES
from rtml.pipelines.features.targets import TARGETS
from rtml.settings import Settings
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent / "feature_repo"
EMBEDDED_REDIS_PORT = Settings.model_fields["redis_port"].default


def _definitions(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("feature_repo_definitions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repo_imports_nothing_of_rtml_and_declares_rtmls_names() -> None:
    source = (REPO / "definitions.py").read_text()
    assert "import rtml" not in source and "from rtml" not in source
    defined = _definitions(REPO / "definitions.py")
    assert defined.FEATURE_NAMES == FEATURE_NAMES
    assert defined.EXTRA_COLUMNS == EXTRA_COLUMNS
    assert {t.column: t.description for t in TARGETS.values()} == defined.TARGETS


def _write_history(offline: Path, now: datetime) -> None:
    """Three feature rows of BTC/USD, 12 to 10 minutes old, as rtml's sink writes them."""
    rows = pd.DataFrame(
        [
            {
                "symbol": "BTC/USD",
                "event_timestamp": now - timedelta(minutes=minutes),
                "created": now - timedelta(minutes=minutes),
                **dict.fromkeys(FEATURE_NAMES + EXTRA_COLUMNS, 0.0),
                "ret_1": 0.001 * minutes,
                "close": 100.0 + minutes,
            }
            for minutes in (12, 11, 10)
        ]
    )
    (offline / "features").mkdir(parents=True)
    (offline / "targets").mkdir(parents=True)
    rows.to_parquet(offline / "features" / "part-0.parquet")
    rows[["symbol", "event_timestamp", "created"]].assign(
        target_return=0.0, target_volatility=0.0
    ).to_parquet(offline / "targets" / "part-0.parquet")


@pytest.mark.integration
def test_plain_feast_apply_materialize_and_serve_work_in_a_copy_of_the_repo(tmp_path: Path) -> None:
    """Only the repo's own defaults: the embedded stack's Redis port, state beside the repo."""
    if not port_is_free("127.0.0.1", EMBEDDED_REDIS_PORT):
        pytest.skip(
            f"port {EMBEDDED_REDIS_PORT} (the embedded Redis's default) is in use: "
            "stop that stack (`rtml down`) to run this test"
        )
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    now = datetime.now(UTC).replace(microsecond=0)
    _write_history(tmp_path / ".rtml" / "offline", now)

    data = tmp_path / "redis"
    data.mkdir()
    redis = subprocess.Popen(
        [
            str(redis_binary()),
            "--port",
            str(EMBEDDED_REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTML_", "FEAST_"))}
    feast = str(Path(sys.executable).parent / "feast")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [feast, *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    try:
        wait_until(lambda: not port_is_free("127.0.0.1", EMBEDDED_REDIS_PORT), 30, "Redis")
        run("apply")
        assert (tmp_path / ".rtml" / "feast" / "registry.db").exists()
        run("materialize-incremental", (now + timedelta(minutes=1)).isoformat())

        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
        online = store.get_online_features(
            features=["candle_features:ret_1", "candle_features:close"],
            entity_rows=[{"symbol": "BTC/USD"}],
        ).to_dict()
        assert online["ret_1"] == [pytest.approx(0.010)]  # the newest row, 10 minutes old
        assert online["close"] == [pytest.approx(110.0)]

        # `feast serve`: Feast's own feature server answers from the same store
        port = free_port()
        server = subprocess.Popen(
            [feast, "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            body = {"features": ["candle_features:ret_1"], "entities": {"symbol": ["BTC/USD"]}}

            def served() -> object:
                try:
                    return httpx.post(
                        f"http://127.0.0.1:{port}/get-online-features", json=body, timeout=5
                    ).json()
                except httpx.HTTPError:
                    return None

            wait_until(lambda: served() is not None, 120, "feast serve to answer")
            answer = served()
            assert isinstance(answer, dict), answer
            names = answer["metadata"]["feature_names"]
            values = dict(zip(names, (r["values"][0] for r in answer["results"]), strict=True))
            assert values["ret_1"] == pytest.approx(0.010), answer
        finally:
            server.terminate()
            server.wait(30)
    finally:
        redis.terminate()
        redis.wait(10)
