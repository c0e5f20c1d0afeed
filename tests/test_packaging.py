"""pyproject.toml against the code and requirements.lock: every import declared, every requirement locked."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FIRST_PARTY = {"recsys", "pipelines", "training", "serving", "benchmarks", "tests"}
LOCKED_EXTRAS = ("cpu", "spark", "train", "serve", "bench", "dev")  # every extra but gpu


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_name(name)] = version.split()[0]
    return pins


def _declared() -> set[str]:
    requirements = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]
    return {_name(r) for r in requirements}


def test_every_requirement_of_the_locked_extras_is_pinned() -> None:
    lock = _lock()
    requirements = PROJECT["dependencies"] + [r for e in LOCKED_EXTRAS for r in PROJECT["optional-dependencies"][e]]
    for text in requirements:
        requirement = Requirement(text)
        name = _name(text)
        assert name in lock, f"{text}: not in requirements.lock (run `make lock`)"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{text}: locked at {lock[name]}"
    assert "faiss-gpu" not in lock and "faiss-cpu" in lock


def test_faiss_extras_are_one_release_and_only_there() -> None:
    extras = PROJECT["optional-dependencies"]
    (cpu,) = extras["cpu"]
    (gpu,) = extras["gpu"]
    assert _name(cpu) == "faiss-cpu" and _name(gpu) == "faiss-gpu"
    assert str(Requirement(cpu).specifier) == str(Requirement(gpu).specifier) == f"=={_lock()['faiss-cpu']}"
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert not any(_name(r).startswith("faiss") for r in requirements), name


def _third_party_imports(directory: Path) -> dict[str, str]:
    """Top-level module -> first file importing it, for modules outside the stdlib and this repository."""
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("directory", ["recsys", "pipelines", "training", "serving", "benchmarks", "tests"])
def test_every_third_party_import_is_declared(directory: str) -> None:
    declared = _declared() | {"faiss-cpu"}  # `faiss` maps to whichever faiss wheel is installed
    distributions = packages_distributions()
    for module, where in _third_party_imports(REPO / directory).items():
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
        if module == "faiss":
            names = {"faiss-cpu"}
        assert names, f"{where}: imports {module!r}, which no installed distribution provides"
        assert names & declared, f"{where}: imports {module!r} ({sorted(names)}), not declared in pyproject.toml"


def test_entry_points_and_license() -> None:
    commands = PROJECT["entry-points"]["recsys.commands"]
    assert commands["serving"] == "serving.cli:register"
    assert "serving" in PYPROJECT["tool"]["mypy"]["packages"]
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]  # SPDX, PEP 639
    (backend,) = PYPROJECT["build-system"]["requires"]
    assert not Requirement(backend).specifier.contains("76.1")  # setuptools reads SPDX license strings from 77
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["recsys"]
    assert (REPO / "recsys" / "py.typed").is_file()
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
