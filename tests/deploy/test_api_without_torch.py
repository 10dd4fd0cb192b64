"""The API image installs no torch, transformers or peft, so everything the API process and the
migrations one-shot import must load without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.deploy.tools import REPO_ROOT

# Runs in a fresh interpreter, where a meta path finder makes the ML packages unimportable.
_PROBE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    ML_PACKAGES = {"torch", "transformers", "peft", "safetensors", "accelerate"}

    class BlockML(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ML_PACKAGES:
                raise ImportError(f"{name} is not installed in the API image")
            return None

    sys.meta_path.insert(0, BlockML())

    from api.app import create_app
    from api.db import migrate
    from worker.celery_app import celery_app

    create_app()
    assert migrate.alembic_config() is not None
    assert celery_app.main == "sdft"

    import sdft.cli
    sdft.cli._register_commands()
    print("API imports loaded without the ML packages")
    """
)


def test_api_imports_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, f"an API import needs an ML package:\n{result.stderr}"
    assert "loaded without the ML packages" in result.stdout
