"""`rtml evaluate` on a real market file, through the whole system on a stack of its own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rtml.app import datasets
from rtml.app.demo import Evaluation
from rtml.app.evaluate import evaluate_file, expanding_mean, lag_in_candles
from rtml.errors import ConfigError
from rtml.records import Example
from rtml.settings import Settings


def test_the_mean_baseline_uses_only_labels_known_at_prediction_time() -> None:
    history = [Example("X", 0.0, 300.0, {}, 1.0), Example("X", 60.0, 360.0, {}, 3.0)]
    ev = Evaluation(
        ts=[300.0, 360.0, 420.0],
        symbol=["X", "X", "X"],
        target=[5.0, 7.0, 9.0],
        label_ts=[600.0, 660.0, 720.0],
    )
    # at 300 only the first label is known; at 360 the second; stream labels come later
    assert expanding_mean(ev, history) == [1.0, 2.0, 2.0]


def test_lag_counts_the_symbols_candles_since_the_newest_label_learned() -> None:
    ev = Evaluation(
        ts=[0.0, 60.0, 120.0, 180.0],
        symbol=["X"] * 4,
        trained_through=[math.nan, 0.0, 0.0, 120.0],
    )
    assert lag_in_candles(ev) == [1, 2, 1]  # the baseline's prediction has no lag


@pytest.mark.integration
@pytest.mark.timeout(900)  # about 3 minutes here; a fresh machine downloads and starts more
def test_evaluate_on_real_daily_candles_serves_nothing_worse_than_naive(
    settings: Settings, tmp_path: Path
) -> None:
    try:
        path = datasets.fetch("msft", tmp_path)
    except ConfigError as exc:
        pytest.skip(f"the package index is not reachable ({exc}); it serves pmdarima's wheel")
    lines: list[str] = []
    local = settings.model_copy(update={"state_dir": tmp_path / "state"})
    report = evaluate_file(local, path, refit_every=120, out=lines.append)
    rows = {r.name.split(" ")[0]: r for r in report.rows}
    assert report.examples > 3000 and report.symbols == ["MSFT"]
    # the system's first duty on a real market: nothing worse than the trivial baseline
    assert rows["served"].ratio_to_naive <= 1.0
    assert rows["served"].mae <= rows["static"].mae
    assert rows["served"].mae <= rows["batch"].mae
    assert rows["naive"].ratio_to_naive == 1.0
    folder = next((tmp_path / "state" / "evaluations").iterdir())
    written = json.loads((folder / "evaluation.json").read_text())
    assert written["examples"] == report.examples and len(written["rows"]) == 5
    assert (folder / "evaluation.png").stat().st_size > 10_000
    assert any(line.startswith("served (champion or baseline)") for line in lines)
