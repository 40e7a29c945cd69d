from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from syncd.server.cli import TOKEN_ENV, UsageError, add_serve_arguments, run_serve, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="syncd serve")
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("abc123\n")
    return path


def test_defaults_with_a_token_file(tmp_path: Path, token_file: Path) -> None:
    s = settings_from_args(parse("--root", str(tmp_path), "--token-file", str(token_file)), environ={})
    assert (s.root, s.host, s.port, s.token) == (tmp_path, "127.0.0.1", 8765, "abc123")
    assert (s.max_size, s.min_free, s.expire) == (10 * 1024**3, 1024**3, 86400.0)
    assert (s.base_path, s.on_conflict, s.trust_forwarded) == ("/", "rename", False)


def test_every_flag(tmp_path: Path) -> None:
    args = parse(
        "--root", str(tmp_path),
        "--listen", "[::1]:0",
        "--max-size", "500MiB",
        "--min-free", "0",
        "--expire", "1h30m",
        "--base-path", "ingest",
        "--on-conflict", "overwrite",
        "--trust-forwarded",
        "--log-level", "debug",
    )  # fmt: skip
    s = settings_from_args(args, environ={TOKEN_ENV: " from-env "})
    assert (s.host, s.port, s.token) == ("::1", 0, "from-env")
    assert (s.max_size, s.min_free, s.expire) == (500 * 1024**2, 0, 5400.0)
    assert (s.base_path, s.on_conflict, s.trust_forwarded) == ("/ingest/", "overwrite", True)


def test_no_size_limit(tmp_path: Path) -> None:
    s = settings_from_args(parse("--root", str(tmp_path), "--no-auth", "--max-size", "none"), environ={})
    assert s.max_size is None and s.token is None


def test_the_token_file_wins_over_the_environment(tmp_path: Path, token_file: Path) -> None:
    args = parse("--root", str(tmp_path), "--token-file", str(token_file))
    assert settings_from_args(args, environ={TOKEN_ENV: "other"}).token == "abc123"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--listen", "8765"], "--listen: '8765' is not HOST:PORT"),
        (["--listen", "host:"], "--listen: 'host:': the port must be a number"),
        (["--listen", "host:99999"], "--listen: 'host:99999': the port must be a number in 0..65535"),
        (["--listen", "host:٨٠"], "--listen: 'host:٨٠': the port must be a number in 0..65535"),
        (["--listen", "::1:80"], "--listen: '::1:80': put an IPv6 address in brackets"),
        (["--listen", "a b:80"], "--listen: 'a b:80' is not HOST:PORT"),
        (["--max-size", "big"], "--max-size: 'big' is not a size"),
        (["--max-size", "0"], "--max-size: '0' must be more than 0"),
        (["--min-free=-1GiB"], "--min-free: '-1GiB' is not a size"),
        (["--expire", "soon"], "--expire: 'soon' is not a duration"),
        (["--expire", "0s"], "--expire: '0s' must be longer than 0s"),
        (["--base-path", "/a b"], "--base-path: '/a b' is not a URL path"),
        (["--on-conflict", "merge"], "--on-conflict: 'merge' is not one of rename, overwrite, fail"),
    ],
)
def test_bad_values_name_the_flag_and_value(
    tmp_path: Path, argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("--root", str(tmp_path), "--no-auth", *argv)
    with pytest.raises(UsageError) as info:
        settings_from_args(args, environ={})
    assert str(info.value).startswith(expected)
    assert run_serve(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("syncd serve: " + expected) and err.count("\n") == 1


def test_bad_log_level_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_serve(parse("--root", str(tmp_path), "--no-auth", "--log-level", "loud")) == 2
    assert "--log-level: 'loud' is not one of DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err


def test_without_a_token_auth_must_be_waived_explicitly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert run_serve(parse("--root", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--token-file" in err and TOKEN_ENV in err and "--no-auth" in err


def test_no_auth_conflicts_with_a_token_in_the_environment(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--no-auth: conflicts"):
        settings_from_args(parse("--root", str(tmp_path), "--no-auth"), environ={TOKEN_ENV: "t"})


def test_token_file_and_no_auth_exclude_each_other(tmp_path: Path, token_file: Path) -> None:
    with pytest.raises(SystemExit) as info:
        parse("--root", str(tmp_path), "--no-auth", "--token-file", str(token_file))
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), ("", "is empty"), ("  \n", "is empty"), ("two words", "one word")],
)
def test_bad_token_files(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=expected) as info:
        settings_from_args(parse("--root", str(tmp_path), "--token-file", str(path)), environ={})
    assert "two words" not in str(info.value)  # a token is never echoed


def test_an_empty_root_is_refused() -> None:
    with pytest.raises(UsageError, match="--root: '' is not a folder"):
        settings_from_args(parse("--root", "", "--no-auth"), environ={})


def test_root_is_required() -> None:
    with pytest.raises(SystemExit) as info:
        parse("--no-auth")
    assert info.value.code == 2


def test_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    for flag in (
        "--root", "--listen", "--token-file", "--no-auth", "--max-size", "--min-free",
        "--expire", "--base-path", "--on-conflict", "--trust-forwarded", "--log-level", TOKEN_ENV,
    ):  # fmt: skip
        assert flag in out
