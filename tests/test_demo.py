"""`rtml demo` on the real stack: every component as its own process, stopped by SIGTERM."""

from __future__ import annotations

import math
import uuid

import pytest

from rtml import registry
from rtml.app.demo import Demo
from rtml.app.stack import free_port
from rtml.settings import Settings

pytestmark = pytest.mark.integration


def test_demo_runs_the_loop_and_every_service_exits_cleanly_on_sigterm(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    local = settings.model_copy(
        update={
            "symbols": (f"D1{tag}/USD", f"D2{tag}/USD"),
            "api_port": free_port(),
            "monitor_port": free_port(),
        }
    )
    lines: list[str] = []
    demo = Demo(local, days=0.25, speed=600, status_every=5, out=lines.append)
    ev = demo.run(40)

    # every service finished its work and exited 0 within 10 s of SIGTERM
    codes = {c.name: c.proc.returncode for c in demo.children}
    assert codes == dict.fromkeys(codes, 0), (codes, lines[-20:])
    assert set(codes) == {"trainer", "features", "predictor", "predict-stream", "monitor", "feed"}
    assert max(demo.stopped_in.values()) <= 10, demo.stopped_in

    status = [line for line in lines if line.startswith("[")]
    assert len(status) >= 5 and any("rolling MAE served" in line for line in status), status
    summary = ev.summary()
    assert summary["examples"] > 100
    assert all(math.isfinite(v) for v in summary.values()), summary
    assert set(ev.symbol) == set(local.symbols)
    # the initial fit is served if the gate passed it, the naive baseline (version 0) if not
    assert ev.versions[0] in (0, int(demo.first_champion or 0))
    newest = registry.alias_version(demo.settings, registry.CANDIDATE)
    assert newest is not None and max(ev.versions) <= int(newest)
    report = demo.report(ev)
    assert any("MAE static" in line for line in report) and any("ratio" in line for line in report)
    assert any("served by the naive baseline" in line for line in report)
    # the trainer checkpointed on SIGTERM: its newest checkpoint learned the stream's examples
    learned = registry.learned(demo.settings)
    assert learned is not None and learned >= summary["examples"]
