"""`rtml evaluate` on a real market file, through the whole system on a stack of its own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rtml.app import datasets
from rtml.app.evaluate import evaluate_file, expanding_mean, lag_in_candles
from rtml.app.scores import Evaluation, plot
from rtml.errors import ConfigError
from rtml.pipelines.features.targets import TARGETS
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


def _msft(tmp_path: Path, rows: int | None = None) -> Path:
    try:
        path = datasets.fetch("msft", tmp_path)
    except ConfigError as exc:
        pytest.skip(f"the package index is not reachable ({exc}); it serves pmdarima's wheel")
    if rows is None:
        return path
    lines = path.read_text().splitlines()
    part = tmp_path / "msft-part.csv"
    part.write_text("\n".join([lines[0], *lines[-rows:]]) + "\n")
    return part


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_event_time_table_is_the_same_at_full_speed_and_paced_and_serves_no_leak(
    settings: Settings, tmp_path: Path
) -> None:
    """The trainer decides in event time: which version served which example is the same
    whether the replay ran as fast as it could or at 50 candles a second, and no example was
    served by a model that had learned a label from after its features."""
    path = _msft(tmp_path, rows=1400)
    local = settings.model_copy(update={"state_dir": tmp_path / "state", "target": "volatility"})
    lines: list[str] = []
    fast = evaluate_file(local, path, refit_every=60, out=lines.append)
    paced = evaluate_file(local, path, refit_every=60, speed=86400 * 50, out=lambda _: None)
    assert fast.examples == paced.examples > 600
    one, other = fast.rows[0], paced.rows[0]
    assert one.name == other.name == "served (event time)"
    assert one.loss == pytest.approx(other.loss, rel=1e-9)
    assert fast.served_share == paced.served_share
    assert fast.champion_changes == paced.champion_changes > 1  # learned versions served
    assert fast.leaks == paced.leaks == 0
    assert fast.leaks_as_run == paced.leaks_as_run == 0

    # volatility is learnable: a learned model serves, and beats the naive forecast (the last
    # H candles' realised volatility) and the initial fit left alone
    rows = {r.name: r for r in fast.rows}
    assert fast.target == "volatility" and fast.loss == "absolute error"
    assert one.ratio_to_naive <= 0.85 and fast.baseline_share < 0.2
    assert one.loss <= rows["static (initial fit)"].loss
    assert rows["naive"].ratio_to_naive == 1.0
    folder = sorted((tmp_path / "state" / "evaluations").iterdir())[0]
    written = json.loads((folder / "evaluation.json").read_text())
    assert written["examples"] == fast.examples and len(written["rows"]) == 6
    assert {"ratio_to_naive", "ratio_se", "mae", "rank_correlation"} <= set(written["rows"][0])
    assert (folder / "evaluation.png").stat().st_size > 10_000
    assert any(line.startswith("served (event time)") for line in lines)


def test_the_evaluation_plot_draws_each_curve_over_naives_loss(tmp_path: Path) -> None:
    ev = Evaluation()
    for i in range(200):
        ev.ts.append(1_700_000_000.0 + 60 * i)
        ev.target.append(0.01 if i % 2 else -0.01)
    curves = {
        "naive": [0.0] * 200,
        "served (event time)": [0.0] * 200,  # equal to naive: a flat line at 1, drawn apart
        "static (initial fit)": [t * 0.5 for t in ev.target],  # a quarter of naive's loss
    }
    drawn = plot(ev, curves, tmp_path / "evaluation.png", TARGETS["return"].loss, bins=10)
    assert set(drawn) == {"served (event time)", "static (initial fit)"}  # naive is the 1 line
    assert drawn["served (event time)"] == [pytest.approx(1.0)] * 10
    assert drawn["static (initial fit)"] == [pytest.approx(0.25)] * 10
    assert (tmp_path / "evaluation.png").stat().st_size > 10_000
