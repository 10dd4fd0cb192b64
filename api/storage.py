"""S3-compatible object storage (boto3), and the key layout every component shares.

Layout inside the bucket:
- `datasets/{dataset_id}/records.jsonl` and `report.json`
- `jobs/{job_id}/checkpoints/step-000100/…`
- `jobs/{job_id}/merged/…` with `manifest.json` written last, so its presence means the
  merged model is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from api.settings import Settings

logger = logging.getLogger(__name__)

# S3 requires every multipart part except the last to be at least 5 MiB.
PART_SIZE = 8 * 1024 * 1024
MANIFEST_NAME = "manifest.json"


def dataset_records_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/records.jsonl"


def dataset_report_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/report.json"


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step:06d}/"


def merged_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/merged/"


def manifest_key(job_id: str) -> str:
    return merged_prefix(job_id) + MANIFEST_NAME


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class StorageError(RuntimeError):
    """An S3 request failed; the message names the operation, bucket and key."""


class MultipartWriter:
    """Stream bytes to one S3 object in parts of PART_SIZE while computing size and sha256.

    Holds at most one part in memory. Objects smaller than one part are sent with a single
    PUT on `close()`. Call `abort()` on any failure so that no partial upload stays behind.
    """

    def __init__(self, client: Any, bucket: str, key: str, part_size: int = PART_SIZE):
        self._client = client
        self._bucket = bucket
        self.key = key
        self._part_size = part_size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise StorageError(f"write to s3://{self._bucket}/{self.key} after close")
        self._sha256.update(data)
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(chunk)

    def _upload_part(self, chunk: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self.key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=chunk,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def close(self) -> tuple[int, str]:
        """Finish the object and return (size in bytes, sha256 hex)."""
        if self.closed:
            return self.size, self._sha256.hexdigest()
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self.key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer.clear()
        self.closed = True
        return self.size, self._sha256.hexdigest()

    def abort(self) -> None:
        """Drop the upload; safe to call more than once and after close()."""
        self._buffer.clear()
        if self._upload_id is not None and not self.closed:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self.key, UploadId=self._upload_id
                )
            except ClientError as exc:
                logger.warning("failed to abort multipart upload of %s: %s", self.key, exc)
        elif self.closed:
            self._client.delete_object(Bucket=self._bucket, Key=self.key)
        self.closed = True


class Storage:
    """One bucket of an S3-compatible store."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        presign_client: Any | None = None,
    ):
        self.client = client
        self.bucket = bucket
        self._presign_client = presign_client or client

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        def make_client(endpoint: str) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=settings.s3_access_key_id.get_secret_value() or None,
                aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
                region_name=settings.s3_region,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )

        client = make_client(settings.s3_endpoint_url)
        presign_client = None
        if settings.s3_presign_endpoint_url:
            presign_client = make_client(settings.s3_presign_endpoint_url)
        return cls(client, settings.s3_bucket, presign_client)

    # Bucket.

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"head_bucket {self.bucket!r} failed: {exc}") from exc
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise StorageError(f"create_bucket {self.bucket!r} failed: {exc}") from exc
        logger.info("created bucket %s", self.bucket)

    def check(self) -> None:
        """Raise StorageError unless a HEAD request on the bucket succeeds."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise StorageError(f"bucket {self.bucket!r} is not reachable: {exc}") from exc

    # Writes.

    def open_writer(self, key: str) -> MultipartWriter:
        return MultipartWriter(self.client, self.bucket, key)

    def upload_fileobj(self, key: str, fileobj: IO[bytes]) -> tuple[int, str]:
        """Stream a binary file object to `key`; return (size, sha256 hex)."""
        writer = self.open_writer(key)
        try:
            while chunk := fileobj.read(1024 * 1024):
                writer.write(chunk)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def upload_file(self, key: str, path: str | Path) -> tuple[int, str]:
        with open(path, "rb") as handle:
            return self.upload_fileobj(key, handle)

    def upload_dir(self, prefix: str, path: str | Path) -> list[tuple[str, int, str]]:
        """Upload every file under `path` to `prefix` + relative path (POSIX separators).

        Returns (relative path, size, sha256 hex) per file, sorted by path.
        """
        root = Path(path)
        if not root.is_dir():
            raise StorageError(f"upload_dir: {root} is not a directory")
        results: list[tuple[str, int, str]] = []
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            relpath = file.relative_to(root).as_posix()
            size, sha256 = self.upload_file(_join(prefix, relpath), file)
            results.append((relpath, size, sha256))
        return results

    def put_json(self, key: str, obj: Any) -> None:
        body = json.dumps(obj, sort_keys=True, indent=2).encode("utf-8")
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    # Reads.

    def get_json(self, key: str) -> Any:
        """Return the decoded JSON object at `key`, or None when the key does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StorageError(f"get_object {key!r} failed: {exc}") from exc
        return json.loads(response["Body"].read())

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise StorageError(f"head_object {key!r} failed: {exc}") from exc

    def open_stream(self, key: str) -> IO[bytes]:
        """Return a readable stream of the object's bytes; the caller closes it."""
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def download_file(self, key: str, path: str | Path) -> None:
        """Download to `path` through a temporary file, so a crash never leaves a partial file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        self.client.download_file(self.bucket, key, str(partial))
        os.replace(partial, target)

    def download_prefix(self, prefix: str, directory: str | Path) -> list[str]:
        """Download every object under `prefix` into `directory`; return the relative paths."""
        root = Path(directory).resolve()
        prefix = _as_prefix(prefix)
        relpaths = []
        for info in self.list_prefix(prefix):
            relpath = info.key[len(prefix) :]
            target = (root / relpath).resolve()
            if not target.is_relative_to(root) or not relpath:
                raise StorageError(f"object key {info.key!r} would be written outside {root}")
            self.download_file(info.key, target)
            relpaths.append(relpath)
        return relpaths

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=item["Size"])

    def presign_get(self, key: str, expires_s: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self._presign_client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_s
        )

    # Deletes.

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; return how many were deleted."""
        keys = [info.key for info in self.list_prefix(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    # Merged-model manifest.

    def write_manifest(self, job_id: str, files: list[tuple[str, int, str]]) -> None:
        """Write `manifest.json` for the merged model; call after every file is uploaded."""
        entries = [{"path": p, "size": size, "sha256": sha} for p, size, sha in files]
        self.put_json(manifest_key(job_id), {"files": entries})

    def read_manifest(self, job_id: str) -> list[dict[str, Any]] | None:
        """Return the manifest's file entries, or None while the merged model is incomplete."""
        manifest = self.get_json(manifest_key(job_id))
        if manifest is None:
            return None
        return list(manifest.get("files", []))


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _as_prefix(prefix: str) -> str:
    return prefix if prefix.endswith("/") or not prefix else prefix + "/"


def _join(prefix: str, relpath: str) -> str:
    return posixpath.join(_as_prefix(prefix), relpath) if prefix else relpath
