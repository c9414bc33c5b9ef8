"""The examples in rtml's docstrings, run as tests.

Modules are found by name through the installed package (so pipelines/ and serving/ run as
rtml.pipelines and rtml.serving, the names their code uses), and only those whose source holds
an example are imported: collecting them does not import MLflow or Feast for the rest.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import rtml


def _modules_with_examples() -> list[str]:
    found = []
    # pipelines/ and serving/ install under rtml from folders of their own: walked one by one
    roots = [
        rtml,
        importlib.import_module("rtml.pipelines"),
        importlib.import_module("rtml.serving"),
    ]
    infos = [
        info for root in roots for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".")
    ]
    for info in infos:
        spec = importlib.util.find_spec(info.name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        if ">>>" in Path(spec.origin).read_text(encoding="utf-8"):
            found.append(info.name)
    return sorted(found)


MODULES = _modules_with_examples()


def test_the_examples_are_found_in_every_folder() -> None:
    for package in ("rtml.pipelines.features", "rtml.pipelines.training", "rtml.serving"):
        assert any(name.startswith(package + ".") for name in MODULES), package


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no example doctest can run"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
