"""A local cache of model folders that live in S3 (`s3://bucket/prefix` model names).

Each URI is downloaded once per machine: workers on the same host wait on a file lock, download
into a temporary folder and rename it into place, so a folder in the cache is always complete.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".sdft-complete"


def ensure_cached_model(uri: str, target: Path, download: Callable[[Path], None]) -> Path:
    """Return `target`, the cache folder of the model at `uri`, after calling `download(tmp_dir)`
    to fill a temporary folder the first time. `download` writes the model's files there."""
    if (target / COMPLETE_MARKER).is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_suffix(".lock")
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            # Another worker may have finished the download while this one waited for the lock.
            if (target / COMPLETE_MARKER).is_file():
                return target
            if target.exists():
                logger.warning("removing incomplete model cache folder %s of %s", target, uri)
                shutil.rmtree(target)

            tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            try:
                logger.info("downloading model %s into the cache at %s", uri, target)
                download(tmp_dir)
                if not (tmp_dir / "config.json").is_file():
                    raise FileNotFoundError(
                        f"model {uri} has no config.json; the prefix must hold a Hugging Face "
                        "model folder (config.json, weights, tokenizer files)"
                    )
                (tmp_dir / COMPLETE_MARKER).write_text(uri + "\n", encoding="utf-8")
                tmp_dir.rename(target)
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
            logger.info("model %s cached at %s", uri, target)
            return target
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
