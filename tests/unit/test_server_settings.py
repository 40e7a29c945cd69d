from __future__ import annotations

from pathlib import Path

import pytest

from syncd.server.settings import ReceiverSettings, normalize_base_path


def test_defaults() -> None:
    s = ReceiverSettings(root=Path("/srv/in"))
    assert (s.host, s.port, s.token) == ("127.0.0.1", 8765, None)
    assert (s.max_size, s.min_free, s.expire) == (10 * 1024**3, 1024**3, 86400.0)
    assert (s.base_path, s.on_conflict, s.trust_forwarded) == ("/", "rename", False)


def test_the_token_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(ReceiverSettings(root=Path("/srv"), token="s3cret"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "/"), ("", "/"), ("ingest", "/ingest/"), ("/ingest", "/ingest/"), ("/a/b/", "/a/b/")],
)
def test_base_path_is_normalized(raw: str, expected: str) -> None:
    assert normalize_base_path(raw) == expected
    assert ReceiverSettings(root=Path("/srv"), base_path=raw).base_path == expected


@pytest.mark.parametrize("raw", ["/a b/", "/../x/", "/a/./b", "//", "/a?b", "/a#b", "/{id}/"])
def test_bad_base_paths_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a URL path"):
        normalize_base_path(raw)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"port": True}, "port"),
        ({"host": ""}, "host"),
        ({"token": ""}, "token"),
        ({"token": "two words"}, "token"),
        ({"max_size": 0}, "max_size"),
        ({"min_free": -1}, "min_free"),
        ({"expire": 0}, "expire"),
        ({"on_conflict": "merge"}, "on_conflict"),
    ],
)
def test_bad_values_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReceiverSettings(root=Path("/srv"), **changes)  # type: ignore[arg-type]


def test_no_size_limit_is_allowed() -> None:
    assert ReceiverSettings(root=Path("/srv"), max_size=None).max_size is None
