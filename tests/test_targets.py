"""Each target is labelled from the candles after its features, and its naive forecast from the
features alone (no services)."""

from __future__ import annotations

import math

import pytest

from rtml.pipelines.features.indicators import FEATURE_BOUNDS
from rtml.pipelines.features.processor import FeatureProcessor, Outputs
from rtml.pipelines.features.targets import TARGETS, VOL_FLOOR, realised_volatility
from rtml.pipelines.market.sources import SyntheticMarket
from rtml.settings import Settings


def _run(target: str, horizon: int = 5, candles: int = 150) -> Outputs:
    processor = FeatureProcessor(60, 0, horizon, label=TARGETS[target])
    out = Outputs()
    for trade in SyntheticMarket(["A"], seed=4, start_ts=0).candles_of_trades(candles):
        processor.on_trade(trade, into=out)
    return out


@pytest.mark.parametrize("horizon", [1, 5, 12])
def test_each_label_reads_only_the_h_candles_after_its_features(horizon: int) -> None:
    returns, volatility = _run("return", horizon), _run("volatility", horizon)
    closes = {c.end: c.close for c in returns.candles}
    ends = sorted(closes)
    features = {row.ts: row.values for row in volatility.features}
    assert len(returns.examples) == len(volatility.examples) > 100
    for r, v in zip(returns.examples, volatility.examples, strict=True):
        assert (r.ts, r.label_ts) == (v.ts, v.label_ts)
        at = ends.index(r.ts)
        window = [closes[t] for t in ends[at : at + horizon + 1]]
        assert ends[at + horizon] == r.label_ts  # known only once candle t+H closed
        assert r.target == pytest.approx(window[-1] / window[0] - 1)
        assert v.target == realised_volatility(window)
        # the naive volatility forecast made at t+H is this label: the same H candles
        assert features[v.label_ts]["rv_h"] == pytest.approx(v.target, rel=1e-12)
        assert TARGETS["volatility"].naive(features[v.ts]) == features[v.ts]["rv_h"]
        low, high = TARGETS["volatility"].bounds
        assert low <= v.target <= high


def test_a_candle_without_price_change_is_labelled_with_the_floor() -> None:
    assert realised_volatility([5.0] * 6) == VOL_FLOOR
    assert math.log(VOL_FLOOR) >= FEATURE_BOUNDS["log_rv_h"][0]


def test_the_target_and_its_horizon_are_settings() -> None:
    assert Settings(target="volatility", horizon=12).target == "volatility"
    with pytest.raises(ValueError, match="horizon"):
        Settings(horizon=101)  # a symbol keeps 101 candles: the naive forecast reads H + 1
    with pytest.raises(ValueError, match="target"):
        Settings.model_validate({"target": "price"})


def test_target_and_horizon_options_override_only_what_they_name() -> None:
    """`--target`/`--horizon` change those settings and leave every other one as the user set
    it or not (a replay's gap policy is guessed only where the user set none)."""
    from rtml.app.commands.options import target_options

    seen: list[Settings] = []

    @target_options
    def command(settings: Settings) -> None:
        seen.append(settings)

    command(Settings(), target="volatility", horizon=None)
    command(Settings(gap_policy="skip"), target=None, horizon=12)
    assert (seen[0].target, seen[0].horizon) == ("volatility", 5)
    assert "gap_policy" not in seen[0].model_fields_set
    assert (seen[1].horizon, seen[1].gap_policy) == (12, "skip")
    assert "gap_policy" in seen[1].model_fields_set
