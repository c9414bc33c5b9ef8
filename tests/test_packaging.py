"""rtml installs like any other package, and its layout keeps the core below the shell."""

from __future__ import annotations

import ast
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from rtml.app.stack import free_port
from tests.venvs import fresh_venv

ROOT = Path(__file__).resolve().parent.parent

CORE = ("rtml.settings", "rtml.errors", "rtml.kafka", "rtml.registry", "rtml.feature_store")
SHELL = "rtml.app"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(names: set[str], package: str) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


def test_the_core_imports_nothing_above_it() -> None:
    for module in CORE:
        path = ROOT / (module.replace(".", "/") + ".py")
        imported = _imports(path)
        for above in (SHELL, "rtml.pipelines", "rtml.serving"):
            assert not _under(imported, above), f"{module} imports {_under(imported, above)}"


def test_pipelines_and_serving_import_no_shell_module() -> None:
    for folder in ("pipelines", "serving"):
        for path in sorted((ROOT / folder).glob("*.py")):
            shell = _under(_imports(path), SHELL)
            assert not shell, f"{folder}/{path.name} imports {shell}"
    serving = set().union(*(_imports(p) for p in (ROOT / "pipelines").glob("*.py")))
    assert not _under(serving, "rtml.serving"), "pipelines/ must not import serving/"


def test_the_served_model_code_imports_nothing_from_rtml() -> None:
    # MLflow copies rtml/river_model.py into every version; it must load without rtml
    assert not _under(_imports(ROOT / "rtml" / "river_model.py"), "rtml")


def test_no_import_name_clashes_with_another_distribution() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = packages["packages"]
    assert all(name == "rtml" or name.startswith("rtml.") for name in installed), installed
    # each installs from the folder the layout names, through the link inside rtml/
    for name in installed:
        assert (ROOT / name.replace(".", "/") / "__init__.py").exists(), name


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_a_non_editable_install_works_from_outside_the_checkout(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fresh_venv(venv, "-c", str(ROOT / "requirements.lock"), str(ROOT))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTML_", "MLFLOW_"))}
    env |= {
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "RTML_STATE_DIR": str(tmp_path / "state"),
        "RTML_KAFKA_PORT": str(free_port()),
        "RTML_REDIS_PORT": str(free_port()),
        "RTML_MLFLOW_PORT": str(free_port()),
        "RTML_UP_TIMEOUT_S": "240",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("REDIS_URL", None)
    rtml = str(venv / "bin" / "rtml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rtml, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import rtml; print(rtml.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in located.stdout, "rtml must come from the venv, not the checkout"
    try:
        up = run("up")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        backfill = run("backfill", "--days", "1")
        assert backfill.returncode == 0, backfill.stderr[-3000:]
        assert "examples" in backfill.stdout
        status = run("status")
        assert status.returncode == 0, status.stdout + status.stderr[-2000:]
        assert "champion none" in status.stdout
        assert any((tmp_path / "state" / "offline").rglob("*.parquet"))
        assert not (elsewhere / "mlflow.db").exists()
    finally:
        run("down")
