"""Service commands of the `sdft` CLI: `db`, `api`, `worker` and `keys`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from api.errors import DomainError

logger = logging.getLogger(__name__)

db_app = typer.Typer(no_args_is_help=True, help="Database schema migrations (Alembic).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")


def register(app: typer.Typer) -> None:
    """Add the service commands to the root `sdft` command."""
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")
    app.command("api", help="Run the HTTP API with uvicorn.")(run_api)
    app.command("worker", help="Run a Celery worker that trains queued jobs.")(run_worker)


def _install_redaction() -> None:
    from api.logging_utils import install_redaction
    from api.settings import get_settings

    install_redaction(get_settings().secret_values())


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn a failed database connection into one line that names the setting to fix."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        from api.settings import get_settings

        url = make_url(get_settings().database_url.get_secret_value())
        reason = str(exc.orig or exc).strip().splitlines()[-1]
        typer.echo(
            f"error: cannot use the database at {url.render_as_string(hide_password=True)}: "
            f"{reason}. Set SDFT_DATABASE_URL (next to a running `sdft up`, the embedded "
            "PostgreSQL URL it printed), then run `sdft db upgrade`.",
            err=True,
        )
        raise typer.Exit(1) from exc


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from api.db import migrate

    _install_redaction()
    with _database_errors():
        migrate.upgrade(revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. base or -1")],
) -> None:
    """Revert migrations down to REVISION; `base` drops every service table."""
    from api.db import migrate

    _install_redaction()
    with _database_errors():
        migrate.downgrade(revision)
    typer.echo(f"database downgraded to {revision}")


def run_api(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    import uvicorn

    _install_redaction()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        # Keys must never reach the access log; uvicorn logs the path and query only.
        access_log=True,
        proxy_headers=False,
    )


def run_worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queue names")] = "train",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once")] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: solo or threads")] = "solo",
    beat: Annotated[bool, typer.Option(help="Also run the stale-job reaper")] = False,
) -> None:
    try:
        from worker.cli import run_worker as start_worker
    except ImportError as exc:
        typer.echo(f"the worker package is not installed ({exc}); install sdft-service with it")
        raise typer.Exit(1) from exc
    _install_redaction()
    start_worker(queues.split(","), concurrency, pool, beat=beat)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name; created if missing")],
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from api.db.session import session_scope
    from api.services.keys import create_key

    with _database_errors(), session_scope() as session:
        created = create_key(session, tenant)
    typer.echo(f"tenant: {created.tenant_name} ({created.tenant_id})")
    typer.echo(f"key id: {created.id}  prefix: {created.prefix}")
    typer.echo("API key (shown once, store it now):")
    typer.echo(created.key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys with their prefix, tenant and state; the keys themselves are not stored."""
    from api.db.session import session_scope
    from api.services.keys import list_keys

    with _database_errors(), session_scope() as session:
        rows = list_keys(session)
        if not rows:
            typer.echo("no API keys; create one with `sdft keys create --tenant NAME`")
            return
        typer.echo(f"{'ID':<40} {'PREFIX':<13} {'TENANT':<24} {'STATE':<8} LAST USED")
        for key, tenant in rows:
            state = "revoked" if key.revoked_at else "active"
            last_used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "-"
            typer.echo(f"{key.id:<40} {key.prefix:<13} {tenant.name:<24} {state:<8} {last_used}")


@keys_app.command("revoke")
def keys_revoke(
    prefix_or_id: Annotated[str, typer.Argument(help="Key id or the prefix `keys list` shows")],
) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from api.db.session import session_scope
    from api.services.keys import revoke_key

    try:
        with _database_errors(), session_scope() as session:
            key = revoke_key(session, prefix_or_id)
            key_id, prefix = key.id, key.prefix
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked {key_id} (prefix {prefix})")
