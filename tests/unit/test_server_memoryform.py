"""The in-memory form splitter against aiohttp's streaming part reader, on the same bytes."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp import MultipartReader, streams
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from urllib3.filepost import encode_multipart_formdata

from syncd.server.memoryform import FormError, MemoryPart, split_form

CT = "multipart/form-data; boundary=b0undary"


def form(*parts: tuple[bytes, bytes], boundary: bytes = b"b0undary", preamble: bytes = b"",
         epilogue: bytes = b"") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return preamble + body + b"--" + boundary + b"--\r\n" + epilogue


def field(name: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode()


async def _read_all(part: MemoryPart) -> bytes:
    out = b""
    while chunk := await part.read_chunk(3):
        out += chunk
    return out


def memory(body: bytes, content_type: str = CT) -> list[tuple[dict[str, str], bytes]]:
    return [(dict(p.headers), asyncio.run(_read_all(p))) for p in split_form(body, content_type)]


def aiohttp_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """What aiohttp's reader makes of ``body`` (raises what it raises)."""

    async def read() -> list[tuple[dict[str, str], bytes]]:
        stream = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        stream.feed_data(body)
        stream.feed_eof()
        reader = MultipartReader(CIMultiDict({"Content-Type": content_type}), stream)
        out = []
        while (part := await reader.next()) is not None:
            data = b""
            while chunk := await part.read_chunk(256):
                data += chunk
            out.append((dict(part.headers), data))
        return out

    return asyncio.run(read())


def test_a_whole_file_post_as_syncd_sends_it() -> None:
    body, ct = encode_multipart_formdata([("filename", "d/f.bin"), ("md5", "0" * 32),
                                          ("file", ("f.bin", b"\r\n--x\r\n" * 100, "application/octet-stream"))])
    parts = memory(body, ct)
    assert [p[1] for p in parts] == [b"d/f.bin", b"0" * 32, b"\r\n--x\r\n" * 100]
    assert parts[2][0]["Content-Type"] == "application/octet-stream"
    assert parts == aiohttp_parts(body, ct)


_boundaries = st.text("abcdefghijklmnopqrstuvwxyz0123456789'()+_,-./:=? ", min_size=1, max_size=70).filter(
    lambda b: not b.endswith(" "))
_data = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from([b"\r\n", b"--", b"-", b"\r", b"\n", b"x"]),
                                                    max_size=40).map(b"".join))


@settings(max_examples=200, deadline=None)
@given(boundary=_boundaries, values=st.lists(_data, max_size=5), preamble=st.sampled_from([b"", b"junk\r\n"]),
       epilogue=st.sampled_from([b"", b"trailing text\r\n"]))
def test_splits_like_aiohttp(boundary: str, values: list[bytes], preamble: bytes, epilogue: bytes) -> None:
    b = boundary.encode()
    if any(b"--" + b in v or v.endswith(b"\r\n--" + b[: len(v)]) for v in values):
        return  # content that holds its own delimiter is not a form of these parts
    body = form(*[(field(f"f{i}"), v) for i, v in enumerate(values)], boundary=b, preamble=preamble,
                epilogue=epilogue)
    ct = f'multipart/form-data; boundary="{boundary}"'
    try:
        expected = aiohttp_parts(body, ct)
    except ValueError:  # a boundary aiohttp cannot read either (its parser strips spaces)
        with pytest.raises(FormError):
            split_form(body, ct)
        return
    assert memory(body, ct) == expected


@pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader")  # the reference reader's
@pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam")
@settings(max_examples=300, deadline=None)
@given(values=st.lists(_data, min_size=1, max_size=3), cut=st.integers(min_value=0), junk=st.binary(max_size=8),
       at=st.integers(min_value=0))
def test_a_damaged_body_is_refused_or_read_as_aiohttp_reads_it(values: list[bytes], cut: int, junk: bytes,
                                                               at: int) -> None:
    """Never a third reading: what the splitter accepts, aiohttp reads the same way."""
    body = form(*[(field(f"f{i}"), v) for i, v in enumerate(values)])
    at %= len(body) + 1
    body = (body[:at] + junk + body[at:])[: len(body) + len(junk) - cut % 20]
    try:
        ours = memory(body)
    except FormError:
        return  # stricter than aiohttp is fine
    assert ours == aiohttp_parts(body, CT)  # (an aiohttp error here fails the test too)


def test_padding_after_a_delimiter_and_an_epilogue_are_ignored() -> None:
    body = b"--b0undary \t\r\n" + field("a") + b"\r\n\r\nA\r\n--b0undary--  \r\nepilogue"
    assert memory(body) == [({"Content-Disposition": 'form-data; name="a"'}, b"A")]


def test_an_empty_form_and_an_empty_part() -> None:
    assert memory(b"--b0undary--\r\n") == []
    assert memory(form((field("a"), b""))) == [({"Content-Disposition": 'form-data; name="a"'}, b"")]


def test_a_part_without_headers() -> None:
    assert memory(b"--b0undary\r\n\r\ndata\r\n--b0undary--") == [({}, b"data")]


def test_a_leading_charset_field_is_the_default_charset_of_the_others() -> None:
    parts = split_form(form((field("_charset_"), b"iso-8859-1"), (field("filename"), "ä".encode("latin-1"))), CT)
    assert len(parts) == 1 and parts[0].get_charset("utf-8") == "iso-8859-1"
    own = split_form(form((field("_charset_"), b"iso-8859-1"),
                          (field("a") + b"\r\nContent-Type: text/plain; charset=utf-8", b"x")), CT)
    assert own[0].get_charset("utf-8") == "utf-8"
    later = split_form(form((field("a"), b"x"), (field("_charset_"), b"iso-8859-1")), CT)
    assert len(later) == 2 and later[0].get_charset("utf-8") == "utf-8"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary anywhere",
        form((field("a"), b"A"))[:-len(b"--b0undary--\r\n")],  # the closing delimiter is missing
        form((field("a"), b"A")).replace(b"--b0undary--", b"--b0undaryX--"),
        b"--b0undary\r\n" + field("a") + b"\r\n\r\nA",  # ends inside a part
        b"--b0undary\r\n" + field("a"),  # ends inside the headers
        b"--b0undary\r\n" + field("a") + b"\r\n folded\r\n\r\nA\r\n--b0undary--",
        b"--b0undary\r\nno colon here\r\n\r\nA\r\n--b0undary--",
        b"--b0undary\r\n: empty name\r\n\r\nA\r\n--b0undary--",
        b"--b0undary\r\nName : v\r\n\r\nA\r\n--b0undary--",
        b"--b0undarygarbage\r\n" + field("a") + b"\r\n\r\nA\r\n--b0undary--",
        form((field("_charset_"), b"x" * 40), (field("a"), b"A")),
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(FormError):
        split_form(body, CT)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          "text/plain; boundary=x", "multipart/form-data; boundary=" + "x" * 71])
def test_a_content_type_without_a_usable_boundary_is_refused(content_type: str) -> None:
    with pytest.raises(FormError):
        split_form(b"--x--\r\n", content_type)
