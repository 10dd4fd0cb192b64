"""Storage against the real SeaweedFS server of the test run."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from api.settings import Settings
from api.storage import MultipartWriter, Storage


@pytest.fixture
def storage(service_settings: Settings) -> Storage:
    return Storage.from_settings(service_settings)


def test_upload_fileobj_multipart(storage: Storage) -> None:
    # Three parts: two full ones and a short last one.
    data = bytes(range(256)) * (4096 * 20) + b"tail"
    writer = MultipartWriter(storage.client, storage.bucket, "unit/multipart.bin", 5 * 1024**2)
    for start in range(0, len(data), 1_000_000):
        writer.write(data[start : start + 1_000_000])
    size, sha256 = writer.close()

    assert size == len(data)
    assert sha256 == hashlib.sha256(data).hexdigest()
    body = storage.open_stream("unit/multipart.bin").read()
    assert body == data


def test_abort_leaves_nothing(storage: Storage) -> None:
    writer = MultipartWriter(storage.client, storage.bucket, "unit/aborted.bin", 5 * 1024**2)
    writer.write(b"x" * (6 * 1024**2))
    writer.abort()

    assert not storage.exists("unit/aborted.bin")
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix="unit/aborted")
    assert uploads.get("Uploads", []) == []


def test_dir_roundtrip_and_prefix_ops(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"alpha")
    (source / "sub" / "b.bin").write_bytes(b"\x00" * 10)

    uploaded = storage.upload_dir("unit/dir", source)
    assert [path for path, _, _ in uploaded] == ["a.txt", "sub/b.bin"]
    assert uploaded[0][2] == hashlib.sha256(b"alpha").hexdigest()

    target = tmp_path / "dst"
    relpaths = storage.download_prefix("unit/dir", target)
    assert sorted(relpaths) == ["a.txt", "sub/b.bin"]
    assert (target / "sub" / "b.bin").read_bytes() == b"\x00" * 10

    assert storage.delete_prefix("unit/dir/") == 2
    assert list(storage.list_prefix("unit/dir/")) == []


def test_json_and_presign(storage: Storage, service_settings: Settings) -> None:
    storage.put_json("unit/obj.json", {"a": 1})
    assert storage.get_json("unit/obj.json") == {"a": 1}
    assert storage.get_json("unit/missing.json") is None

    storage.upload_fileobj("unit/presigned.txt", io.BytesIO(b"hello"))
    url = storage.presign_get("unit/presigned.txt", 60)
    assert httpx.get(url).content == b"hello"


def test_wrong_secret_rejected(service_settings: Settings) -> None:
    wrong = service_settings.model_copy(update={"s3_secret_access_key": SecretStr("wrong")})
    with pytest.raises(ClientError):
        Storage.from_settings(wrong).client.list_objects_v2(Bucket=service_settings.s3_bucket)


def test_presigned_url_expires(storage: Storage) -> None:
    storage.upload_fileobj("unit/expiring.txt", io.BytesIO(b"soon gone"))
    # Signatures carry whole seconds, so a 1 s link can be expired before its first use.
    url = storage.presign_get("unit/expiring.txt", 3)
    assert httpx.get(url).status_code == 200

    time.sleep(4.5)

    assert httpx.get(url).status_code == 403
