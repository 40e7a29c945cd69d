from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.server.keys import MAX_LENGTH, MIN_LENGTH, BadUploadKey, KeyLocks, is_upload_key, parse_upload_key

ALPHABET = string.ascii_letters + string.digits + "_-"


@given(st.text(alphabet=ALPHABET, min_size=MIN_LENGTH, max_size=MAX_LENGTH))
def test_keys_of_the_alphabet_and_length_are_accepted(key: str) -> None:
    assert parse_upload_key([key]) == key
    assert parse_upload_key([f"  {key}\t"]) == key  # header whitespace is not part of it


@given(
    st.one_of(
        st.text(alphabet=ALPHABET, max_size=MIN_LENGTH - 1),
        st.text(alphabet=ALPHABET, min_size=MAX_LENGTH + 1, max_size=MAX_LENGTH + 40),
        st.tuples(
            st.text(alphabet=ALPHABET, min_size=MIN_LENGTH),
            st.characters(blacklist_characters=ALPHABET + " \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"),
            st.text(alphabet=ALPHABET),
        ).map("".join),
    )
)
def test_everything_else_is_refused_with_a_reason(raw: str) -> None:
    assert not is_upload_key(raw.strip())
    reason = r"^Upload-Key (['\"]).*\1 is not 16\.\.128 characters from A-Z a-z 0-9 _ -$"
    with pytest.raises(BadUploadKey, match=reason):
        parse_upload_key([raw])


def test_no_header_is_no_key_and_two_are_refused() -> None:
    assert parse_upload_key([]) is None
    with pytest.raises(BadUploadKey, match="given 2 times"):
        parse_upload_key(["a" * 20, "b" * 20])


def test_long_keys_are_shortened_in_the_reason() -> None:
    with pytest.raises(BadUploadKey) as err:
        parse_upload_key(["x" * 1000])
    assert len(str(err.value)) < 120


def test_key_locks_serialize_one_key_and_forget_it_after() -> None:
    locks = KeyLocks()
    order: list[str] = []

    async def use(key: str, name: str, gate: asyncio.Event | None) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            if gate is not None:
                await gate.wait()
            order.append(f"{name} out")

    async def main() -> None:
        gate = asyncio.Event()
        first = asyncio.create_task(use("k", "a", gate))
        await asyncio.sleep(0)
        second = asyncio.create_task(use("k", "b", None))
        other = asyncio.create_task(use("other", "c", None))
        await other
        assert len(locks) == 1  # "other" is forgotten once released; "k" is still held
        gate.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert order == ["a in", "c in", "c out", "a out", "b in", "b out"]
    assert len(locks) == 0
