"""Alembic migrations on a database of their own, so the shared test database stays intact."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.db import migrate
from api.db.models import Base
from api.db.session import dispose_engines
from api.settings import get_settings
from tests.fixtures.services import create_database, drop_database


def test_upgrade_downgrade_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    url = create_database()
    monkeypatch.setenv("SDFT_DATABASE_URL", url)
    get_settings.cache_clear()
    engine = create_engine(url)
    try:
        migrate.upgrade()
        assert "jobs" in inspect(engine).get_table_names()

        migrate.downgrade("base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}

        migrate.upgrade()
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()
        dispose_engines()
        drop_database(url)
        monkeypatch.undo()
        get_settings.cache_clear()
