from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.server.ranges import ContentRange, RangeError, parse_content_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 0-0/1", ContentRange(0, 0, 1)),
        ("bytes 0-99/100", ContentRange(0, 99, 100)),
        ("bytes 100-199/1000", ContentRange(100, 199, 1000)),
        ("bytes 007-009/10", ContentRange(7, 9, 10)),  # drf's regex takes leading zeros
        ("bytes */0", ContentRange(0, -1, 0)),
    ],
)
def test_valid_ranges(header: str, expected: ContentRange) -> None:
    assert parse_content_range(header) == expected


def test_the_empty_range_has_no_length() -> None:
    assert parse_content_range("bytes */0").length == 0


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "Error in request headers"),
        ("", "Error in request headers"),
        ("bytes 0-9", "Error in request headers"),
        ("bytes 0-9/*", "Error in request headers"),
        ("bytes */10", "Error in request headers"),
        ("Bytes 0-9/10", "Error in request headers"),
        ("bytes  0-9/10", "Error in request headers"),
        ("bytes 0-9/10 ", "Error in request headers"),
        ("bytes -1-9/10", "Error in request headers"),
        ("bytes ٠-٩/١٠", "Error in request headers"),  # Arabic-Indic digits are not ASCII digits
        ("bytes 1-0/10", "Error in request headers: range ends before it starts"),
        ("bytes 0-10/10", "End of chunk exceeds reported total (10 bytes)"),
        ("bytes 0-0/0", "End of chunk exceeds reported total (0 bytes)"),
        ("bytes 0-1/99999999999999999999", "Error in request headers"),  # 20 digits
        ("bytes 0-0/9223372036854775808", "Error in request headers: sizes stop at"),  # 2**63
    ],
)
def test_invalid_ranges(header: str | None, detail: str) -> None:
    with pytest.raises(RangeError) as info:
        parse_content_range(header)
    assert str(info.value).startswith(detail)


@given(st.integers(0, 2**62), st.integers(0, 2**40), st.integers(0, 2**40))
def test_well_formed_ranges_round_trip(start: int, length: int, slack: int) -> None:
    end = start + length
    total = end + 1 + slack
    parsed = parse_content_range(f"bytes {start}-{end}/{total}")
    assert parsed == ContentRange(start, end, total)
    assert parsed.length == length + 1


@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            "bytes {}-{}/{}".format,
            st.integers(-5, 2**64),
            st.integers(-5, 2**64),
            st.integers(-5, 2**64),
        ),
    )
)
def test_any_header_parses_to_a_sane_range_or_a_clear_error(header: str) -> None:
    try:
        parsed = parse_content_range(header)
    except RangeError as exc:
        assert str(exc)
        return
    assert 0 <= parsed.start <= parsed.end + 1
    assert parsed.end < parsed.total or parsed.total == 0
    assert parsed.length >= 0
    assert parsed.total < 2**63
