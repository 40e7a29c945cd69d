"""Client-chosen file names -> safe relative paths under the receiver's root.

A name may carry folders (``a/b/c.mp4``). It is NFC-normalized, empty and ``.`` segments
and repeated slashes are dropped; everything that could point elsewhere or confuse a
reader is refused with a reason the client sees in the 400 answer: control characters,
and invisible ones that change how a name reads (bidi overrides such as U+202E make
``\u202egnp.exe`` show as ``exe.png``; zero-width characters make two names look alike).
That includes every format character (category Cf) but two: the zero-width joiner and
non-joiner (U+200D, U+200C) that Persian words and emoji sequences need are allowed between
two visible characters, and refused anywhere else. This only checks the
*text*: symlinks already on disk are handled where files are opened (``safefs``).
"""

from __future__ import annotations

import unicodedata

INCOMING_DIR = ".incoming"
MAX_SEGMENT_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs
MAX_PATH_BYTES = 1024
MAX_DEPTH = 32

_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cs": "an unpaired surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cf": "an invisible format character",
}
# Not in a refused category, but shown as nothing at all.
_INVISIBLE = frozenset(
    {
        "͏",  # COMBINING GRAPHEME JOINER
        "ᅟ",  # HANGUL CHOSEONG FILLER
        "ᅠ",  # HANGUL JUNGSEONG FILLER
        "⠀",  # BRAILLE PATTERN BLANK
        "ㅤ",  # HANGUL FILLER
        "ﾠ",  # HALFWIDTH HANGUL FILLER
    }
)


# Joiners that real names carry (Persian orthography, emoji sequences): allowed only between
# two visible characters, where they join; alone, doubled or at an edge they only hide.
_JOINERS = frozenset({"\u200c", "\u200d"})
LATIN_END = 0x02FF  # the end of the Latin blocks (and spacing modifiers)


def _joins(raw: str, i: int) -> bool:
    def visible(ch: str) -> bool:
        return not ch.isspace() and ch != "/" and unicodedata.category(ch) not in _REFUSED_CATEGORIES \
            and ch not in _INVISIBLE

    if not (0 < i < len(raw) - 1 and visible(raw[i - 1]) and visible(raw[i + 1])):
        return False
    # Latin text has no use for them: between two Latin (or ASCII) characters they only hide
    return ord(raw[i - 1]) > LATIN_END or ord(raw[i + 1]) > LATIN_END


class BadFilename(ValueError):
    """``str(err)`` is the reason, ready for the client."""


def normalize_filename(raw: str) -> str:
    """The normalized relative path (``a/b/c.mp4``), or BadFilename with the reason."""
    if not raw:
        raise BadFilename("filename is empty")
    for i, ch in enumerate(raw):
        if ch == "\0":
            raise BadFilename("filename contains a NUL character")
        if ch in _JOINERS and _joins(raw, i):
            continue
        what = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if what is None and ch in _INVISIBLE:
            what = "an invisible character"
        if what:
            label = unicodedata.name(ch, "")
            raise BadFilename(f"filename contains {what} (U+{ord(ch):04X}{' ' + label if label else ''})")
    name = unicodedata.normalize("NFC", raw)
    if "\\" in name:
        raise BadFilename("filename contains a backslash: separate folders with /")
    if name.startswith("/"):
        raise BadFilename("filename is an absolute path: it must be relative to the root")
    if name.endswith("/"):
        raise BadFilename("filename ends with /: it names a folder, not a file")
    segments = [seg for seg in name.split("/") if seg not in ("", ".")]
    if not segments:
        raise BadFilename("filename is empty")
    if ".." in segments:
        raise BadFilename("filename contains a '..' segment")
    for seg in segments:
        if not seg.strip():
            raise BadFilename("filename contains a blank segment")
        if len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise BadFilename(
                f"filename segment {seg[:40]!r}... is longer than {MAX_SEGMENT_BYTES} bytes"
            )
    if segments[0] == INCOMING_DIR:
        raise BadFilename(f"{INCOMING_DIR!r} is reserved for the receiver's partial uploads")
    if len(segments) > MAX_DEPTH:
        raise BadFilename(f"filename is nested more than {MAX_DEPTH} folders deep")
    normalized = "/".join(segments)
    if len(normalized.encode("utf-8")) > MAX_PATH_BYTES:
        raise BadFilename(f"filename is longer than {MAX_PATH_BYTES} bytes")
    return normalized
