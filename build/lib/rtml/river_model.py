"""The served model as MLflow sees it: a pickled River regressor behind a pyfunc.

MLflow copies this file into every model version rtml registers ("models from code") and runs
it when the model is loaded, so it imports nothing from rtml: a version loads wherever mlflow
and the requirements it recorded (river, pandas) are installed, with
``mlflow.pyfunc.load_model("models:/<name>@champion")``, and serves with
``mlflow models serve``. The estimator itself is the artifact ``estimator``, a pickle of a River
pipeline (River's only serialization).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RiverRegressor(PythonModel):
    """One prediction per input row; missing or non-finite features are left out of the row,
    as River models expect."""

    def __init__(self) -> None:
        self.model: Any = None

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["estimator"], "rb") as file:  # noqa: PTH123
            self.model = pickle.load(file)  # the registry is the trust boundary

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[float]:
        rows: list[dict[str, Any]] = model_input.to_dict(orient="records")  # type: ignore[assignment]
        return [self.predict_row(row) for row in rows]

    def predict_row(self, row: Mapping[str, Any]) -> float:
        x = {
            str(k): float(v)
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        return float(self.model.predict_one(x))

    def predict_one(self, x: dict[str, float]) -> float:
        return float(self.model.predict_one(x))


mlflow.models.set_model(RiverRegressor())
