"""The strict Content-Type / Content-Disposition parsers of the receiver's form reader."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.server.formheaders import HeaderError, parse_content_disposition, parse_content_type

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=20)
# What a quoted-string can carry: HTAB, SP, visible ASCII, and any non-ASCII text (no
# other control characters: header lines never hold them).
quotable = st.text(
    st.characters(blacklist_categories=("Cc",), blacklist_characters="\x7f") | st.just("\t"), max_size=40
)
ows = st.sampled_from(["", " ", "  ", "\t", " \t"])


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the shapes clients send ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "params"),
    [
        ('form-data; name="file"; filename="a b.bin"', {"name": "file", "filename": "a b.bin"}),
        ('form-data; name="file"; filename="äöü 日本.bin"', {"name": "file", "filename": "äöü 日本.bin"}),
        ('form-data; name="f"; filename="x%22y.bin"', {"name": "f", "filename": "x%22y.bin"}),  # html5
        ('form-data; name="f"; filename="x\\"y\\\\z"', {"name": "f", "filename": 'x"y\\z'}),  # RFC 9110
        ('form-data; name="f"; filename="a;b=c"', {"name": "f", "filename": "a;b=c"}),
        ("form-data; name=md5", {"name": "md5"}),
        ('form-data;name="a";', {"name": "a"}),  # a trailing ";" (seen in the wild)
        ('FORM-DATA; NAME="a"', {"name": "a"}),
        ('form-data; name="f"; filename=""', {"name": "f", "filename": ""}),
        (
            "form-data; name=\"f\"; filename=\"fallback.bin\"; filename*=UTF-8''%C3%A4%20b.bin",
            {"name": "f", "filename": "ä b.bin"},
        ),
        ("form-data; name=\"f\"; filename*=utf-8'en'a%2Fb", {"name": "f", "filename": "a/b"}),
        ("form-data; name=\"f\"; filename*=ISO-8859-1''%E4", {"name": "f", "filename": "ä"}),
    ],
)
def test_well_formed_dispositions(raw: str, params: dict[str, str]) -> None:
    parsed = parse_content_disposition(raw)
    assert parsed.value == "form-data"
    assert parsed.params == params


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "; name=a",
        'form-data; name="unterminated',
        'form-data; name="a" junk',
        'form-data; name="a"; name="b"',  # which one?
        "form-data; name=a b",
        "form-data; name=",
        "form-data; =a",
        "form-data name=a",
        'form-data; name="a";; filename="b"',
        'form-data; name="a\\"',  # the escape eats the closing quote
        "form-data; filename*=UTF-8''%ZZ",
        "form-data; filename*=UTF-8''%C3",  # not UTF-8
        "form-data; filename*=koi8-r''%C1",  # RFC 8187 allows only two charsets
        "form-data; filename*=a.bin",
        'form-data; filename*="UTF-8\'\'a"',
        'form-data; name="a\x00b"',
        'form-data; name="a\nb"',
    ],
)
def test_malformed_dispositions_are_refused(raw: str) -> None:
    with pytest.raises(HeaderError):
        parse_content_disposition(raw)


@pytest.mark.parametrize(
    ("raw", "value", "params"),
    [
        ("multipart/form-data; boundary=27deaea62e7b", "multipart/form-data", {"boundary": "27deaea62e7b"}),
        ('Multipart/Form-Data; Boundary="a b:c"', "multipart/form-data", {"boundary": "a b:c"}),
        ("text/plain;charset=latin-1", "text/plain", {"charset": "latin-1"}),
        ("application/json", "application/json", {}),
    ],
)
def test_content_types(raw: str, value: str, params: dict[str, str]) -> None:
    parsed = parse_content_type(raw)
    assert (parsed.value, parsed.params) == (value, params)


@pytest.mark.parametrize("raw", ["", "multipart", "multipart/", "/form-data", "a/b/c", "text/plain; charset"])
def test_malformed_content_types_are_refused(raw: str) -> None:
    with pytest.raises(HeaderError):
        parse_content_type(raw)


# -- generated shapes ------------------------------------------------------------------------


@given(
    name=tokens | quotable,
    filename=quotable,
    disposition=st.sampled_from(["form-data", "Form-Data", "attachment"]),
    seps=st.lists(ows, min_size=6, max_size=6),
    name_as_token=st.booleans(),
)
def test_generated_dispositions_round_trip(
    name: str, filename: str, disposition: str, seps: list[str], name_as_token: bool
) -> None:
    name_value = name if name_as_token and name and set(name) <= set(TOKEN_CHARS) else quoted(name)
    raw = (
        f"{disposition}{seps[0]};{seps[1]}name={seps[2]}{name_value}"
        f"{seps[3]};{seps[4]}filename={quoted(filename)}{seps[5]}"
    )
    parsed = parse_content_disposition(raw)
    assert parsed.value == disposition.lower()
    assert parsed.params == {"name": name, "filename": filename}


@given(filename=st.text(max_size=40), fallback=quotable, ext_first=st.booleans())
def test_rfc8187_filenames_win_whatever_their_place(filename: str, fallback: str, ext_first: bool) -> None:
    try:
        encoded = quote(filename.encode("utf-8"), safe="")
    except UnicodeEncodeError:  # a lone surrogate is no text to send
        return
    ext = f"filename*=UTF-8''{encoded}"
    plain = f"filename={quoted(fallback)}"
    first, second = (ext, plain) if ext_first else (plain, ext)
    parsed = parse_content_disposition(f'form-data; name="file"; {first}; {second}')
    assert parsed.params == {"name": "file", "filename": filename}


@given(st.text(max_size=80))
def test_any_text_is_parsed_or_refused_never_crashes(raw: str) -> None:
    for parse in (parse_content_disposition, parse_content_type):
        try:
            parse(raw)
        except HeaderError:
            pass


@given(
    prefix=st.sampled_from(['form-data; name="a"', "form-data; name=a"]),
    junk=st.text(" \t;=\"\\", min_size=1, max_size=6).filter(lambda s: s.strip(" \t") not in ("", ";")),
)
def test_stray_separators_are_refused(prefix: str, junk: str) -> None:
    with pytest.raises(HeaderError):
        parse_content_disposition(prefix + junk + "x")
