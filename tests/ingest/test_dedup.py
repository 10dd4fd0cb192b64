"""Duplicate keys: the compact digest table and the content hash."""

from __future__ import annotations

import random

from sdft.data.records import Record
from sdft.ingest import DigestSet, record_key


def test_digest_set_add_and_repeat() -> None:
    keys = DigestSet()

    assert keys.add(12345)
    assert not keys.add(12345)
    assert keys.add(0)  # 0 is stored as 1, the empty-slot marker being 0
    assert not keys.add(1)
    assert len(keys) == 2


def test_digest_set_grows_without_loss() -> None:
    generator = random.Random(0)
    values = [generator.getrandbits(64) for _ in range(5000)]
    keys = DigestSet()

    added = [keys.add(value) for value in values]
    repeated = [keys.add(value) for value in values]

    assert all(added)
    assert not any(repeated)
    assert len(keys) == 5000


def test_record_key_ignores_call_ids() -> None:
    def record(call_id: str, city: str) -> Record:
        call = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": {}}}
        call["function"]["arguments"] = {"city": city}
        return Record(
            prompt=[{"role": "user", "content": "weather?"}],
            completion={"role": "assistant", "content": "", "tool_calls": [call]},
        )

    assert record_key(record("call_1", "Oslo")) == record_key(record("call_9", "Oslo"))
    assert record_key(record("call_1", "Oslo")) != record_key(record("call_1", "Rome"))
