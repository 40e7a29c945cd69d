from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.watch import DEFAULT_IGNORES, PathFilter, ignore_dirs_within


@pytest.mark.parametrize(
    ("include", "exclude", "relpath", "expected"),
    [
        # without '/': the basename, at any depth
        (("*.mov",), (), "a.mov", True),
        (("*.mov",), (), "clips/2024/a.mov", True),
        (("*.mov",), (), "a.mov.txt", False),
        (("*.mov",), (), "a.MOV", False),  # case-sensitive
        # with '/': the whole path, anchored at the root
        (("raw/*.mov",), (), "raw/a.mov", True),
        (("raw/*.mov",), (), "x/raw/a.mov", False),
        (("raw/*.mov",), (), "raw/sub/a.mov", False),
        (("/raw/*.mov",), (), "raw/a.mov", True),
        # '*' never crosses '/'
        (("r*/a.mov",), (), "raw/x/a.mov", False),
        # '**' is zero or more segments
        (("**/tmp/*",), (), "tmp/a", True),
        (("**/tmp/*",), (), "x/y/tmp/a", True),
        (("**/tmp/*",), (), "x/tmp/y/a", False),
        (("raw/**",), (), "raw/a", True),
        (("raw/**",), (), "raw/a/b/c", True),
        (("raw/**",), (), "rawx/a", False),
        (("a/**/b",), (), "a/b", True),
        (("a/**/b",), (), "a/x/y/b", True),
        # '**' inside a segment is just '*'
        (("a**b",), (), "aXb", True),
        (("x/a**b",), (), "x/a/b", False),
        # character classes
        (("[!.]*.jpg",), (), "a.jpg", True),
        (("img_[0-9].jpg",), (), "img_7.jpg", True),
        (("img_[0-9].jpg",), (), "img_x.jpg", False),
        # exclude wins over include
        (("*.mov",), ("secret*",), "secret.mov", False),
        ((), ("*.log",), "a/b.log", False),
        ((), ("*.log",), "a/b.txt", True),
        ((), ("logs/**",), "logs/a/b.txt", False),
        ((), ("logs/**",), "x/logs/b.txt", True),
        # no include: everything not ignored
        ((), (), "any/thing.bin", True),
        ((), (), "", False),
    ],
)
def test_documented_semantics(
    include: tuple[str, ...], exclude: tuple[str, ...], relpath: str, expected: bool
) -> None:
    assert PathFilter(include, exclude).accepts(relpath) is expected


@pytest.mark.parametrize(
    "name",
    [
        ".hidden",
        ".DS_Store",
        "movie.mp4.part",
        "movie.mp4.PART",
        "export.partial",
        "x.tmp",
        "X.TMP",
        "download.crdownload",
        ".notes.txt.swp",
        "notes.txt.swp",
        "notes.txt.swx",
        "~$report.docx",
        "report.docx~",
        ".report.docx.aB3xYz",  # rsync temporary
        ".syncd-staging",
    ],
)
def test_default_ignores_at_any_depth(name: str) -> None:
    path_filter = PathFilter()
    assert not path_filter.accepts(name)
    assert not path_filter.accepts(f"a/b/{name}")
    assert PathFilter(use_default_ignores=False).accepts(f"a/b/{name}")


def test_default_ignores_list_is_the_contract() -> None:
    for pattern in (".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*.swp", "*.swx"):
        assert pattern in DEFAULT_IGNORES
    for pattern in ("~$*", "*~", ".syncd*"):
        assert pattern in DEFAULT_IGNORES


def test_dot_directories_are_pruned_and_their_files_rejected() -> None:
    path_filter = PathFilter()
    assert not path_filter.accepts_dir(".git")
    assert not path_filter.accepts_dir("a/.rsync-partial")
    assert not path_filter.accepts_dir("a/.cache/deeper")
    assert not path_filter.accepts(".git/config")
    assert not path_filter.accepts("a/.cache/deeper/file.bin")
    assert path_filter.accepts_dir("")
    assert path_filter.accepts_dir("a/b")
    assert PathFilter(use_default_ignores=False).accepts(".git/config")


def test_ignore_dirs_prune_their_subtree_only() -> None:
    path_filter = PathFilter(ignore_dirs=(Path("_done"), Path("work/staging")))
    assert not path_filter.accepts_dir("_done")
    assert not path_filter.accepts_dir("_done/2024")
    assert not path_filter.accepts("_done/a.mov")
    assert not path_filter.accepts("work/staging/a.mov")
    assert path_filter.accepts("work/a.mov")
    assert path_filter.accepts("_done.mov")
    assert path_filter.accepts_dir("work")
    assert path_filter.accepts_dir("_donex")


def test_exclude_globstar_patterns_prune_directories() -> None:
    path_filter = PathFilter(exclude=("**/node_modules/**", "cache/**", "*.log"))
    assert not path_filter.accepts_dir("node_modules")
    assert not path_filter.accepts_dir("a/b/node_modules")
    assert not path_filter.accepts_dir("cache")
    assert path_filter.accepts_dir("a/cache")
    assert path_filter.accepts_dir("logs")


def test_include_patterns_never_prune() -> None:
    path_filter = PathFilter(include=("raw/*.mov",))
    assert path_filter.accepts_dir("other")


@pytest.mark.parametrize("pattern", ["a//b", "raw/", "", "/"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        PathFilter(include=(pattern,))
    with pytest.raises(ValueError, match="pattern"):
        PathFilter(exclude=(pattern,))


@pytest.mark.parametrize("directory", ["/abs/done", "../done", ".", ""])
def test_ignore_dirs_must_be_relative_inside_the_root(directory: str) -> None:
    with pytest.raises(ValueError, match="ignore_dirs"):
        PathFilter(ignore_dirs=(Path(directory),))


def test_filter_is_frozen_and_hashable_even_from_lists() -> None:
    lists: list[str] = ["*.mov"]
    path_filter = PathFilter(lists, ["x*"], ignore_dirs=[Path("done")])  # type: ignore[arg-type]
    same = PathFilter(("*.mov",), ("x*",), ignore_dirs=(Path("done"),))
    assert path_filter.include == ("*.mov",)
    assert path_filter == same
    assert hash(path_filter) == hash(same)
    with pytest.raises(AttributeError):
        path_filter.include = ()  # type: ignore[misc]


def test_ignore_dirs_within(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    (root / "done").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(root)
    found = ignore_dirs_within(
        root, [root / "done", tmp_path / "elsewhere", root, tmp_path / "link" / "failed"]
    )
    assert found == (Path("done"), Path("failed"))


# --- properties -------------------------------------------------------------------

_CHARS = "ab.-*?[]!"
segment_text = st.text(alphabet="ab.-", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)
relpaths = st.lists(segment_text, min_size=1, max_size=5).map("/".join)
glob_segment = st.text(alphabet=_CHARS, min_size=1, max_size=5)


def _reference(pattern: list[str], parts: list[str]) -> bool:
    """Straightforward recursive glob matcher, as an independent oracle."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_reference(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _reference(pattern[1:], parts[1:])


@given(pattern=glob_segment.filter(lambda p: "/" not in p), relpath=relpaths)
def test_slashless_pattern_is_fnmatch_on_the_basename(pattern: str, relpath: str) -> None:
    path_filter = PathFilter((pattern,), use_default_ignores=False)
    assert path_filter.accepts(relpath) == fnmatchcase(relpath.rsplit("/", 1)[-1], pattern)


@given(
    segments=st.lists(st.one_of(st.just("**"), glob_segment), min_size=2, max_size=5),
    relpath=relpaths,
)
def test_path_pattern_matches_like_the_reference(segments: list[str], relpath: str) -> None:
    pattern = "/".join(segments)
    path_filter = PathFilter((pattern,), use_default_ignores=False)
    assert path_filter.accepts(relpath) == _reference(segments, relpath.split("/"))
    # an exclude is the exact complement
    assert PathFilter(exclude=(pattern,), use_default_ignores=False).accepts(relpath) != (
        _reference(segments, relpath.split("/"))
    )


@given(
    exclude=st.lists(
        st.lists(st.one_of(st.just("**"), glob_segment), min_size=1, max_size=4).map("/".join),
        max_size=3,
    ),
    ignore_dirs=st.lists(relpaths, max_size=2),
    directory=relpaths,
    rest=relpaths,
    defaults=st.booleans(),
)
def test_a_pruned_directory_holds_no_accepted_file(
    exclude: list[str], ignore_dirs: list[str], directory: str, rest: str, defaults: bool
) -> None:
    path_filter = PathFilter(
        (),
        tuple(exclude),
        ignore_dirs=tuple(Path(d) for d in ignore_dirs),
        use_default_ignores=defaults,
    )
    if not path_filter.accepts_dir(directory):
        assert not path_filter.accepts(f"{directory}/{rest}")


@given(directory=relpaths, rest=relpaths)
def test_globstar_exclude_prunes_exactly_what_it_matches(directory: str, rest: str) -> None:
    path_filter = PathFilter(exclude=(f"{directory}/**",), use_default_ignores=False)
    assert not path_filter.accepts_dir(directory)
    assert not path_filter.accepts(f"{directory}/{rest}")
    assert path_filter.accepts(f"{directory}x/{rest}")
