"""Run Alembic programmatically, as `sdft db upgrade` and the test fixtures do."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    """Build the Alembic config from the repository's alembic.ini; the URL comes from settings."""
    ini = REPO_ROOT / "alembic.ini"
    if not ini.is_file():
        raise FileNotFoundError(
            f"{ini} not found: run database commands from a source checkout or the service image, "
            "which ship alembic.ini and migrations/"
        )
    config = Config(str(ini))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    # The CLI configures logging once; fileConfig here would replace its handlers.
    config.attributes["configure_logging"] = False
    return config


def upgrade(revision: str = "head") -> None:
    command.upgrade(alembic_config(), revision)


def downgrade(revision: str) -> None:
    command.downgrade(alembic_config(), revision)
