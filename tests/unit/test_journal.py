import re
import sqlite3

import pytest

from syncd.journal import CACHE_KIB, DUE_ORDERS, SCHEMA_VERSION, Done, Fingerprint, Journal, JournalError, NewUpload

FP = Fingerprint(dev=1, ino=2, size=100, mtime_ns=10)
FP2 = Fingerprint(dev=1, ino=2, size=120, mtime_ns=20)


@pytest.fixture
def journal(tmp_path):
    clock = [1000.0]
    j = Journal(tmp_path / "journal.db", clock=lambda: clock[0])
    j.test_clock = clock
    yield j
    j.close()


def test_schema_version_and_wal(journal):
    db = sqlite3.connect(journal.path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_page_cache_is_bounded_below_sqlites_default(journal):
    """A smaller cache fills within a daemon's first minutes; RSS stays flat after that."""
    assert journal._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB


def test_id_lists_of_any_length_make_few_statement_shapes(journal):
    """Each statement text is prepared and cached on its own (in SQLite's memory, outside
    Python's): lists of 1..200 ids must not make 200 of them."""
    ids = [journal.mark_settled("w", f"f{i}.bin", Fingerprint(1, i, 10, 1)).id for i in range(200)]
    statements: set[str] = set()
    journal._db.set_trace_callback(statements.add)
    try:
        for n in range(1, len(ids) + 1):
            assert sorted(journal.get_files(ids[:n])) == ids[:n]
            assert journal.set_states(ids[:n], "ready", only_from=("ready",)) == set(ids[:n])
            assert journal.completed_uploads(ids[:n], target="t") == {}
    finally:
        journal._db.set_trace_callback(None)
    # the callback sees the SQL with its values in: a shape is the query and its lists' lengths
    shapes = {(sql.split(" WHERE")[0], tuple(len(items.split(",")) for items in re.findall(r"IN \(([^)]*)\)", sql)))
              for sql in statements if " IN (" in sql}
    assert len(shapes) <= 4 * 9  # four queries, lists padded to 1, 2, 4 ... 256 ids


def test_new_file_settles_to_ready(journal):
    row = journal.note_new("w", "a.bin", FP)
    assert row.state == "settling"
    row = journal.mark_settled("w", "a.bin", FP)
    assert row.state == "ready"
    assert [r.relpath for r in journal.due(watches=["w"])] == ["a.bin"]


def test_done_with_same_fingerprint_is_never_requeued(journal):
    row = journal.mark_settled("w", "a.bin", FP)
    journal.mark_done(row.id, md5="m", remote_name="a.bin")
    assert journal.mark_settled("w", "a.bin", FP) is None
    assert journal.due(watches=["w"]) == []
    changed = journal.mark_settled("w", "a.bin", FP2)
    assert changed.state == "ready" and changed.fingerprint == FP2 and changed.md5 is None


def test_active_rows_are_left_to_their_worker(journal):
    row = journal.mark_settled("w", "a.bin", FP)
    assert journal.set_state(row.id, "uploading", only_from=("ready",))
    assert journal.mark_settled("w", "a.bin", FP2) is None
    assert not journal.set_state(row.id, "uploading", only_from=("ready",))


def test_waiting_is_due_only_when_its_time_comes(journal):
    row = journal.mark_settled("w", "a.bin", FP)
    journal.set_state(row.id, "waiting", error="HTTP 503", next_attempt_at=1060.0, attempts_delta=1)
    assert journal.due(watches=["w"], now=1059.0) == []
    assert [r.id for r in journal.due(watches=["w"], now=1060.0)] == [row.id]
    assert journal.get_file(row.id).attempts == 1
    assert journal.next_waiting_at() == 1060.0


def test_crash_recovery_resumes_open_upload(journal):
    row = journal.mark_settled("w", "a.bin", FP)
    journal.set_state(row.id, "uploading")
    up = journal.start_upload(row.id, target="t", source="/x/a.bin", remote_name="a.bin", fp=FP, size=100,
                              part_size=40)
    journal.record_part(up.id, number=1, offset=0, size=40, session="http://127.0.0.1/s/1/")
    assert journal.recover_interrupted(watches=["w"]) == 1
    assert journal.get_file(row.id).state == "ready"
    resumed = journal.open_upload(row.id, target="t")
    assert (resumed.session, resumed.offset) == ("http://127.0.0.1/s/1/", 40)
    journal.forget_parts(up.id, [1])  # the server's view wins: it lacks part 1
    assert journal.parts(up.id) == {} and journal.get_upload(up.id).offset == 0


def test_rename_follows_the_file(journal):
    row = journal.note_new("w", "a.bin", FP)
    moved = journal.rename("w", "a.bin", "b.bin")
    assert moved.id == row.id and moved.relpath == "b.bin"
    assert journal.find_file("w", "a.bin") is None
    assert journal.rename("w", "missing", "c.bin") is None


def test_gone_only_from_pending_states(journal):
    row = journal.mark_settled("w", "a.bin", FP)
    journal.mark_done(row.id, md5="m", remote_name="a.bin")
    assert not journal.mark_gone("w", "a.bin")
    assert journal.get_file(row.id).state == "done"
    other = journal.note_new("w", "b.bin", FP)
    assert journal.mark_gone("w", "b.bin")
    assert journal.get_file(other.id).state == "gone"
    again = journal.note_new("w", "b.bin", FP2)
    assert again.state == "settling" and again.fingerprint == FP2


def test_retry_failed(journal):
    a = journal.mark_settled("w", "a.bin", FP)
    b = journal.mark_settled("w", "b.bin", FP)
    for row in (a, b):
        journal.set_state(row.id, "failed", error="HTTP 413: too large")
    assert journal.retry(file_ids=[a.id]) == 1
    assert journal.get_file(a.id).state == "ready"
    assert journal.retry(all_failed=True) == 1
    assert journal.counts()["failed"] == 0


def test_readonly_reader_sees_writer(journal):
    journal.mark_settled("w", "a.bin", FP)
    reader = Journal(journal.path, readonly=True)
    try:
        assert reader.counts()["ready"] == 1
        with pytest.raises(sqlite3.OperationalError):
            reader._db.execute("DELETE FROM files")
    finally:
        reader.close()


def test_corrupt_journal_is_a_clear_error(tmp_path):
    path = tmp_path / "journal.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(JournalError, match="journal.db: cannot open journal"):
        Journal(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer than this syncd"):
        Journal(path)


def test_missing_journal_for_status(tmp_path):
    with pytest.raises(JournalError, match="no journal here"):
        Journal(tmp_path / "nope.db", readonly=True)


def test_status_shows_progress_rate_and_eta(journal):
    from syncd.status import collect, render

    row = journal.mark_settled("w", "big.bin", Fingerprint(1, 2, 1000, 5))
    journal.set_state(row.id, "uploading")
    up = journal.start_upload(row.id, target="t", source="/x", remote_name="big.bin",
                              fp=Fingerprint(1, 2, 1000, 5), size=1000, part_size=100)
    for n in range(4):
        journal.test_clock[0] = 1000.0 + 2 * n
        journal.record_part(up.id, number=n + 1, offset=100 * n, size=100, session="s")
    data = collect(journal, limit=10, now=1006.0)
    active = data["uploading"][0]
    assert active["percent"] == 40.0
    assert active["bytes_per_second"] == 50  # 300 bytes acknowledged over 6 s
    assert active["eta_seconds"] == 12
    assert "w:big.bin   40.0% of 1000 B" in render(data, now=1006.0)


def test_daemon_work_excludes_oneshot_rows(journal):
    journal.mark_settled("@upload", "/abs/a.bin", FP)
    mine = journal.mark_settled("w", "b.bin", FP)
    journal.set_state(mine.id, "uploading")
    oneshot = journal.find_file("@upload", "/abs/a.bin")
    journal.set_state(oneshot.id, "uploading")
    assert journal.recover_interrupted(watches=["w"]) == 1
    assert journal.get_file(oneshot.id).state == "uploading"
    assert [r.watch for r in journal.due(watches=["w"])] == ["w"]


def test_status_shows_an_upload_being_retried_within_its_budget(journal):
    """Issue 13, item 6: a request retried inside its budget is visible, with its try count."""
    from syncd.status import collect, render

    row = journal.mark_settled("w", "slow.bin", Fingerprint(1, 2, 1000, 5))
    journal.set_state(row.id, "uploading")
    journal.start_upload(row.id, target="t", source="/x", remote_name="slow.bin",
                         fp=Fingerprint(1, 2, 1000, 5), size=1000, part_size=100)
    journal.note_retry(row.id, "part 3: try 4 after HTTP 503: busy")
    data = collect(journal, limit=10)
    assert data["uploading"][0]["retrying"] == "part 3: try 4 after HTTP 503: busy"
    assert "    retrying: part 3: try 4 after HTTP 503: busy" in render(data)
    journal.set_state(row.id, "waiting", error="HTTP 503: busy")  # the budget ran out
    journal.note_retry(row.id, "not for a waiting file")
    assert journal.get_file(row.id).last_error == "HTTP 503: busy"


def test_a_schema_2_journal_is_migrated_and_keeps_its_queue(tmp_path):
    """Schema 4 replaced the due index by per-watch ones; rows queued before stay due."""
    from syncd.journal import _MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(f"{_MIGRATIONS[0]}; {_MIGRATIONS[1]}; PRAGMA user_version = 2;")
    db.execute("INSERT INTO files (watch, relpath, dev, ino, size, mtime_ns, state, first_seen_at, updated_at)"
               " VALUES ('w', 'a.bin', 1, 2, 100, 10, 'ready', 1000, 1000)")
    db.commit()
    db.close()
    journal = Journal(path)
    try:
        assert [r.relpath for r in journal.due(watches=["w"], order="smallest")] == ["a.bin"]
    finally:
        journal.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert "verified" in {r[1] for r in db.execute("PRAGMA table_info(uploads)")}
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"files_ready_oldest", "files_waiting_oldest", "files_ready_smallest",
                "files_waiting_smallest"} <= indexes
        assert not indexes & {"files_due", "files_due_oldest", "files_due_smallest"}
    finally:
        db.close()


@pytest.mark.parametrize("order", DUE_ORDERS)
def test_due_reads_the_indexes_of_ready_and_waiting_rows_alone(journal, order):
    """Both due queries of each order are index range scans of partial indexes, which hold
    no row of any other state: a journal of a million done files keeps them small."""
    from syncd.journal import _DUE_SQL

    ready_sql, waiting_sql = _DUE_SQL[order]
    plans = [" ".join(str(r[-1]) for r in journal._db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
             for sql, args in ((ready_sql, ("w", 10)), (waiting_sql, ("w", 0.0, 10)))]
    assert "USING INDEX files_ready_" in plans[0] and "USING INDEX files_waiting_" in plans[1], plans
    ids = [journal.note_new("w", f"f{i}", Fingerprint(dev=1, ino=i, size=1, mtime_ns=1)).id for i in range(4)]
    for file_id in ids:
        journal.set_state(file_id, "ready")
    for file_id in ids[1:]:
        journal.set_state(file_id, "uploading")
    journal.set_state(ids[1], "waiting", next_attempt_at=0.0)
    journal.mark_done(ids[2], md5="m", remote_name="f2")  # ids[3] stays uploading
    partial = {r["name"]: r["partial"] for r in journal._db.execute("PRAGMA index_list(files)")}
    for name in ("files_ready_oldest", "files_ready_smallest", "files_waiting_oldest", "files_waiting_smallest"):
        (sql,), = journal._db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchall()
        state = name.split("_")[1]
        assert partial[name] == 1 and sql.endswith(f"WHERE state = '{state}'"), sql
    assert sorted(r.relpath for r in journal.due(watches=["w"], now=1.0, order=order)) == ["f0", "f1"]


def test_files_under_a_folder_are_exactly_the_rows_below_it(journal):
    names = ["a/x", "a/b/y", "a0", "a.txt", "a", "ab/z", "b/a/x", "a/"]
    for i, name in enumerate(names):
        journal.note_new("w", name, Fingerprint(dev=1, ino=i, size=1, mtime_ns=1))
    below = sorted(r.relpath for r in journal.files(watch="w", under="a"))
    assert below == ["a/", "a/b/y", "a/x"]
    assert sorted(r.relpath for r in journal.files(watch="w", under="a/b/")) == ["a/b/y"]
    assert len(journal.files(watch="w", under="")) == len(names)


def test_the_rows_returned_by_writes_are_the_rows_written(journal):
    """mark_settled and start_upload return what they wrote without reading it back: it
    must be exactly what a read gives."""
    fresh = journal.mark_settled("w", "new.bin", FP)  # inserted
    assert fresh == journal.get_file(fresh.id)
    row = journal.note_new("w", "b.bin", FP)
    journal.test_clock[0] += 5
    settled = journal.mark_settled("w", "b.bin", FP2)  # updated
    assert settled == journal.get_file(row.id)
    journal.set_state(settled.id, "uploading")
    journal.mark_done(settled.id, md5="m", remote_name="b.bin", target="t", verified="md5")
    journal.test_clock[0] += 5
    again = journal.mark_settled("w", "b.bin", FP)  # a done file changed: updated, target kept
    assert again == journal.get_file(row.id)
    up = journal.start_upload(row.id, target="t", source="/s", remote_name="b.bin", fp=FP, size=FP.size,
                              part_size=0, upload_key="k")
    assert up == journal.get_upload(up.id)


def test_writes_of_many_files_at_once_are_the_writes_of_each(journal):
    """The bulk writes of a batch of small files (``set_states``, ``start_uploads``,
    ``finish_uploads``, ``mark_all_done``) and the bulk reads leave the rows exactly as the
    one-file writes would; more ids than one statement binds are split."""
    ids = [journal.mark_settled("w", f"f{i}.bin", Fingerprint(1, i, 10, 1)).id for i in range(1203)]
    journal.set_state(ids[5], "uploading")
    journal.set_state(ids[5], "waiting", next_attempt_at=5.0, error="boom", attempts_delta=1)
    journal.set_state(ids[6], "uploading")  # taken by something else: does not move
    moved = journal.set_states(ids, "uploading", only_from=("ready", "waiting"))
    assert moved == set(ids) - {ids[6]}
    rows = journal.get_files(ids)
    assert sorted(rows) == sorted(ids) and {r.state for r in rows.values()} == {"uploading"}
    assert rows[ids[5]].last_error is None and rows[ids[5]].next_attempt_at is None and rows[ids[5]].attempts == 1
    with pytest.raises(ValueError):
        journal.set_states(ids, "uploaded", only_from=("ready",))

    uploads = journal.start_uploads([NewUpload(i, "t", f"/w/{i}", f"r/{i}", rows[i].fingerprint, 10, 0, f"key-{i}")
                                     for i in ids[:3]])
    assert [u.upload_key for u in uploads] == [f"key-{i}" for i in ids[:3]]
    assert [journal.open_upload(i, target="t") for i in ids[:3]] == uploads  # as written is as read
    journal.finish_uploads([(uploads[0].id, "completed", "m0", "read-back"), (uploads[1].id, "abandoned", None, None)])
    completed = journal.completed_uploads(ids[:3], target="t")
    assert list(completed) == [ids[0]] and (completed[ids[0]][0].md5, completed[ids[0]][0].verified) == \
        ("m0", "read-back")
    assert journal.open_upload(ids[1], target="t") is None and journal.open_upload(ids[2], target="t") == uploads[2]
    with pytest.raises(ValueError):
        journal.finish_uploads([(uploads[2].id, "done", None, None)])

    journal.mark_all_done([Done(ids[0], "m0", "r/0", "pending", "t", "d", "md5"), Done(ids[1], "m1", "r/1")],
                          durable=True)
    after = journal.get_files(ids[:2])
    assert (after[ids[0]].state, after[ids[0]].md5, after[ids[0]].after_action, after[ids[0]].verified) == \
        ("done", "m0", "pending", "md5")
    assert (after[ids[1]].state, after[ids[1]].remote_name, after[ids[1]].after_action) == ("done", "r/1", None)
