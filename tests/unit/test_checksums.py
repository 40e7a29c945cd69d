import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd import checksums
from syncd.status import _digest


@given(st.sampled_from(checksums.ALGORITHMS), st.binary(max_size=64))
def test_a_digest_written_down_reads_back(algorithm, data):
    hexdigest = hashlib.new(algorithm, data).hexdigest()
    written = checksums.tag(algorithm, hexdigest)
    assert checksums.split(written) == (algorithm, hexdigest)
    assert checksums.label(written) == f"{algorithm} {hexdigest}"


def test_an_md5_is_written_as_plain_hex_as_journals_always_had_it():
    md5 = hashlib.md5(b"x").hexdigest()
    assert checksums.tag("md5", md5) == md5
    assert checksums.split(md5) == ("md5", md5)


def test_unknown_algorithms_are_refused():
    with pytest.raises(ValueError, match="'crc7'"):
        checksums.new_hasher("crc7")


def test_status_json_names_the_algorithm():
    sha = hashlib.sha256(b"x").hexdigest()
    assert _digest(f"sha256:{sha}") == {"md5": None, "sha256": sha}
    assert _digest("abc") == {"md5": "abc"}
    assert _digest(None) == {"md5": None}
