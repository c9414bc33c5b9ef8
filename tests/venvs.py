"""Fresh virtual environments for the tests that install rtml or its models as users would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

UV = Path(sys.executable).parent / "uv"


def fresh_venv(venv: Path, *install: str) -> Path:
    """A new venv at `venv` on the base interpreter, with `uv pip install *install` in it
    (packages from the index or uv's cache); returns its python."""
    if not UV.exists():
        pytest.skip("uv is not installed in the project's venv; run `make install`")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([str(UV), "venv", "-q", "--python", base_python, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(UV), "pip", "install", "-q", "--python", str(python), *install],
        check=True,
        timeout=900,
    )
    return python
