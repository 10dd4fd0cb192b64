"""Find a job's model on this machine: a folder under SDFT_MODELS_DIR, or an S3 model folder
downloaded once into the cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from worker.model_cache import ensure_cached_model
from worker.retry import call_with_retry

if TYPE_CHECKING:
    from api.settings import Settings
    from api.storage import Storage

logger = logging.getLogger(__name__)


def local_model_dir(name: str, settings: Settings, storage: Storage) -> Path:
    """Return the folder to load the model `name` from, downloading an `s3://` model first.

    Raises the API's ValidationFailed for a name that is not a valid model, so the job fails
    with the same message the API gives.
    """
    from api.services.models import resolve_model
    from api.storage import Storage

    ref = resolve_model(name, settings)
    if ref.kind == "local":
        return ref.local_path

    assert ref.bucket is not None
    assert ref.prefix is not None
    assert ref.cache_path is not None
    source = Storage(storage.client, ref.bucket)
    prefix = ref.prefix

    def download(directory: Path) -> None:
        files = call_with_retry(
            f"download model {ref.name}", lambda: source.download_prefix(prefix, directory)
        )
        if not files:
            raise FileNotFoundError(f"model {ref.name} not found: no object under that prefix")

    return ensure_cached_model(ref.name, ref.cache_path, download)
