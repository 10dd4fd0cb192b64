"""Process helpers shared by the embedded service launchers: loopback ports, child processes that
stop when their parent dies, and waiting for a server to accept connections."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class EmbeddedServiceError(RuntimeError):
    """An embedded service failed to start or stop."""


class EmbeddedServer:
    """Base of the server handles: a process on a loopback port, stopped on leaving a `with`."""

    process: subprocess.Popen[bytes]
    port: int

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that no socket is bound to right now.

    The port is released before the caller binds it, so another process can take it in between.
    The launchers therefore retry on a new port when the server fails to start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """Return True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _stop_with_parent(sig: int) -> Callable[[], None]:
    """Build a preexec_fn that makes Linux send `sig` to the child when its parent exits.

    It runs after the child has switched user, because changing the user ID clears the setting.
    """

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def spawn(
    argv: list[str],
    *,
    log_path: Path,
    stop_signal: int,
    user: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process in its own session with output appended to `log_path`.

    The own session keeps a terminal's Ctrl-C away from the server, so its owner stops it last,
    after the API and worker. Linux also sends it `stop_signal` if the owner dies first.
    NOTE: the parent-death signal follows the thread that started the child, so start servers
    from a thread that lives as long as they should.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent(stop_signal) if os.name == "posix" else None,
            user=user,
            group=_primary_group(user),
            extra_groups=[] if user is not None else None,
            env=env,
        )


def _primary_group(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


def wait_until(
    ready: Callable[[], bool],
    *,
    process: subprocess.Popen[bytes],
    timeout_s: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll `ready` until it returns True; raise if the process exits or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServiceError(
                f"{what} exited with code {process.returncode} while starting; "
                f"last log lines:\n{log_tail(log_path)}"
            )
        if ready():
            return
        time.sleep(0.1)
    terminate(process, signal.SIGKILL, timeout_s=5)
    raise EmbeddedServiceError(
        f"{what} did not accept connections within {timeout_s:.0f} s; "
        f"last log lines:\n{log_tail(log_path)}"
    )


def terminate(process: subprocess.Popen[bytes], sig: int, *, timeout_s: float) -> None:
    """Send `sig` and wait; kill the process if it is still running after `timeout_s`."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning(
            "pid %d still running %.0f s after signal %d; killing it", process.pid, timeout_s, sig
        )
        process.kill()
        process.wait(timeout=10)


def log_tail(log_path: Path, lines: int = 20) -> str:
    """Return the last lines of a log file, or a note that it is missing."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {log_path})"
    return "\n".join(text.splitlines()[-lines:])
