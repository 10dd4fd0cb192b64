"""Fixtures shared by the deployment tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """An empty folder for embedded servers' data, removed after the test.

    pytest's tmp_path is mode 0700 under /tmp/pytest-of-root, which the unprivileged PostgreSQL
    user cannot enter when tests run as root. This folder is world-traversable.
    """
    path = Path(tempfile.mkdtemp(prefix="sdft-deploy-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
