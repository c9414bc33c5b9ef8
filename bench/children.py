"""Work the benchmarks run in child processes of their own (importable, for spawn)."""

from __future__ import annotations

import time
from typing import Any

from rtml.settings import Settings


def warm_start_child(env: dict[str, str], out: Any) -> None:
    """One warm start in a fresh process, so its peak RSS is its own."""
    import os
    import resource

    os.environ.update(env)
    from rtml.pipelines.learner import Learner
    from rtml.pipelines.models import build_model
    from rtml.pipelines.trainer import warm_start

    settings = Settings()
    learner = Learner(build_model(settings.model, settings.model_params, settings.target))
    began = time.perf_counter()
    dataset = warm_start(settings, learner)
    seconds = time.perf_counter() - began
    out.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, dataset.examples))
