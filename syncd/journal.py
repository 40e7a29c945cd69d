"""The SQLite journal: every file, every upload session and every acknowledged part.

WAL mode, so ``syncd status`` reads while the daemon writes. Each state change is one
transaction. The schema is versioned with ``PRAGMA user_version``; ``_MIGRATIONS[n]``
takes a journal from version n to n + 1.

File states and their allowed transitions are declared in ``syncd.states``; ``set_state``
enforces them.

Group commit: every write is its own savepoint, and a write returns only once its
transaction is committed; but a writer that finds other writers queued behind it leaves the
transaction open for them, and the last of the queue commits everyone's writes at once (a
queue is cut at ``GROUP_MAX`` writes). A ``batch()`` (the daemon's loop, taking in a burst of
events) commits its writes together at its end, or every ``GROUP_MAX`` writes. Under
``synchronous = NORMAL`` a commit survives a crash of syncd; a ``durable`` write (the ``done``
before a delete or move) commits at once with ``synchronous = FULL``, so it also survives a
power loss, together with whatever shared its transaction. A ``prompt`` write (what became of
a local file after its delete or move) commits at once, also inside a batch. A ``deferred``
write returns at once, its transaction left open: for a step that the same thread's next
write follows at once (a file's ``uploading`` before its upload's row; an upload's end before
the file's ``done``), which commits it too, or waits for the commit that does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

from syncd.states import ACTIVE, PENDING, STATES, FileState, allowed_from

GROUP_MAX = 256
"""writes that may share one transaction"""
COMMIT_WAIT = 1.0
"""seconds a writer waits for the writer queued behind it to commit before committing itself"""

AFTER_PENDING = "pending"
"""``files.after_action`` of a ``done`` file whose delete / move has not happened yet"""

_MIGRATIONS = [
    """
    CREATE TABLE files (
        id              INTEGER PRIMARY KEY,
        watch           TEXT    NOT NULL,
        relpath         TEXT    NOT NULL,
        dev             INTEGER NOT NULL,
        ino             INTEGER NOT NULL,
        size            INTEGER NOT NULL,
        mtime_ns        INTEGER NOT NULL,
        state           TEXT    NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at REAL,
        first_seen_at   REAL    NOT NULL,
        updated_at      REAL    NOT NULL,
        done_at         REAL,
        md5             TEXT,
        remote_name     TEXT,
        after_action    TEXT,
        UNIQUE (watch, relpath)
    );
    CREATE INDEX files_by_state ON files (state, next_attempt_at);
    CREATE TABLE uploads (
        id           INTEGER PRIMARY KEY,
        file_id      INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        target       TEXT    NOT NULL,
        source       TEXT    NOT NULL,
        remote_name  TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        dev          INTEGER NOT NULL,
        ino          INTEGER NOT NULL,
        mtime_ns     INTEGER NOT NULL,
        part_size    INTEGER NOT NULL,
        session      TEXT,
        offset       INTEGER NOT NULL DEFAULT 0,
        state        TEXT    NOT NULL DEFAULT 'open',
        started_at   REAL    NOT NULL,
        updated_at   REAL    NOT NULL,
        completed_at REAL,
        md5          TEXT
    );
    CREATE INDEX uploads_by_file ON uploads (file_id, state);
    CREATE TABLE parts (
        upload_id INTEGER NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
        number    INTEGER NOT NULL,
        offset    INTEGER NOT NULL,
        size      INTEGER NOT NULL,
        acked_at  REAL    NOT NULL,
        PRIMARY KEY (upload_id, number)
    );
    """,
    """
    CREATE INDEX files_due ON files (state, coalesce(next_attempt_at, updated_at), id);
    """,
    # uploads named by syncd before the first request; parts as the server described them;
    # what a done file went to and what was verified
    """
    ALTER TABLE uploads ADD COLUMN upload_key TEXT;
    ALTER TABLE parts ADD COLUMN etag TEXT;
    ALTER TABLE files ADD COLUMN target TEXT;
    ALTER TABLE files ADD COLUMN dest TEXT;
    ALTER TABLE files ADD COLUMN verified TEXT;
    """,
    # due() asks per watch (priorities), oldest or smallest first
    """
    DROP INDEX files_due;
    CREATE INDEX files_due_oldest ON files (watch, state, coalesce(next_attempt_at, updated_at), id);
    CREATE INDEX files_due_smallest ON files (watch, state, size, id);
    """,
    # operator controls: what `syncd pause` paused (scope 'all' with name '', 'target', 'watch')
    """
    CREATE TABLE controls (
        scope     TEXT NOT NULL,
        name      TEXT NOT NULL,
        paused_at REAL NOT NULL,
        PRIMARY KEY (scope, name)
    );
    """,
    # due() reads only ready and waiting rows: indexes of those rows alone, which a file
    # leaves when it starts and a done file never enters (each state change used to move
    # its entries in both due indexes: a quarter of the journal's writes in a drop)
    """
    DROP INDEX files_due_oldest;
    DROP INDEX files_due_smallest;
    CREATE INDEX files_ready_oldest ON files (watch, coalesce(next_attempt_at, updated_at), id) WHERE state = 'ready';
    CREATE INDEX files_waiting_oldest ON files (watch, coalesce(next_attempt_at, updated_at), id)
        WHERE state = 'waiting';
    CREATE INDEX files_ready_smallest ON files (watch, size, id) WHERE state = 'ready';
    CREATE INDEX files_waiting_smallest ON files (watch, size, id) WHERE state = 'waiting';
    """,
    # what verified a completed upload (a read-back is the target's choice, not the protocol's)
    """
    ALTER TABLE uploads ADD COLUMN verified TEXT;
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


DueOrder = Literal["oldest", "smallest"]
DUE_ORDERS: tuple[DueOrder, ...] = ("oldest", "smallest")
_WAITED = "coalesce(next_attempt_at, updated_at)"
_DUE_COLUMNS = f"id, watch, relpath, size, state, {_WAITED}"
_DUE_SQL = {
    "oldest": (
        f"SELECT {_DUE_COLUMNS} FROM files WHERE watch = ? AND state = 'ready' ORDER BY {_WAITED}, id LIMIT ?",
        f"SELECT {_DUE_COLUMNS} FROM files WHERE watch = ? AND state = 'waiting' AND {_WAITED} <= ?"
        f" ORDER BY {_WAITED}, id LIMIT ?",
    ),
    "smallest": (
        f"SELECT {_DUE_COLUMNS} FROM files WHERE watch = ? AND state = 'ready' ORDER BY size, id LIMIT ?",
        f"SELECT {_DUE_COLUMNS} FROM files WHERE watch = ? AND state = 'waiting' AND {_WAITED} <= ?"
        " ORDER BY size, id LIMIT ?",
    ),
}


class DueFile(NamedTuple):
    """A file to start, with what ordering and admitting it takes (the worker that takes it
    reads its whole row): a plain tuple, since the dispatcher looks at many per start."""

    id: int
    watch: str
    relpath: str
    size: int
    state: str
    waited: float
    """since when it is due: its next attempt time, or its last change"""


_DUE_KEY = {
    "oldest": lambda r: (r.waited, r.id),
    "smallest": lambda r: (r.size, r.id),
}


class JournalError(Exception):
    """The journal cannot be used: missing, corrupt, newer than this syncd, or full."""


CACHE_KIB = 512
"""SQLite's page cache, per connection (its default is 2 MiB). It fills as the journal
grows and then stays full: at 2 MiB a daemon's RSS crept for its first ~3,400 files, at
512 KiB it is full after a few hundred. Pages beyond it are read from the OS's cache."""

MOVE_ASIDE = "move it aside to start afresh (a new journal uploads every file in the watches again)"


@dataclass(frozen=True)
class Fingerprint:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class FileRow:
    id: int
    watch: str
    relpath: str
    fingerprint: Fingerprint
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    first_seen_at: float
    updated_at: float
    done_at: float | None
    md5: str | None
    remote_name: str | None
    after_action: str | None
    target: str | None = None
    """the target a ``done`` file went to"""
    dest: str | None = None
    """the remote name a ``done`` file was sent as (before any server-side rename)"""
    verified: str | None = None
    """what was verified of a ``done`` file's copy (``RemoteFile.verified``)"""


@dataclass(frozen=True)
class PartRow:
    number: int
    offset: int
    size: int
    etag: str | None
    acked_at: float


@dataclass(frozen=True)
class UploadRow:
    id: int
    file_id: int
    target: str
    source: str
    remote_name: str
    size: int
    fingerprint: Fingerprint
    part_size: int
    session: str | None
    offset: int
    state: str
    started_at: float
    updated_at: float
    md5: str | None = None
    upload_key: str | None = None
    verified: str | None = None  # of a completed upload; None for one journaled before syncd kept it


def _file_row(r: sqlite3.Row) -> FileRow:
    return FileRow(
        r["id"], r["watch"], r["relpath"], Fingerprint(r["dev"], r["ino"], r["size"], r["mtime_ns"]),
        FileState(r["state"]), r["attempts"], r["last_error"], r["next_attempt_at"], r["first_seen_at"],
        r["updated_at"], r["done_at"], r["md5"], r["remote_name"], r["after_action"], r["target"], r["dest"],
        r["verified"],
    )


class NewUpload(NamedTuple):
    """An upload about to begin (``start_uploads``)."""

    file_id: int
    target: str
    source: str
    remote_name: str
    fp: Fingerprint
    size: int
    part_size: int
    upload_key: str | None = None


class Done(NamedTuple):
    """A file the server confirmed (``mark_all_done``)."""

    file_id: int
    md5: str
    remote_name: str
    after_action: str | None = None
    target: str | None = None
    dest: str | None = None
    verified: str | None = None


_CHUNK = 512
"""ids bound in one statement (old SQLite builds allow 999 variables)"""


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    """``ids`` in chunks for ``IN (...)``, each padded to a power of two with its last id
    again (the same rows match).

    Every length of an ``IN`` list is a statement of its own in the connection's cache of
    prepared statements (128 of them, LRU), and a prepared statement lives in SQLite's own
    memory: 128 lengths of one query took 2.4 MiB. A daemon meets new lengths for hours,
    most when a backlog makes its batches bigger; padded, a query has ten shapes at most."""
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start:start + _CHUNK])
        shape = 1 << (len(chunk) - 1).bit_length()
        yield chunk + chunk[-1:] * (shape - len(chunk))


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _upload_row(r: sqlite3.Row) -> UploadRow:
    return UploadRow(
        r["id"], r["file_id"], r["target"], r["source"], r["remote_name"], r["size"],
        Fingerprint(r["dev"], r["ino"], r["size"], r["mtime_ns"]), r["part_size"], r["session"],
        r["offset"], r["state"], r["started_at"], r["updated_at"], r["md5"], r["upload_key"], r["verified"],
    )


class Journal:
    """One connection shared by the daemon's threads behind a lock; writes are group-committed
    (see the module's notes). ``clock`` gives wall-clock seconds (persisted times)."""

    def __init__(self, path: Path, *, readonly: bool = False, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._gate = threading.Lock()
        self._committed = threading.Condition(self._gate)
        self._queued = 0
        """writers waiting for ``_lock`` (guarded by ``_gate``)"""
        self._epoch = 0
        """how many transactions were ended (committed, or rolled back when a commit failed)"""
        self._failed: tuple[int, BaseException] | None = None
        """the last transaction whose commit failed: its epoch and why"""
        self._open_writes = 0
        """writes in the open transaction"""
        self._followers = 0
        """writers waiting for someone else to commit their write (guarded by ``_gate``)"""
        self._batch_owner: int | None = None
        self._durable = False
        """the write in progress must be committed at once, with synchronous = FULL"""
        self._prompt = False
        """the write in progress must be committed at once"""
        self._deferred = threading.local()
        """per thread: the epoch of its deferred write not yet known to be committed (``epoch``)"""
        if readonly and not self.path.exists():
            raise JournalError(f"{self.path}: no journal here (has the daemon run yet?)")
        self.created = not readonly and not self.path.exists()
        """True when this opened an empty, new journal"""
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                version = self._connect(f"file:{self.path}", readonly=False)
            else:
                try:
                    version = self._connect(f"file:{self.path}?mode=ro", readonly=True)
                except sqlite3.OperationalError:
                    if not self._closed_in_a_folder_we_cannot_write():
                        raise
                    # no daemon has it open and every commit is in the file: read it as it is
                    version = self._connect(f"file:{self.path}?mode=ro&immutable=1", readonly=True)
        except (sqlite3.OperationalError, OSError) as exc:
            hint = ""
            if readonly and not os.access(self.path.parent, os.W_OK):
                hint = " (this user cannot write its folder, where a journal a daemon left open needs one more file: " \
                       "run this as the daemon's user)"
            raise JournalError(f"{self.path}: cannot open journal: {exc}{hint}") from None
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            raise JournalError(f"{self.path}: cannot open journal: it is corrupt ({exc}); {MOVE_ASIDE}") from None
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path}: journal schema {version} is newer than this syncd "
                               f"understands ({SCHEMA_VERSION})")
        if not readonly:
            self._migrate(version)
        elif version < SCHEMA_VERSION:
            raise JournalError(f"{self.path}: journal schema {version} is older; start the daemon once")

    def _connect(self, uri: str, *, readonly: bool) -> int:
        """Opens ``self._db``; the journal's schema version."""
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            return self._db.execute("PRAGMA user_version").fetchone()[0]
        except BaseException:
            self._db.close()
            raise

    def _closed_in_a_folder_we_cannot_write(self) -> bool:
        """A reader of a WAL journal needs its ``-shm`` file, made by the first connection;
        one who cannot write the folder (another user, a read-only mount) cannot make it.
        With no ``-wal`` file either, no connection has the journal open and the last one
        to close it put every commit into the file, which can then be read as is."""
        return (not os.access(self.path.parent, os.W_OK)
                and not self.path.with_name(self.path.name + "-wal").exists()
                and not self.path.with_name(self.path.name + "-shm").exists())

    def _migrate(self, version: int) -> None:
        """Every missing migration in one transaction (one fsync for a new journal): the
        journal is at its old schema or at the new one, never in between."""
        if version >= SCHEMA_VERSION:
            return
        steps = "; ".join(_MIGRATIONS[version:SCHEMA_VERSION])
        with self._lock:
            try:
                self._db.executescript(f"BEGIN IMMEDIATE; {steps}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            except sqlite3.DatabaseError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"{self.path}: cannot migrate journal from schema {version} to "
                                   f"{SCHEMA_VERSION}: {exc}") from None

    def check_integrity(self) -> str | None:
        """None when ``PRAGMA quick_check`` is ok, else its first complaint."""
        with self._lock:
            try:
                rows = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
            except sqlite3.DatabaseError as exc:  # too damaged to even check
                return str(exc)
        return None if rows == ["ok"] else "; ".join(rows[:3])

    def close(self) -> None:
        with self._lock:
            if self._db.in_transaction:
                self._commit()
            self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Writes of this thread inside the block share transactions (committed at the end of
        the block, or every GROUP_MAX writes): for a burst of writes that promise nothing to
        anyone outside syncd before the block ends."""
        me = threading.get_ident()
        if self._batch_owner == me:
            yield
            return
        with self._lock:
            self._batch_owner = me
        try:
            yield
        finally:
            with self._lock:
                self._batch_owner = None
                if self._db.in_transaction:
                    self._commit()

    def _commit(self) -> None:
        """End the open transaction (the caller holds ``_lock``); wakes the writers that
        waited for it, also when the commit fails."""
        epoch = self._epoch
        try:
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._failed = (epoch, exc)
            raise
        finally:
            self._open_writes = 0
            with self._gate:
                self._epoch = epoch + 1
                self._committed.notify_all()

    @contextmanager
    def _tx(self, *, deferred: bool = False, one_statement: bool = False) -> Iterator[sqlite3.Connection]:
        """One write, as a savepoint of the open transaction; returns once that transaction
        is committed, unless ``deferred`` (see the module's notes). A write of
        ``one_statement`` (that raises nothing once its statement ran) needs no savepoint:
        a statement that fails undoes its own changes."""
        with self._gate:
            self._queued += 1
        try:
            self._lock.acquire()
        finally:
            with self._gate:
                self._queued -= 1
        wait_for: int | None = None
        durable = self._durable
        try:
            self._check_deferred(deferred)
            if durable:
                # its own transaction: the safety level cannot change inside one
                if self._db.in_transaction:
                    self._commit()
                self._db.execute("PRAGMA synchronous = FULL")
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            if not one_statement:
                self._db.execute("SAVEPOINT write")
            try:
                yield self._db
            except BaseException:
                if not one_statement:
                    self._db.execute("ROLLBACK TO write")
                    self._db.execute("RELEASE write")
                # (an I/O error or a full disk may have rolled back the whole transaction)
                if self._db.in_transaction and (durable or self._prompt or not self._leave_open()):
                    self._commit()
                raise
            if not one_statement:
                self._db.execute("RELEASE write")
            self._open_writes += 1
            if deferred and not durable and not self._prompt and self._open_writes < GROUP_MAX:
                self._deferred.epoch = self._epoch  # committed with a later write
            elif durable or self._prompt or not self._leave_open():
                self._commit()
            elif self._batch_owner != threading.get_ident():
                wait_for = self._epoch
                with self._gate:
                    self._followers += 1
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._lock.release()
        if wait_for is not None:
            try:
                self._wait_for_commit(wait_for)
            finally:
                with self._gate:
                    self._followers -= 1

    def _check_deferred(self, deferred: bool) -> None:
        """Before a thread's next write: if the transaction that carried its deferred write
        failed to commit, that write is lost, and so is this one's premise. A write that
        joins the deferred write's transaction and is not deferred itself reports the
        commit for both."""
        epoch = getattr(self._deferred, "epoch", None)
        if epoch is None:
            return
        if self._epoch > epoch:
            self._deferred.epoch = None
            if self._failed is not None and self._failed[0] == epoch:
                raise self._failed[1]
        elif not deferred:
            self._deferred.epoch = None

    def _leave_open(self) -> bool:
        """Whether the open transaction may stay open for more writes: inside a batch, or
        while another writer queues for the lock (it commits, or the one after it)."""
        if self._open_writes >= GROUP_MAX:
            return False
        with self._gate:
            if self._batch_owner == threading.get_ident():
                return self._followers == 0  # a worker waits for its write: do not make it wait longer
            return self._queued > 0

    def _wait_for_commit(self, epoch: int) -> None:
        with self._gate:
            ended = self._committed.wait_for(lambda: self._epoch > epoch, timeout=COMMIT_WAIT)
        if not ended:  # the queue behind us is stuck (a long batch): commit ourselves
            with self._lock:
                if self._epoch == epoch and self._db.in_transaction:
                    self._commit()
        if self._failed is not None and self._failed[0] == epoch:
            raise self._failed[1]

    @contextmanager
    def _write(self, *, durable: bool = False, prompt: bool = False, deferred: bool = False,
               one_statement: bool = False) -> Iterator[sqlite3.Connection]:
        """One write (see ``_tx``)."""
        try:
            if durable or prompt:
                with self._lock:
                    self._durable, self._prompt = durable, True
                    try:
                        with self._tx(one_statement=one_statement) as db:
                            yield db
                    finally:
                        self._durable = self._prompt = False
            else:
                with self._tx(deferred=deferred, one_statement=one_statement) as db:
                    yield db
        except sqlite3.OperationalError as exc:
            if "full" in str(exc) or "disk I/O" in str(exc):
                raise JournalError(f"{self.path}: cannot write journal: {exc} (syncd stops; once it can "
                                   "write again, its next start resumes every upload)") from exc
            raise
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: journal is corrupt ({exc}); {MOVE_ASIDE}") from exc

    def data_version(self) -> int:
        """Changes when another connection (``syncd retry``) wrote to the journal."""
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    # --- files ---------------------------------------------------------------------

    def get_file(self, file_id: int) -> FileRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file_row(r) if r else None

    def get_files(self, file_ids: Sequence[int]) -> dict[int, FileRow]:
        """``get_file`` of several files in one look (those in the journal, by id)."""
        rows: dict[int, FileRow] = {}
        with self._lock:
            for ids in _chunks(file_ids):
                for r in self._db.execute(f"SELECT * FROM files WHERE id IN ({_marks(ids)})", ids):
                    rows[r["id"]] = _file_row(r)
        return rows

    def find_file(self, watch: str, relpath: str) -> FileRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM files WHERE watch = ? AND relpath = ?",
                                 (watch, relpath)).fetchone()
        return _file_row(r) if r else None

    def files(self, *, states: Sequence[str] = (), watch: str | None = None, under: str = "") -> list[FileRow]:
        """Rows by state and watch; ``under`` (a folder of the watch) keeps only the rows below it."""
        sql, args = "SELECT * FROM files WHERE 1", []
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if watch is not None:
            sql += " AND watch = ?"
            args.append(watch)
        if under:
            # "dir/" <= relpath < "dir0" ('0' follows '/'): the rows below "dir/", by index
            prefix = under.rstrip("/") + "/"
            sql += " AND relpath >= ? AND relpath < ?"
            args += [prefix, prefix[:-1] + "0"]
        with self._lock:
            return [_file_row(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall()
        return {str(state): 0 for state in STATES} | {r[0]: r[1] for r in rows}

    def verified_counts(self) -> dict[str, int]:
        """Done files by what their copy was verified by (``unknown`` before that was recorded)."""
        with self._lock:
            rows = self._db.execute("SELECT coalesce(verified, 'unknown'), count(*) FROM files"
                                    " WHERE state = 'done' GROUP BY 1").fetchall()
        return {r[0]: r[1] for r in rows}

    def latest_done(self, limit: int) -> list[FileRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM files WHERE state = 'done' ORDER BY done_at DESC, id DESC"
                                    " LIMIT ?", (limit,)).fetchall()
        return [_file_row(r) for r in rows]

    def oldest_pending_since(self) -> float | None:
        with self._lock:
            r = self._db.execute(
                f"SELECT min(first_seen_at) FROM files WHERE state IN ({','.join('?' * len(PENDING))})",
                sorted(PENDING)).fetchone()
        return r[0]

    def note_new(self, watch: str, relpath: str, fp: Fingerprint) -> FileRow:
        """A file seen for the first time (or seen again after it was ``gone``): settling."""
        now = self.clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO files (watch, relpath, dev, ino, size, mtime_ns, state, first_seen_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'settling', ?, ?)"
                " ON CONFLICT (watch, relpath) DO UPDATE SET state = 'settling', attempts = 0,"
                " last_error = NULL, next_attempt_at = NULL, first_seen_at = excluded.first_seen_at,"
                " updated_at = excluded.updated_at, dev = excluded.dev, ino = excluded.ino,"
                " size = excluded.size, mtime_ns = excluded.mtime_ns"
                " WHERE files.state = 'gone'",
                (watch, relpath, fp.dev, fp.ino, fp.size, fp.mtime_ns, now, now),
            )
            r = db.execute("SELECT * FROM files WHERE watch = ? AND relpath = ?", (watch, relpath)).fetchone()
        return _file_row(r)

    def mark_settled(self, watch: str, relpath: str, fp: Fingerprint) -> FileRow | None:
        """The file stopped changing. Returns the row if it is now ``ready``; None when
        there is nothing to do (the same content is already ``done`` or ``failed``, or a
        worker owns the row)."""
        now = self.clock()
        with self._write() as db:
            r = db.execute("SELECT * FROM files WHERE watch = ? AND relpath = ?", (watch, relpath)).fetchone()
            if r is None:
                cur = db.execute(
                    "INSERT INTO files (watch, relpath, dev, ino, size, mtime_ns, state, first_seen_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, 'ready', ?, ?)",
                    (watch, relpath, fp.dev, fp.ino, fp.size, fp.mtime_ns, now, now))
                return FileRow(cur.lastrowid, watch, relpath, fp, FileState.READY, 0, None, None, now, now, None,
                               None, None, None)
            else:
                row = _file_row(r)
                if row.state in ACTIVE:
                    return None
                if row.state in ("done", "failed") and row.fingerprint == fp:
                    return None
                if row.state in ("ready", "waiting") and row.fingerprint == fp:
                    return row
                db.execute(
                    "UPDATE files SET state = 'ready', dev = ?, ino = ?, size = ?, mtime_ns = ?,"
                    " attempts = 0, last_error = NULL, next_attempt_at = NULL, md5 = NULL,"
                    " remote_name = NULL, after_action = NULL, done_at = NULL, updated_at = ?"
                    " WHERE id = ?",
                    (fp.dev, fp.ino, fp.size, fp.mtime_ns, now, row.id))
                # the row as written (no second read)
                return replace(row, fingerprint=fp, state=FileState.READY, attempts=0, last_error=None,
                               next_attempt_at=None, md5=None, remote_name=None, after_action=None, done_at=None,
                               updated_at=now)

    def set_state(self, file_id: int, state: str, *, only_from: Sequence[str] | None = None,
                  error: str | None = None, next_attempt_at: float | None = None,
                  attempts_delta: int = 0, deferred: bool = False) -> bool:
        """Move a file to ``state`` from any state the transition table allows (narrowed to
        ``only_from``); True if it moved. Naming a forbidden transition is a ValueError.
        ``deferred``: committed with this thread's next write (see the module's notes)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        sources = allowed_from(FileState(state), None if only_from is None else frozenset(only_from))
        sql = ("UPDATE files SET state = ?, last_error = ?, next_attempt_at = ?,"
               " attempts = attempts + ?, updated_at = ? WHERE id = ?"
               f" AND state IN ({','.join('?' * len(sources))})")
        args: list[object] = [str(state), error, next_attempt_at, attempts_delta, self.clock(), file_id,
                              *sorted(sources)]
        with self._write(deferred=deferred, one_statement=True) as db:
            return db.execute(sql, args).rowcount == 1

    def set_states(self, file_ids: Sequence[int], state: str, *, only_from: Sequence[str],
                   deferred: bool = False) -> set[int]:
        """``set_state`` of several files in one write (no error, no next attempt); the ids
        that moved."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        sources = sorted(allowed_from(FileState(state), frozenset(only_from)))
        moved: set[int] = set()
        with self._write(deferred=deferred) as db:
            for ids in _chunks(file_ids):
                moved.update(r[0] for r in db.execute(
                    f"SELECT id FROM files WHERE id IN ({_marks(ids)}) AND state IN ({_marks(sources)})",
                    [*ids, *sources]))
            for ids in _chunks(sorted(moved)):
                db.execute("UPDATE files SET state = ?, last_error = NULL, next_attempt_at = NULL, updated_at = ?"
                           f" WHERE id IN ({_marks(ids)})", [state, self.clock(), *ids])
        return moved

    def note_retry(self, file_id: int, message: str) -> None:
        """A request of an active upload failed and is being tried again: say so in
        ``last_error``, so that ``syncd status`` shows why an upload is slow."""
        with self._write(one_statement=True) as db:
            db.execute("UPDATE files SET last_error = ?, updated_at = ? WHERE id = ? AND state IN (?, ?)",
                       (" ".join(message.split())[:300], self.clock(), file_id, *sorted(ACTIVE)))

    def mark_done(self, file_id: int, *, md5: str, remote_name: str, durable: bool = False,
                  after_action: str | None = None, target: str | None = None, dest: str | None = None,
                  verified: str | None = None) -> None:
        """The server confirmed the whole file. ``durable`` forces the commit to disk before
        returning: required before a destructive after-action (delete / move), which is then
        recorded as ``AFTER_PENDING`` until done, so that one a crash cut off is redone."""
        self.mark_all_done([Done(file_id, md5, remote_name, after_action, target, dest, verified)], durable=durable)

    def mark_all_done(self, done: Sequence[Done], *, durable: bool = False) -> None:
        """``mark_done`` of several files in one write."""
        now = self.clock()
        with self._write(durable=durable, one_statement=len(done) == 1) as db:
            db.executemany(
                "UPDATE files SET state = 'done', md5 = ?, remote_name = ?, done_at = ?,"
                " last_error = NULL, next_attempt_at = NULL, after_action = ?, updated_at = ?,"
                " target = ?, dest = ?, verified = ? WHERE id = ?",
                [(d.md5, d.remote_name, now, d.after_action, now, d.target, d.dest, d.verified, d.file_id)
                 for d in done])

    def set_after_action(self, file_id: int, action: str) -> None:
        """What became of the local file (deleted, moved): written down at once."""
        with self._write(prompt=True, one_statement=True) as db:
            db.execute("UPDATE files SET after_action = ?, updated_at = ? WHERE id = ?",
                       (action, self.clock(), file_id))

    def rename(self, watch: str, old: str, new: str) -> FileRow | None:
        """A file moved within its watch: the row follows it (a row already at ``new`` is
        replaced, as the file there was). Returns the moved row, or None if none was kept."""
        with self._write() as db:
            r = db.execute("SELECT * FROM files WHERE watch = ? AND relpath = ?", (watch, old)).fetchone()
            if r is None:
                return None
            db.execute("DELETE FROM files WHERE watch = ? AND relpath = ?"
                       " AND state NOT IN ('uploading', 'transcoding')",
                       (watch, new))
            if db.execute("SELECT 1 FROM files WHERE watch = ? AND relpath = ?", (watch, new)).fetchone():
                return None
            db.execute("UPDATE files SET relpath = ?, updated_at = ? WHERE id = ?", (new, self.clock(), r["id"]))
            r = db.execute("SELECT * FROM files WHERE id = ?", (r["id"],)).fetchone()
        return _file_row(r)

    def mark_gone(self, watch: str, relpath: str, *, only_from: Sequence[str] | None = None) -> bool:
        row = self.find_file(watch, relpath)
        return row is not None and self.set_state(row.id, "gone", only_from=only_from)

    def retry(self, *, file_ids: Sequence[int] = (), all_failed: bool = False) -> int:
        """Make failed (or waiting) files ready again; returns how many."""
        with self._write() as db:
            if all_failed:
                cur = db.execute("UPDATE files SET state = 'ready', attempts = 0, next_attempt_at = NULL,"
                                 " updated_at = ? WHERE state = 'failed'", (self.clock(),))
                return cur.rowcount
            n = 0
            for file_id in file_ids:
                n += db.execute("UPDATE files SET state = 'ready', attempts = 0, next_attempt_at = NULL,"
                                " updated_at = ? WHERE id = ? AND state IN ('failed', 'waiting')",
                                (self.clock(), file_id)).rowcount
            return n

    def recover_interrupted(self, *, watches: Sequence[str]) -> int:
        """After a crash, files a worker owned go back to ``ready``; their open uploads resume."""
        marks = ",".join("?" * len(watches))
        with self._write() as db:
            return db.execute("UPDATE files SET state = 'ready', updated_at = ? WHERE state IN"
                              f" ('uploading', 'transcoding') AND watch IN ({marks})",
                              (self.clock(), *watches)).rowcount

    def due(self, *, watches: Sequence[str], now: float | None = None, limit: int = 100,
            order: DueOrder = "oldest") -> list[DueFile]:
        """Files of these watches to start: ``ready`` ones, and ``waiting`` ones whose time
        has come. ``oldest``: the longest waiting first (a ``waiting`` file counts from its
        next attempt time); ``smallest``: the smallest first. (Rows of ``syncd upload``
        belong to no watch.)"""
        now = self.clock() if now is None else now
        if order not in DUE_ORDERS:
            raise ValueError(f"unknown order {order!r}")
        ready_sql, waiting_sql = _DUE_SQL[order]
        rows: list[DueFile] = []
        # Index range scans per watch (files_ready_* / files_waiting_*) instead of sorting every pending row
        # per call: the daemon asks on every loop step.
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = None
            for watch in dict.fromkeys(watches):
                rows += map(DueFile._make, cursor.execute(ready_sql, (watch, limit)).fetchall())
                rows += map(DueFile._make, cursor.execute(waiting_sql, (watch, now, limit)).fetchall())
        rows.sort(key=_DUE_KEY[order])
        return rows[:limit]

    def next_waiting_at(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT min(next_attempt_at) FROM files WHERE state = 'waiting'").fetchone()[0]

    # --- uploads and parts -----------------------------------------------------------

    def open_upload(self, file_id: int, *, target: str) -> UploadRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM uploads WHERE file_id = ? AND target = ? AND state = 'open'"
                                 " ORDER BY id DESC LIMIT 1", (file_id, target)).fetchone()
        return _upload_row(r) if r else None

    def completed_upload(self, file_id: int, *, target: str, source: str, fp: Fingerprint,
                         remote_name: str) -> UploadRow | None:
        """A completed upload of exactly this source (same content, same name), if any."""
        with self._lock:
            r = self._db.execute(
                "SELECT * FROM uploads WHERE file_id = ? AND target = ? AND source = ? AND remote_name = ?"
                " AND size = ? AND dev = ? AND ino = ? AND mtime_ns = ? AND state = 'completed'"
                " ORDER BY id DESC LIMIT 1",
                (file_id, target, source, remote_name, fp.size, fp.dev, fp.ino, fp.mtime_ns)).fetchone()
        return _upload_row(r) if r else None

    def completed_uploads(self, file_ids: Sequence[int], *, target: str) -> dict[int, list[UploadRow]]:
        """The completed uploads of these files to ``target``, newest first, by file id (for
        ``completed_upload`` of several files in one look)."""
        found: dict[int, list[UploadRow]] = {}
        with self._lock:
            for ids in _chunks(file_ids):
                for r in self._db.execute(f"SELECT * FROM uploads WHERE file_id IN ({_marks(ids)}) AND target = ?"
                                          " AND state = 'completed' ORDER BY id DESC", [*ids, target]):
                    found.setdefault(r["file_id"], []).append(_upload_row(r))
        return found

    def start_upload(self, file_id: int, *, target: str, source: str, remote_name: str,
                     fp: Fingerprint, size: int, part_size: int, upload_key: str | None = None) -> UploadRow:
        """An upload about to begin, journaled (with its key) before any request is sent."""
        return self.start_uploads([NewUpload(file_id, target, source, remote_name, fp, size, part_size, upload_key)])[0]

    def start_uploads(self, uploads: Sequence[NewUpload]) -> list[UploadRow]:
        """``start_upload`` of several uploads in one write; their rows, in order."""
        now = self.clock()
        rows = []
        with self._write(one_statement=len(uploads) == 1) as db:
            for u in uploads:
                fp = u.fp
                cur = db.execute(
                    "INSERT INTO uploads (file_id, target, source, remote_name, size, dev, ino, mtime_ns,"
                    " part_size, started_at, updated_at, upload_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (u.file_id, u.target, u.source, u.remote_name, u.size, fp.dev, fp.ino, fp.mtime_ns, u.part_size,
                     now, now, u.upload_key))
                # the row as written (no second read)
                rows.append(UploadRow(cur.lastrowid, u.file_id, u.target, u.source, u.remote_name, u.size,
                                      Fingerprint(fp.dev, fp.ino, u.size, fp.mtime_ns), u.part_size, None, 0, "open",
                                      now, now, None, u.upload_key))
        return rows

    def set_session(self, upload_id: int, session: str) -> None:
        """The server made the session: keep its handle, so a crash cannot orphan it."""
        with self._write(one_statement=True) as db:
            db.execute("UPDATE uploads SET session = ?, updated_at = ? WHERE id = ?",
                       (session, self.clock(), upload_id))

    def record_part(self, upload_id: int, *, number: int, offset: int, size: int, etag: str | None = None,
                    session: str | None = None) -> None:
        """The server acknowledged a part: the part, the bytes held and the session's handle,
        in one transaction."""
        now = self.clock()
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO parts (upload_id, number, offset, size, acked_at, etag)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (upload_id, number, offset, size, now, etag))
            db.execute("UPDATE uploads SET offset = (SELECT coalesce(sum(size), 0) FROM parts WHERE upload_id = ?),"
                       " session = coalesce(?, session), updated_at = ? WHERE id = ?",
                       (upload_id, session, now, upload_id))

    def forget_parts(self, upload_id: int, numbers: Sequence[int]) -> None:
        """The server's view wins: these parts are not (or no longer) on the server."""
        if not numbers:
            return
        with self._write() as db:
            db.executemany("DELETE FROM parts WHERE upload_id = ? AND number = ?",
                           [(upload_id, n) for n in numbers])
            db.execute("UPDATE uploads SET offset = (SELECT coalesce(sum(size), 0) FROM parts WHERE upload_id = ?),"
                       " updated_at = ? WHERE id = ?", (upload_id, self.clock(), upload_id))

    def parts(self, upload_id: int) -> dict[int, PartRow]:
        with self._lock:
            return {r["number"]: PartRow(r["number"], r["offset"], r["size"], r["etag"], r["acked_at"])
                    for r in self._db.execute("SELECT * FROM parts WHERE upload_id = ? ORDER BY number",
                                              (upload_id,))}

    def recent_rate(self, upload_id: int, *, now: float, window: float = 60.0) -> float | None:
        """Bytes per second over the parts acknowledged in the last ``window`` seconds."""
        with self._lock:
            rows = self._db.execute("SELECT acked_at, size FROM parts WHERE upload_id = ? AND acked_at >= ?"
                                    " ORDER BY acked_at", (upload_id, now - window)).fetchall()
        if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
            return None
        # the first part's bytes were sent before its own acknowledgement: not in the span
        return sum(size for _, size in rows[1:]) / (rows[-1][0] - rows[0][0])

    def finish_upload(self, upload_id: int, *, state: str, md5: str | None = None, verified: str | None = None,
                      deferred: bool = False) -> None:
        """``verified``: what verified a completed upload. ``deferred``: committed with this
        thread's next write (see the module's notes)."""
        self.finish_uploads([(upload_id, state, md5, verified)], deferred=deferred)

    def finish_uploads(self, ended: Sequence[tuple[int, str, str | None, str | None]], *,
                       deferred: bool = False) -> None:
        """``finish_upload`` of several uploads, each ``(upload id, state, md5, verified)``, in
        one write."""
        if any(state not in ("completed", "abandoned") for _, state, _, _ in ended):
            raise ValueError([state for _, state, _, _ in ended])
        now = self.clock()
        with self._write(deferred=deferred, one_statement=len(ended) == 1) as db:
            db.executemany("UPDATE uploads SET state = ?, md5 = ?, verified = ?, completed_at = ?, updated_at = ?"
                           " WHERE id = ?",
                           [(state, md5, verified, now, now, upload_id) for upload_id, state, md5, verified in ended])

    def active_uploads(self) -> list[tuple[FileRow, UploadRow]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT f.id AS fid, u.id AS uid FROM files f JOIN uploads u ON u.file_id = f.id"
                " WHERE f.state = 'uploading' AND u.state = 'open' ORDER BY u.started_at").fetchall()
        out = []
        for r in rows:
            f, u = self.get_file(r["fid"]), self.get_upload(r["uid"])
            if f and u:
                out.append((f, u))
        return out

    def get_upload(self, upload_id: int) -> UploadRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return _upload_row(r) if r else None

    # --- operator controls (syncd pause / resume) ----------------------------------------

    def pause(self, scope: str, name: str = "") -> bool:
        """Pause everything (``scope`` ``all``), a target or a watch; False if it already was."""
        with self._write() as db:
            return db.execute("INSERT OR IGNORE INTO controls (scope, name, paused_at) VALUES (?, ?, ?)",
                              (scope, name, self.clock())).rowcount == 1

    def resume(self, scope: str | None = None, name: str = "") -> int:
        """Lift one pause, or (``scope`` None) every pause; returns how many were lifted."""
        with self._write() as db:
            if scope is None:
                return db.execute("DELETE FROM controls").rowcount
            return db.execute("DELETE FROM controls WHERE scope = ? AND name = ?", (scope, name)).rowcount

    def pauses(self) -> list[tuple[str, str, float]]:
        """(scope, name, paused_at) of every pause in force."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT scope, name, paused_at FROM controls ORDER BY scope, name")]
