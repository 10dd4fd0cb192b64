"""Upload benchmark: stream a generated JSONL dataset to POST /datasets of a real uvicorn process.

The dataset is generated while it is sent (nothing is written to disk on the client side) from
the drone tool-calling traces, each record made unique by a counter. The script reports the
upload throughput, the API process's peak RSS increase, and, as a baseline measured in the same
run, the throughput of the same bytes written straight to S3 with the storage layer.

    python bench/bench_upload.py --size-gb 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_stack import service_stack  # noqa: E402

TRACES = (
    Path(__file__).resolve().parents[1] / "../shared/data/traces/openai_chat/drone_tools_head.jsonl"
)
MARKER = "__COUNTER__"


class GeneratedJsonl:
    """A read()-able stream of `total_bytes` (rounded up to whole lines) of unique records."""

    def __init__(self, total_bytes: int):
        self.total_bytes = total_bytes
        self.sent = 0
        self.records = 0
        self._templates = [self._template(line) for line in TRACES.read_text().splitlines()]
        self._pending = b""

    @staticmethod
    def _template(line: str) -> tuple[bytes, bytes]:
        record = json.loads(line)
        for message in record["messages"]:
            if message["role"] == "user":
                message["content"] = f"{message['content']} (request {MARKER})"
                break
        head, tail = json.dumps(record).split(MARKER)
        return head.encode(), tail.encode() + b"\n"

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else 1024 * 1024
        chunks = [self._pending]
        length = len(self._pending)
        while length < size and self.sent + length < self.total_bytes:
            head, tail = self._templates[self.records % len(self._templates)]
            line = head + str(self.records).encode() + tail
            self.records += 1
            chunks.append(line)
            length += len(line)
        data = b"".join(chunks)
        out, self._pending = data[:size], data[size:]
        self.sent += len(out)
        return out


class RssSampler(threading.Thread):
    """Sample a process's resident set size every 50 ms and keep the maximum."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def upload(base_url: str, key: str, size: int) -> tuple[float, dict, int]:
    stream = GeneratedJsonl(size)
    started = time.perf_counter()
    response = httpx.post(
        base_url + "/datasets",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("generated.jsonl", stream, "application/jsonl")},
        timeout=httpx.Timeout(3600, connect=10),
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(
            f"upload failed with HTTP {response.status_code}: {response.text[:500]}; "
            "check the API log above"
        )
    return elapsed, response.json(), stream.records


def direct_s3(size: int) -> float:
    """Baseline: the same generator written straight to S3 through MultipartWriter."""
    from api.settings import get_settings
    from api.storage import Storage

    storage = Storage.from_settings(get_settings())
    stream = GeneratedJsonl(size)
    started = time.perf_counter()
    writer = storage.open_writer("bench/baseline.jsonl")
    while chunk := stream.read(1024 * 1024):
        writer.write(chunk)
    writer.close()
    elapsed = time.perf_counter() - started
    storage.delete("bench/baseline.jsonl")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="upload size in GiB")
    parser.add_argument(
        "--baseline-gb", type=float, default=0.5, help="size of the direct-S3 baseline in GiB"
    )
    args = parser.parse_args()
    size = int(args.size_gb * 1024**3)
    baseline_size = int(min(args.size_gb, args.baseline_gb) * 1024**3)

    extra = {"SDFT_MAX_UPLOAD_BYTES": str(size + 1024**3)}
    with service_stack(extra_env=extra) as stack:
        upload(stack.base_url, stack.api_key, 1024 * 1024)  # warm-up: imports, pools
        baseline_rss = psutil.Process(stack.api_pid).memory_info().rss
        sampler = RssSampler(stack.api_pid)
        sampler.start()
        elapsed, body, records = upload(stack.base_url, stack.api_key, size)
        peak = sampler.stop()
        baseline_s = direct_s3(baseline_size)

    mib = body["bytes"] / 1024**2
    api_rate = mib / elapsed
    s3_rate = baseline_size / 1024**2 / baseline_s
    print(f"uploaded {mib:.0f} MiB, {body['records']} records (sent {records}) in {elapsed:.1f} s")
    print(f"API upload throughput: {api_rate:.1f} MiB/s")
    print(f"direct S3 baseline:    {s3_rate:.1f} MiB/s ({baseline_size / 1024**2:.0f} MiB)")
    print(f"ratio API / direct S3: {api_rate / s3_rate:.2f}")
    increase = (peak - baseline_rss) / 1024**2
    print(f"API process RSS: {baseline_rss / 1024**2:.0f} MiB before, peak +{increase:.1f} MiB")


if __name__ == "__main__":
    main()
