"""rtml installs like any other package, and its layout keeps the core below the shell."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rtml.app.processes import free_port
from tests.venvs import fresh_venv

ROOT = Path(__file__).resolve().parent.parent


SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    """Where a package's files are in the checkout, by pyproject.toml's package-dir."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = SETUPTOOLS["package-dir"].get(".".join(parts[:cut]))
        if mapped is not None:
            return ROOT / mapped / "/".join(parts[cut:])
    return ROOT / "/".join(parts)


def _as_installed(into: Path) -> Path:
    """The package laid out as it installs: each package-dir folder under its dotted name."""
    for name in SETUPTOOLS["packages"]:
        source = _folder(name)
        target = into / name.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for file in source.glob("*.py"):
            shutil.copy(file, target / file.name)
    return into


def _lint_imports(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--no-cache",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_of_make_lint_hold_and_catch_a_pure_step_importing_kafka(
    tmp_path: Path,
) -> None:
    site = _as_installed(tmp_path)
    kept = _lint_imports(site)
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-2000:]
    assert "0 broken" in kept.stdout

    candles = site / "rtml" / "pipelines" / "features" / "candles.py"
    candles.write_text(candles.read_text() + "\nimport confluent_kafka  # noqa\n")
    broken = _lint_imports(site)
    assert broken.returncode != 0, broken.stdout[-3000:]
    assert "The pure steps take plain values" in broken.stdout
    assert "rtml.pipelines.features.candles -> confluent_kafka" in broken.stdout


def test_a_core_module_that_imports_the_shell_breaks_the_layers(tmp_path: Path) -> None:
    site = _as_installed(tmp_path)
    settings = site / "rtml" / "kafka.py"
    settings.write_text(settings.read_text() + "\nimport rtml.serving.app  # noqa\n")
    broken = _lint_imports(site)
    assert broken.returncode != 0, broken.stdout[-3000:]
    assert "The core knows nothing above it BROKEN" in broken.stdout


def test_the_served_model_code_imports_nothing_from_rtml() -> None:
    # MLflow copies rtml/river_model.py into every version; it must load without rtml
    tree = ast.parse((ROOT / "rtml" / "river_model.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "rtml"}, imported


def test_no_import_name_clashes_with_another_distribution_and_no_folder_is_a_link() -> None:
    installed = SETUPTOOLS["packages"]
    assert all(name == "rtml" or name.startswith("rtml.") for name in installed), installed
    # each installs from the folder the layout names, mapped in pyproject.toml, not linked
    for name in installed:
        folder = _folder(name)
        assert folder.is_dir(), name
        assert not folder.is_symlink(), name
    links = [
        p
        for p in ROOT.rglob("*")
        if p.is_symlink() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    ]
    assert not links, links


@pytest.mark.slow
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
