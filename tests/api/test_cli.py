"""`sdft keys` and `sdft db` commands against the test database."""

from __future__ import annotations

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api import cli
from api.settings import Settings


def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


def test_keys_create_list_revoke(service_settings: Settings, api_client: TestClient) -> None:
    runner = CliRunner()
    app = _app()

    created = runner.invoke(app, ["keys", "create", "--tenant", "cli-tenant"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("sdft_")
    assert api_client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert key[:12] in listed.output
    assert key not in listed.output

    revoked = runner.invoke(app, ["keys", "revoke", key[:12]])
    assert revoked.exit_code == 0, revoked.output
    assert api_client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401

    missing = runner.invoke(app, ["keys", "revoke", "sdft_nothing"])
    assert missing.exit_code == 1


def test_db_upgrade_is_idempotent(service_settings: Settings) -> None:
    result = CliRunner().invoke(_app(), ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "upgraded to head" in result.output


def test_keys_list_missing_database(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.settings import get_settings

    url = service_settings.database_url.get_secret_value().rsplit("/", 1)[0] + "/sdft_absent"
    monkeypatch.setenv("SDFT_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(_app(), ["keys", "list"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert result.exit_code == 1
    assert 'database "sdft_absent" does not exist' in result.output
    assert "Set SDFT_DATABASE_URL" in result.output
    assert "Traceback" not in result.output
