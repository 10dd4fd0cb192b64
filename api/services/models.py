"""Resolve a job's `model` field to a local folder or an S3 prefix, without leaving its store.

A model is either the name of a folder directly under `SDFT_MODELS_DIR` or an
`s3://bucket/prefix` URI of a model folder, which the worker downloads once into
`SDFT_CACHE_DIR/models/<key>` (the key is derived from the URI).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from api.errors import ValidationFailed
from api.settings import Settings

# Rules of S3 bucket names (3-63 characters of lowercase letters, digits, dots and hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class ModelRef:
    """Location of a model's files: `path` for a local folder, `bucket` + `prefix` for S3."""

    name: str
    kind: Literal["local", "s3"]
    path: Path | None = None
    bucket: str | None = None
    prefix: str | None = None
    cache_path: Path | None = None

    @property
    def local_path(self) -> Path:
        """The folder to load with from_pretrained: the model folder, or its cache folder."""
        path = self.path if self.kind == "local" else self.cache_path
        if path is None:
            raise ValueError(f"model {self.name!r} has no local folder")
        return path


def resolve_model(name: str, settings: Settings) -> ModelRef:
    """Validate `name` and return where the model lives.

    Local names must be a folder directly under models_dir that contains config.json; a
    symlink is accepted only when its target also lies inside models_dir. S3 URIs are checked
    for form and against `s3_model_prefixes`; the caller checks that `<prefix>/config.json`
    exists.
    Raises ValidationFailed naming the model and where models are looked up.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValidationFailed(
            "model is missing: set it to a folder name under SDFT_MODELS_DIR or an s3:// URI",
            problems=["model: missing or empty"],
        )
    if len(name) > _MAX_NAME_CHARS:
        raise _invalid(name, f"longer than {_MAX_NAME_CHARS} characters", settings)
    if name.startswith("s3://"):
        return _resolve_s3(name, settings)
    return _resolve_local(name, settings)


def _resolve_local(name: str, settings: Settings) -> ModelRef:
    if "/" in name or "\\" in name or "\x00" in name:
        raise _invalid(name, "a model name must not contain a path separator", settings)
    if name in {".", ".."} or name.startswith("."):
        raise _invalid(name, "a model name must not start with '.'", settings)
    if Path(name).is_absolute():
        raise _invalid(name, "a model name must not be an absolute path", settings)

    root = settings.models_dir.resolve()
    candidate = root / name
    resolved = candidate.resolve()
    # resolve() follows symlinks, so this also rejects links that lead out of the store.
    if not resolved.is_relative_to(root) or resolved == root:
        raise _invalid(name, "the folder resolves outside the models directory", settings)
    if not resolved.is_dir():
        raise _invalid(name, "no such model folder", settings)
    if not (resolved / "config.json").is_file():
        raise _invalid(name, "the folder has no config.json", settings)
    return ModelRef(name=name, kind="local", path=resolved)


def _resolve_s3(name: str, settings: Settings) -> ModelRef:
    rest = name[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.match(bucket):
        raise _invalid(name, f"invalid S3 bucket name {bucket!r}", settings)
    if not prefix:
        raise _invalid(name, "the URI names no folder inside the bucket", settings)
    segments = prefix.split("/")
    if any(s in {"", ".", ".."} for s in segments) or "\\" in prefix or "\x00" in prefix:
        raise _invalid(name, "the prefix contains an empty, '.' or '..' segment", settings)

    uri = f"s3://{bucket}/{prefix}"
    _check_s3_allowed(name, uri, bucket, prefix, settings)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", segments[-1])[:64]
    cache_path = settings.cache_dir.resolve() / "models" / f"{readable}-{digest}"
    return ModelRef(name=uri, kind="s3", bucket=bucket, prefix=prefix + "/", cache_path=cache_path)


def _check_s3_allowed(name: str, uri: str, bucket: str, prefix: str, settings: Settings) -> None:
    """Reject URIs outside the operator's allow-list, and any URI into the service's own
    datasets or jobs, which belong to tenants and must not be readable through a model name."""
    if bucket == settings.s3_bucket and prefix.split("/")[0] in {"datasets", "jobs"}:
        raise _invalid(
            name, "the service's own datasets and job outputs cannot be models", settings
        )
    allowed = [p.rstrip("/") + "/" for p in settings.s3_model_prefixes]
    if not allowed:
        raise _invalid(
            name,
            "s3:// models are turned off on this service; ask the operator to list allowed "
            "prefixes in SDFT_S3_MODEL_PREFIXES",
            settings,
        )
    if not any((uri + "/").startswith(p) for p in allowed):
        raise _invalid(
            name, f"the URI is outside the allowed prefixes {', '.join(allowed)}", settings
        )


def _invalid(name: str, reason: str, settings: Settings) -> ValidationFailed:
    where = (
        f"models are folder names under {settings.models_dir} (SDFT_MODELS_DIR) "
        "or s3://bucket/prefix URIs"
    )
    message = f"model {name!r} is invalid: {reason}; {where}"
    return ValidationFailed(message, problems=[f"model={name!r}: {reason}"])
