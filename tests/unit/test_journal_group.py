"""Group commit in the journal: writes of several threads share transactions, and each
write is committed (visible to another connection) by the time it returns."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from syncd import journal as journal_module
from syncd.journal import Fingerprint, Journal, JournalError


def fp(i: int) -> Fingerprint:
    return Fingerprint(dev=1, ino=i, size=4096, mtime_ns=i)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def other_connection_sees(j: Journal, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(f"file:{j.path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_every_write_of_many_threads_is_committed_when_it_returns(journal):
    errors: list[str] = []
    start = threading.Barrier(6)

    def writer(t: int) -> None:
        start.wait(timeout=10)
        for i in range(40):
            name = f"t{t}/f{i}"
            row = journal.mark_settled("w", name, fp(t * 1000 + i))
            assert journal.set_state(row.id, "uploading", only_from=("ready",))
            journal.mark_done(row.id, md5="m", remote_name=name)
            seen = other_connection_sees(journal, "SELECT state FROM files WHERE id = ?", (row.id,))
            if seen != [("done",)]:
                errors.append(f"{name}: another connection sees {seen} after mark_done returned")

    threads = [threading.Thread(target=writer, args=(t,), name=f"writer-{t}") for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert journal.counts()["done"] == 240
    assert not journal._db.in_transaction


def test_a_batch_shares_transactions_and_commits_at_its_end(journal):
    with journal.batch():
        for i in range(10):
            journal.note_new("w", f"f{i}", fp(i))
        assert journal._db.in_transaction  # nothing committed yet...
        assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(0,)]
        assert journal.find_file("w", "f3").state == "settling"  # ...but this connection sees it
    assert not journal._db.in_transaction
    assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(10,)]


def test_a_batch_commits_every_group_max_writes(journal, monkeypatch):
    monkeypatch.setattr(journal_module, "GROUP_MAX", 4)
    with journal.batch():
        for i in range(9):
            journal.note_new("w", f"f{i}", fp(i))
        assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(8,)]
    assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(9,)]


def test_a_durable_write_inside_a_batch_commits_it_first_and_itself_at_once(journal):
    row = journal.mark_settled("w", "a", fp(1))
    journal.set_state(row.id, "uploading")
    with journal.batch():
        journal.note_new("w", "b", fp(2))
        journal.mark_done(row.id, md5="m", remote_name="a", durable=True, after_action="pending")
        assert not journal._db.in_transaction
        assert other_connection_sees(journal, "SELECT relpath, state FROM files ORDER BY relpath") == [
            ("a", "done"), ("b", "settling")]
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again


def test_a_worker_write_is_not_held_back_by_a_batch(journal):
    """A write of another thread during a batch commits the batch's writes with its own
    (or waits at most for the batch owner's next write), never for the whole batch."""
    done = threading.Event()
    in_batch = threading.Event()

    def worker() -> None:
        in_batch.wait(10)
        journal.note_new("w", "worker", fp(99))
        done.set()

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    try:
        with journal.batch():
            journal.note_new("w", "loop", fp(1))
            in_batch.set()
            assert done.wait(10), "the worker's write waited for the batch to end"
            assert sorted(other_connection_sees(journal, "SELECT relpath FROM files")) == [("loop",), ("worker",)]
    finally:
        thread.join(10)


def test_a_failed_write_rolls_back_only_itself(journal):
    with journal.batch():
        journal.note_new("w", "kept", fp(1))
        with pytest.raises(ValueError):
            journal.set_state(1, "no-such-state")
        with pytest.raises(JournalError, match="UNIQUE"):
            with journal._write() as db:
                db.execute("INSERT INTO files (watch, relpath, dev, ino, size, mtime_ns, state, first_seen_at,"
                           " updated_at) VALUES ('w', 'x', 1, 1, 1, 1, 'ready', 0, 0)")
                db.execute("INSERT INTO files (watch, relpath, dev, ino, size, mtime_ns, state, first_seen_at,"
                           " updated_at) VALUES ('w', 'x', 1, 1, 1, 1, 'ready', 0, 0)")
    assert other_connection_sees(journal, "SELECT relpath FROM files") == [("kept",)]


def test_a_failed_one_statement_write_rolls_back_only_itself(journal):
    """Writes of one statement go without a savepoint: the statement that fails undoes
    its own changes and nothing else of the open transaction."""
    with journal.batch():
        row = journal.note_new("w", "kept", fp(1))
        journal.set_state(row.id, "ready")
        with pytest.raises(JournalError, match="FOREIGN KEY"):
            journal.start_upload(999, target="t", source="s", remote_name="r", fp=fp(2), size=1, part_size=0)
        journal.set_state(row.id, "uploading")
    assert other_connection_sees(journal, "SELECT relpath, state FROM files") == [("kept", "uploading")]
    assert other_connection_sees(journal, "SELECT count(*) FROM uploads") == [(0,)]


def test_a_commit_that_fails_fails_every_write_it_carried(journal, monkeypatch):
    """A full disk at COMMIT: the writer that commits and the ones that waited for it all get
    the JournalError (none of them may go on as if its write were kept)."""
    real_commit = Journal._commit
    calls = []

    def failing_commit(self):
        if not calls:
            calls.append(1)
            self._db.execute("ROLLBACK")  # what SQLite leaves after a failed COMMIT
            self._failed = (self._epoch, sqlite3.OperationalError("database or disk is full"))
            with self._gate:
                self._epoch += 1
                self._committed.notify_all()
            raise self._failed[1]
        return real_commit(self)

    monkeypatch.setattr(Journal, "_commit", failing_commit)
    with pytest.raises(JournalError, match="disk is full"):
        journal.note_new("w", "a", fp(1))
    assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(0,)]
    journal.note_new("w", "b", fp(2))  # the next commit works again
    assert other_connection_sees(journal, "SELECT relpath FROM files") == [("b",)]


def test_what_became_of_a_local_file_is_committed_at_once_even_in_a_batch(journal):
    row = journal.mark_settled("w", "a", fp(1))
    journal.set_state(row.id, "uploading")
    journal.mark_done(row.id, md5="m", remote_name="a", durable=True, after_action="pending")
    with journal.batch():
        journal.note_new("w", "b", fp(2))
        journal.set_after_action(row.id, "deleted")
        assert other_connection_sees(journal, "SELECT after_action FROM files WHERE id = ?", (row.id,)) == [
            ("deleted",)]


def test_a_deferred_write_is_committed_with_the_threads_next_write(journal):
    row = journal.mark_settled("w", "a", fp(1))
    assert journal.set_state(row.id, "uploading", only_from=("ready",), deferred=True)
    assert journal._db.in_transaction
    assert other_connection_sees(journal, "SELECT state FROM files") == [("ready",)]
    assert journal.get_file(row.id).state == "uploading"  # this connection sees it at once
    up = journal.start_upload(row.id, target="t", source="s", remote_name="a", fp=fp(1), size=4096,
                              part_size=0, upload_key="k")
    assert not journal._db.in_transaction
    assert other_connection_sees(journal, "SELECT state FROM files") == [("uploading",)]
    journal.finish_upload(up.id, state="completed", md5="m", deferred=True)
    assert other_connection_sees(journal, "SELECT state FROM uploads") == [("open",)]
    journal.mark_done(row.id, md5="m", remote_name="a", durable=True, after_action="pending")
    assert other_connection_sees(journal, "SELECT state FROM uploads") == [("completed",)]
    assert other_connection_sees(journal, "SELECT state FROM files") == [("done",)]


def test_a_deferred_write_commits_at_group_max(journal, monkeypatch):
    monkeypatch.setattr(journal_module, "GROUP_MAX", 3)
    rows = [journal.mark_settled("w", f"f{i}", fp(i)) for i in range(3)]
    for row in rows:
        journal.set_state(row.id, "uploading", deferred=True)
    assert not journal._db.in_transaction
    assert other_connection_sees(journal, "SELECT DISTINCT state FROM files") == [("uploading",)]


def fail_the_next_commit(monkeypatch) -> None:
    """The next COMMIT fails as on a full disk (what SQLite leaves: the transaction rolled back)."""
    real_commit = Journal._commit

    def failing_commit(self):
        monkeypatch.setattr(Journal, "_commit", real_commit)  # only this once
        self._db.execute("ROLLBACK")
        self._failed = (self._epoch, sqlite3.OperationalError("database or disk is full"))
        with self._gate:
            self._epoch += 1
            self._committed.notify_all()
        raise self._failed[1]

    monkeypatch.setattr(Journal, "_commit", failing_commit)


def test_a_deferred_write_lost_with_a_failed_commit_fails_its_threads_next_write(journal, monkeypatch):
    """Another thread's write commits the transaction that carries a deferred write, and the
    commit fails: the deferring thread must not go on as if its write were kept."""
    row = journal.mark_settled("w", "a", fp(1))
    journal.set_state(row.id, "uploading", deferred=True)
    fail_the_next_commit(monkeypatch)
    failed: list[BaseException] = []

    def other() -> None:
        try:
            journal.note_new("w", "b", fp(2))
        except JournalError as exc:
            failed.append(exc)

    thread = threading.Thread(target=other, name="other-writer")
    thread.start()
    thread.join(10)
    assert len(failed) == 1
    with pytest.raises(JournalError, match="disk is full"):
        journal.start_upload(row.id, target="t", source="s", remote_name="a", fp=fp(1), size=4096,
                             part_size=0, upload_key="k")
    assert other_connection_sees(journal, "SELECT state FROM files") == [("ready",)]
    journal.note_new("w", "c", fp(3))  # and only that one write fails
    assert other_connection_sees(journal, "SELECT count(*) FROM files") == [(2,)]


def test_a_failed_commit_is_reported_once_to_the_thread_that_deferred_a_write(journal, monkeypatch):
    """The deferred write's own thread commits it with its next write; when that commit
    fails, that write raises, and the thread's write after it is not failed again."""
    row = journal.mark_settled("w", "a", fp(1))
    journal.set_state(row.id, "uploading", deferred=True)
    fail_the_next_commit(monkeypatch)
    with pytest.raises(JournalError, match="disk is full"):
        journal.start_upload(row.id, target="t", source="s", remote_name="a", fp=fp(1), size=4096,
                             part_size=0, upload_key="k")
    journal.set_state(row.id, "waiting", error="journal was full")
    assert other_connection_sees(journal, "SELECT state FROM files") == [("waiting",)]
