"""`sdft keys` and `sdft db` commands against the test database."""

from __future__ import annotations

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
