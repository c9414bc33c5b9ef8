"""The served model: loaded by MLflow alias, replaced atomically when the alias moves.

A background thread polls the `champion` alias. A new version is loaded completely first and
only then swapped in, by replacing one reference: a request reads the reference once, so it
never sees a half-loaded model. A failed load keeps the current version serving, is logged and
counted, and is tried again at the next poll.

While the registered model has no champion (no version has beaten the naive baseline, or the
trainer retired one that fell behind it), the holder serves the target's naive forecast itself
("no change" for a return, the last H candles' realised volatility for a volatility), named
`baseline` in every answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rtml import registry
from rtml.pipelines.features.targets import TARGETS
from rtml.pipelines.training.models import LinearScorer
from rtml.settings import Settings

log = logging.getLogger(__name__)

BASELINE = "baseline"
"""The model named in answers while no version has earned `champion`."""


class Naive:
    """The target's naive forecast as a model (`pipelines.targets`).

    >>> Naive("volatility").predict_one({"rv_h": 0.02}), Naive("return").predict_one({})
    (0.02, 0.0)
    """

    def __init__(self, target: str = "return") -> None:
        self.forecast = TARGETS[target].naive

    def predict_one(self, x: dict[str, float]) -> float:
        return self.forecast(x)


@dataclass(frozen=True, slots=True)
class Served:
    version: str
    learner: Any
    loaded_at: float
    trained_through: float
    """Event time (epoch seconds) of the newest label the model had learned."""
    model: str = ""
    """The registered model the version belongs to, or `baseline`."""
    scorer: Any = None
    """What predicts for it: the learner folded into a `LinearScorer` where it is linear
    (served, never trained: the same predictions in a third of the time), the learner
    otherwise. `learner` stays the loaded model, as MLflow gives it to anyone."""

    def __post_init__(self) -> None:
        if self.scorer is None:
            inner = getattr(self.learner, "model", None)
            object.__setattr__(self, "scorer", LinearScorer.of(inner) or self.learner)

    @property
    def alias(self) -> str | None:
        return None if self.model == BASELINE else registry.CHAMPION


def baseline(target: str = "return") -> Served:
    """The naive forecast as a served model (version "0": registered versions start at 1)."""
    return Served("0", Naive(target), time.time(), float("nan"), BASELINE)


class ModelHolder:
    def __init__(
        self,
        settings: Settings,
        alias: str = registry.CHAMPION,
        on_swap: Callable[[Served], None] = lambda _: None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.model_name
        self.alias = alias
        self.on_swap = on_swap
        self.current: Served | None = None
        self.load_failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the alias's version if it is not the one served; True when it swapped."""
        version = registry.alias_version(self.settings, self.alias, name=self.name)
        current = self.current
        if version is None:
            if current is not None and current.model == BASELINE:
                return False
            self.current = served = baseline(self.settings.target)
            self.on_swap(served)
            log.info("%s has no %s: serving the naive baseline", self.name, self.alias)
            return True
        if current is not None and current.version == version and current.model == self.name:
            return False
        try:
            loaded = registry.load_version(self.settings, version, name=self.name)
        except Exception as exc:
            self.load_failures += 1
            log.error(
                "could not load version %s (%s); still serving %s",
                version,
                exc,
                current.version if current else "nothing",
            )
            return False
        served = Served(
            version=version,
            learner=loaded.model,
            loaded_at=time.time(),
            trained_through=float(loaded.metadata.get("trained_through", float("nan"))),
            model=self.name,
        )
        self.current = served
        self.on_swap(served)
        log.info("serving %s version %s", self.name, version)
        return True

    sharded = False
    """One model serves every symbol, so a request need not name one."""

    def model_for(self, symbol: str) -> str | None:
        """The registered model that serves `symbol`: this one, for any symbol."""
        del symbol
        return self.name

    def for_symbol(self, symbol: str) -> Served | None:
        """The one model serves every symbol."""
        del symbol
        return self.current

    def missing(self) -> list[str]:
        """Models without a loaded version."""
        return [] if self.current is not None else [self.name]

    def served(self) -> dict[str, str]:
        """The version served of each model (`baseline`: the naive forecast)."""
        current = self.current
        return {} if current is None else {self.name: current.version}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # the registry is away: keep serving, keep polling
                self.load_failures += 1
                log.warning("model poll failed: %s", exc)
            self._stop.wait(self.settings.model_poll_s)


class ModelRouter:
    """Model shards: one holder per shard's registered model, a symbol served by its shard's.

    Has the holder's interface (`sharded`, `model_for`, `for_symbol`, `missing`,
    `load_failures`, `refresh`, `start`, `stop`), so the API and the streaming predictor take
    either.
    """

    def __init__(self, settings: Settings, on_swap: Callable[[Served], None] = lambda _: None):
        self.settings = settings
        self.routes = settings.model_routes()
        self.holders = {
            name: ModelHolder(settings, on_swap=on_swap, name=name)
            for name in sorted(set(self.routes.values()))
        }

    sharded = True
    """Each symbol has its shard's model, so a request must name its symbol."""

    def model_for(self, symbol: str) -> str | None:
        return self.routes.get(symbol)

    def for_symbol(self, symbol: str) -> Served | None:
        name = self.routes.get(symbol)
        return self.holders[name].current if name is not None else None

    def missing(self) -> list[str]:
        return [name for h in self.holders.values() for name in h.missing()]

    def served(self) -> dict[str, str]:
        return {name: v for h in self.holders.values() for name, v in h.served().items()}

    @property
    def load_failures(self) -> int:
        return sum(h.load_failures for h in self.holders.values())

    def refresh(self) -> bool:
        return any([h.refresh() for h in self.holders.values()])

    def start(self) -> None:
        for h in self.holders.values():
            h.start()

    def stop(self) -> None:
        for h in self.holders.values():
            h.stop()


def models_for(settings: Settings) -> ModelHolder | ModelRouter:
    """A router when RTML_SHARDS is set, else one holder of the model."""
    return ModelRouter(settings) if settings.shards else ModelHolder(settings)
