from __future__ import annotations

import os
import posixpath
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from syncd.server.names import _JOINERS as JOINERS
from syncd.server.names import MAX_DEPTH, MAX_SEGMENT_BYTES, BadFilename, normalize_filename


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("clip.mp4", "clip.mp4"),
        ("a/b/c.mp4", "a/b/c.mp4"),
        ("a//b///c.mp4", "a/b/c.mp4"),
        ("./a/./b.txt", "a/b.txt"),
        (".hidden", ".hidden"),
        ("..data", "..data"),  # only a whole '..' segment climbs
        ("name with spaces (1).txt", "name with spaces (1).txt"),
        ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),  # NFC: e + combining acute -> é
        ("日本語/ファイル.mov", "日本語/ファイル.mov"),
        ("a/.incoming/b", "a/.incoming/b"),  # reserved only at the top
    ],
)
def test_accepted_names_are_normalized(raw: str, expected: str) -> None:
    assert normalize_filename(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("/", "absolute"),
        (".", "empty"),
        ("./", "ends with /"),
        ("/etc/passwd", "absolute"),
        ("../escape.txt", "'..'"),
        ("a/../../escape.txt", "'..'"),
        ("a/..", "'..'"),
        ("a/b/", "ends with /"),
        ("a\\..\\b", "backslash"),
        ("nul\0byte", "NUL"),
        ("new\nline", "control character"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
        ("esc\x1b[31m", "control character"),
        ("line\u2028sep", "line separator"),
        ("lone\ud800surrogate", "surrogate"),
        (" /x", "blank segment"),
        ("a/   /b", "blank segment"),
        ("x" * (MAX_SEGMENT_BYTES + 1), "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8
        ("/".join(["d"] * (MAX_DEPTH + 1)), "nested"),
        ("/".join(["d" * 200] * 6), "longer than 1024 bytes"),
        (".incoming/x.part", "reserved"),
        ("./.incoming/x", "reserved"),
        ("\u202egnp.exe", "invisible format character (U+202E RIGHT-TO-LEFT OVERRIDE)"),
        ("photo\u2066.jpg", "invisible format character (U+2066 LEFT-TO-RIGHT ISOLATE)"),
        ("in\u200bvoice.pdf", "invisible format character (U+200B ZERO WIDTH SPACE)"),
        ("\ufeffname.txt", "invisible format character (U+FEFF ZERO WIDTH NO-BREAK SPACE)"),
        ("soft\u00adhyphen", "invisible format character (U+00AD SOFT HYPHEN)"),
        ("a/\u200f/b", "invisible format character (U+200F RIGHT-TO-LEFT MARK)"),
        ("tag\U000e0041", "invisible format character (U+E0041 TAG LATIN CAPITAL LETTER A)"),
        ("\u3164.txt", "an invisible character (U+3164 HANGUL FILLER)"),
        ("blank\u2800.txt", "an invisible character (U+2800 BRAILLE PATTERN BLANK)"),
        ("e\u034f.txt", "an invisible character (U+034F COMBINING GRAPHEME JOINER)"),
    ],
)
def test_hostile_names_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(BadFilename) as info:
        normalize_filename(raw)
    assert reason in str(info.value)


def test_longest_segment_is_accepted() -> None:
    name = "x" * MAX_SEGMENT_BYTES
    assert normalize_filename(name) == name


_PIECES = st.sampled_from(
    ["..", ".", "", "/", "//", "\\", "\0", "\n", "a", "é", "e\u0301", ".incoming", " ", "~", "$HOME", "%2e%2e",
     "\u202e", "\u200b", "\u2066", "\ufeff", "\u3164"]
)  # fmt: skip


@given(st.lists(_PIECES | st.text(max_size=8), max_size=12).map("".join) | st.text())
@example("../../etc/passwd")
@example("a/b/../../../x")
def test_no_accepted_name_can_leave_the_root(raw: str) -> None:
    try:
        name = normalize_filename(raw)
    except BadFilename as exc:
        assert str(exc)
        return
    segments = name.split("/")
    assert not name.startswith("/")
    assert all(seg not in ("", ".", "..") for seg in segments)
    assert all(len(seg.encode("utf-8")) <= MAX_SEGMENT_BYTES for seg in segments)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name)
    # the only format characters left are joiners between two visible characters
    for i, ch in enumerate(name):
        if unicodedata.category(ch) == "Cf":
            assert ch in JOINERS and 0 < i < len(name) - 1
            assert not name[i - 1].isspace() and not name[i + 1].isspace()
            assert unicodedata.category(name[i - 1]) != "Cf" and unicodedata.category(name[i + 1]) != "Cf"
            assert max(ord(name[i - 1]), ord(name[i + 1])) > 0x02FF
    assert "\\" not in name
    root = "/srv/root"
    joined = posixpath.normpath(posixpath.join(root, name))
    assert joined.startswith(root + "/")
    assert os.path.commonpath([root, joined]) == root
    assert normalize_filename(name) == name  # normalizing is idempotent


@given(
    st.text(max_size=10),
    st.characters(categories=["Cf"]).filter(lambda ch: ch not in JOINERS),
    st.text(max_size=10),
)
def test_any_format_character_is_refused_wherever_it_stands(before: str, cf: str, after: str) -> None:
    with pytest.raises(BadFilename, match=r"^filename contains "):  # the first refused character's reason
        normalize_filename(f"ok{before}{cf}{after}.txt")
    with pytest.raises(BadFilename, match=rf"^filename contains an invisible format character \(U\+{ord(cf):04X}"):
        normalize_filename(f"ok{cf}.txt")


@pytest.mark.parametrize("raw", [
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.pdf",  # Persian: a ZWNJ inside a word
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467.jpg",  # an emoji ZWJ sequence
])
def test_joiners_that_join_are_accepted(raw: str) -> None:
    assert normalize_filename(raw) == unicodedata.normalize("NFC", raw)


@pytest.mark.parametrize("raw", [
    "\u200cname.txt", "name.txt\u200d", "a\u200c\u200cb.txt", "a \u200db.txt", "a\u200d/b.txt",
    "a\u200c\u202eb.txt", "in\u200dvoice.pdf",
])
def test_joiners_that_join_nothing_are_refused(raw: str) -> None:
    with pytest.raises(BadFilename, match=r"^filename contains an invisible format character"):
        normalize_filename(raw)
