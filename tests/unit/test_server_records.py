from __future__ import annotations

import json

import pytest

from syncd.server.records import COMPLETE, UPLOADING, SessionRecord

ID = "11111111-1111-4111-8111-111111111111"


def record(**changes: object) -> SessionRecord:
    fields: dict = {
        "id": ID,
        "filename": "a/b.bin",
        "total": 100,
        "offset": 10,
        "state": UPLOADING,
        "created_at": 1000.0,
        "updated_at": 1001.0,
        **changes,
    }
    return SessionRecord(**fields)


def test_a_record_keeps_its_algorithm() -> None:
    done = record(state=COMPLETE, offset=100, md5="ab" * 32, checksum="sha256", path="a/b.bin")
    assert SessionRecord.from_json(done.to_json()) == done


def test_a_record_written_before_sha256_sessions_loads_as_md5() -> None:
    older = {k: v for k, v in json.loads(record().to_json()).items() if k != "checksum"}
    loaded = SessionRecord.from_json(json.dumps(older).encode())
    assert loaded == record() and loaded.checksum == "md5"


@pytest.mark.parametrize("checksum", ["sha1", "SHA256", "", None, 256, ["md5"]])
def test_an_unknown_algorithm_is_refused(checksum: object) -> None:
    doc = {**json.loads(record().to_json()), "checksum": checksum}
    with pytest.raises(ValueError, match="invalid values"):
        SessionRecord.from_json(json.dumps(doc).encode())
