import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.units import format_duration, format_size, parse_duration, parse_listen, parse_size


@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("512", 512), ("64KiB", 64 * 1024), ("50MiB", 50 * 1024**2), ("50 MiB", 50 * 1024**2),
    ("1.5GiB", 3 * 1024**3 // 2), ("10GB", 10 * 1000**3), ("1k", 1000), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@given(st.integers(0, 10**24), st.sampled_from([("", 1), ("KB", 1000), ("KiB", 1024), ("MB", 1000**2),
                                                 ("GiB", 1024**3), ("TB", 1000**4)]))
def test_parse_size_is_exact_however_large(n, unit):
    """No float on the way: 123456789123456789 bytes is that many, not ...784."""
    suffix, factor = unit
    assert parse_size(f"{n}{suffix}") == n * factor


@given(st.integers(0, 10**15), st.integers(1, 9))
def test_parse_size_decimal_fractions_are_exact(whole, tenth):
    """1.1KB is 1100 bytes (the float 1.1 * 1000 is 1100.0000000000002)."""
    assert parse_size(f"{whole}.{tenth}KB") == whole * 1000 + tenth * 100


@pytest.mark.parametrize("bad", ["", "MiB", "5 parsecs", "-1", "1.3B", True, None, 1.5, -4])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="size|bytes|negative"):
        parse_size(bad)


@pytest.mark.parametrize("text,expected", [
    ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1d", 86400.0),
    ("10", 10.0), (3, 3.0), (0.5, 0.5), (" 2m ", 120.0),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["soon", "", "5x", "s", "-5s", "5 s m", True, float("inf"), -1])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError) as err:
        parse_duration(bad)
    assert repr(bad) in str(err.value)


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "B", "KiB", "MiB", "GiB"]))
def test_size_units_multiply(n, unit):
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    assert parse_size(f"{n}{unit}") == n * factor


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=59))
def test_duration_compound(minutes, seconds):
    assert parse_duration(f"{minutes}m{seconds}s") == minutes * 60 + seconds


def test_formatting():
    assert format_size(0) == "0 B"
    assert format_size(50 * 1024**2) == "50 MiB"
    assert format_size(1536) == "1.5 KiB"
    assert format_duration(95) == "1m35s"
    assert format_duration(2.5) == "2.5s"
    assert format_duration(3600) == "1h"


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:8765", ("127.0.0.1", 8765)), ("localhost:0", ("localhost", 0)),
    ("[::1]:9464", ("::1", 9464)), (("127.0.0.1", 9), ("127.0.0.1", 9)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("bad", ["8765", ":8765", "::1:80", "host:99999", "host:port", "a b:1", 8765])
def test_parse_listen_rejects(bad):
    with pytest.raises(ValueError):
        parse_listen(bad)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["B", "KiB", "MiB", "GiB", "KB", "MB", "GB", "k"]),
       st.sampled_from([" ", "  ", "\t"]))
def test_a_space_between_number_and_unit_is_allowed(n, unit, space):
    """Decided in issue 13: `10 MB` is 10 * 1000**2 bytes, as `10MB` is (and `50 MiB` is how syncd prints sizes)."""
    assert parse_size(f"{n}{space}{unit}") == parse_size(f"{n}{unit}")
