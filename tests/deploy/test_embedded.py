"""The embedded PostgreSQL and Redis launchers start real servers on loopback, serve queries,
keep data across restarts where asked, and leave no process behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis

from api.embedded.postgres import _pgdata_path, start_embedded_postgres
from api.embedded.process import EmbeddedServiceError, free_loopback_port, port_is_open
from api.embedded.redis import start_embedded_redis


def _connect(port: int) -> psycopg.Connection:
    return psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=sdft")


def test_redis_start_query_stop(service_dir: Path) -> None:
    server = start_embedded_redis(service_dir / "redis", persistent=False)
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        client.set("sdft:test", "42")
        assert client.get("sdft:test") == b"42"
        client.close()
    finally:
        server.stop()

    assert server.process.returncode is not None
    assert not port_is_open(server.port)


def test_redis_keeps_queue_across_restart(service_dir: Path) -> None:
    with start_embedded_redis(service_dir / "redis", persistent=True) as first:
        redis.Redis.from_url(first.url).rpush("train", "task-1")

    with start_embedded_redis(service_dir / "redis", persistent=True) as second:
        assert redis.Redis.from_url(second.url).lrange("train", 0, -1) == [b"task-1"]


def test_redis_rejects_busy_port(service_dir: Path) -> None:
    with start_embedded_redis(service_dir / "a", persistent=False) as first:
        with pytest.raises(EmbeddedServiceError, match="already in use"):
            start_embedded_redis(service_dir / "b", port=first.port, persistent=False)


def test_postgres_start_query_stop(service_dir: Path) -> None:
    server = start_embedded_postgres(service_dir / "pg", durable=False)
    try:
        assert server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert server.url.endswith("/sdft")
        with _connect(server.port) as conn:
            conn.execute("CREATE TABLE jobs (id text PRIMARY KEY)")
            conn.execute("INSERT INTO jobs VALUES ('job_1')")
    finally:
        server.stop()

    assert server.process.returncode is not None
    assert not port_is_open(server.port)

    # A second start reuses the cluster: no initdb, the row is still there.
    with start_embedded_postgres(service_dir / "pg", durable=False) as again:
        with _connect(again.port) as conn:
            assert conn.execute("SELECT id FROM jobs").fetchall() == [("job_1",)]


def test_postgres_listens_on_loopback_only(service_dir: Path) -> None:
    with start_embedded_postgres(service_dir / "pg", durable=False) as server:
        with _connect(server.port) as conn:
            listen = conn.execute("SHOW listen_addresses").fetchone()
            sockets = conn.execute("SHOW unix_socket_directories").fetchone()
    assert listen == ("127.0.0.1",)
    assert sockets == ("",)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_postgres_cluster_moves_out_of_private_folder(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "pg").mkdir()

    chosen = _pgdata_path(private / "pg", "nobody")

    assert chosen.parent == Path(tempfile.gettempdir())
    assert chosen.name.startswith("sdft-postgres-")
    assert _pgdata_path(private / "pg", "nobody") == chosen


def test_free_port_is_not_open() -> None:
    assert not port_is_open(free_loopback_port())
