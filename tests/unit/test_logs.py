"""Log formats (text, journald, JSON) and secret redaction, through the real root logger."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from syncd.logs import register_secret, setup_logging

log = logging.getLogger("syncd.test")

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    level = root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        handler.filters[:] = filters[handler]
    root.setLevel(level)


@pytest.fixture
def stderr_file(tmp_path: Path) -> Iterator[TextIO]:
    """A real file standing in for stderr, so JOURNAL_STREAM can name its inode."""
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        yield stream


def journal_environ(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def output(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def log_every_level() -> None:
    log.debug("debug %s", 1)
    log.info("info %s", 2)
    log.warning("warning %s", 3)
    log.error("error %s", 4)
    log.critical("critical %s", 5)


def test_journal_stream_gets_priorities_and_no_timestamps(stderr_file: TextIO):
    setup_logging(level="DEBUG", stream=stderr_file, environ=journal_environ(stderr_file))
    log_every_level()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("upload of %s crashed", "a.mp4")

    lines = output(stderr_file)
    assert lines[:6] == [
        "<7>DEBUG syncd.test: debug 1",
        "<6>INFO syncd.test: info 2",
        "<4>WARNING syncd.test: warning 3",
        "<3>ERROR syncd.test: error 4",
        "<2>CRITICAL syncd.test: critical 5",
        "<3>ERROR syncd.test: upload of a.mp4 crashed",
    ]
    traceback_lines = lines[6:]
    assert traceback_lines[0] == "<3>Traceback (most recent call last):"
    assert traceback_lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback_lines)
    assert not any(_TIMESTAMP.search(line) for line in lines)


def test_journal_stream_of_another_file_is_not_ours(stderr_file: TextIO, tmp_path: Path):
    with open(tmp_path / "other", "w") as other:
        environ = journal_environ(other)
    setup_logging(stream=stderr_file, environ=environ)
    log.warning("disk almost full")

    (line,) = output(stderr_file)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING  syncd\.test: disk almost full", line
    )


def test_level_filters_records(stderr_file: TextIO):
    setup_logging(level="warning", stream=stderr_file, environ={})
    log_every_level()
    assert [line.split(" ", 2)[2] for line in output(stderr_file)] == [
        "WARNING  syncd.test: warning 3",
        "ERROR    syncd.test: error 4",
        "CRITICAL syncd.test: critical 5",
    ]


def test_json_lines_parse_with_extra_fields_and_exceptions(stderr_file: TextIO):
    setup_logging(fmt="json", stream=stderr_file, environ={})
    log.info("uploaded %s", "a.mp4", extra={"file": "a.mp4", "bytes": 1024})
    try:
        raise ValueError("bad header")
    except ValueError:
        log.error("transcode failed", exc_info=True)

    first, second = (json.loads(line) for line in output(stderr_file))
    assert first.keys() == {"ts", "level", "logger", "msg", "file", "bytes"}
    assert first["level"] == "INFO"
    assert first["logger"] == "syncd.test"
    assert first["msg"] == "uploaded a.mp4"
    assert (first["file"], first["bytes"]) == ("a.mp4", 1024)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second["level"] == "ERROR"
    assert second["exc"].startswith("Traceback (most recent call last):")
    assert second["exc"].endswith("ValueError: bad header")


def test_json_on_the_journal_keeps_priorities(stderr_file: TextIO):
    setup_logging(fmt="json", stream=stderr_file, environ=journal_environ(stderr_file))
    log.warning("slow server")
    (line,) = output(stderr_file)
    assert line.startswith("<4>{")
    assert json.loads(line[3:])["msg"] == "slow server"


def test_setting_up_twice_keeps_one_handler(stderr_file: TextIO, tmp_path: Path):
    setup_logging(stream=stderr_file, environ={})
    with open(tmp_path / "second", "w+") as second:
        setup_logging(stream=second, environ={})
        log.warning("once")
        assert len(output(second)) == 1
    assert output(stderr_file) == []
    assert [h.get_name() for h in logging.getLogger().handlers].count("syncd") == 1


def test_bad_settings_are_refused():
    before = list(logging.getLogger().handlers)
    with pytest.raises(ValueError, match="not a log level"):
        setup_logging(level="LOUD", environ={})
    with pytest.raises(ValueError, match="not a log format"):
        setup_logging(fmt="xml", environ={})
    assert logging.getLogger().handlers == before


class TokenRejected(Exception):
    pass


@pytest.mark.parametrize("mode", ["text", "journal", "json"])
def test_a_registered_token_appears_in_no_line_at_any_level(
    mode: str, stderr_file: TextIO, caplog: pytest.LogCaptureFixture
):
    token = f"tok-{uuid.uuid4().hex}"
    register_secret(token + "\n")  # as read from a token file
    environ = journal_environ(stderr_file) if mode == "journal" else {}
    setup_logging(
        level="DEBUG", fmt="json" if mode == "json" else "text", stream=stderr_file, environ=environ
    )
    caplog.set_level(logging.DEBUG)

    headers = {"Authorization": f"Token {token}"}
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(level, f"in the message {token}")
        log.log(level, "in the args %s %r", token, headers)
        log.log(level, "in an extra field", extra={"auth": f"Token {token}"})
        log.log(level, "with a stack", stack_info=True)
        try:
            raise TokenRejected(f"server rejected {token}")
        except TokenRejected:
            log.log(level, "in the traceback", exc_info=True)
    log.info("wrong number of args %s %s", token)  # a broken call must not leak either

    lines = output(stderr_file)
    assert len(lines) > 25
    assert sum("***" in line for line in lines) >= 16  # message, args, traceback, broken call
    assert not [line for line in lines if token in line]
    # Other handlers on the root logger (here pytest's capture) get the clean record too.
    assert caplog.records
    assert token not in caplog.text
