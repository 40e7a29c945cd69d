"""Drive the real upload engine against a real server, without the daemon around it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from syncd.config import RetryPolicy
from syncd.journal import Fingerprint, Journal
from syncd.upload.base import Backend, Interrupted
from syncd.upload.chunked import ChunkedBackend
from syncd.upload.engine import UploadEngine, UploadJob

FAST_RETRY = RetryPolicy(initial=0.05, max=0.2, budget=3.0, waiting_initial=0.5, waiting_max=2.0)


class EngineRig:
    """A journal, a backend (chunked unless given) and an engine, ready to upload local files."""

    def __init__(self, tmp: Path, *, url: str = "", token: str | None = None, part_size: int = 0,
                 policy: RetryPolicy = FAST_RETRY, backend: Backend | None = None):
        self.journal = Journal(tmp / "journal.db")
        self.backend = backend or ChunkedBackend("t", url=url, token=token, part_size=part_size,
                                                 connect_timeout=2, read_timeout=10)
        self.stop = threading.Event()
        self.retries: list[str] = []
        self.engine = UploadEngine(self.journal, {"t": self.backend}, {"t": policy}, stop=self.stop,
                                   on_retry=lambda target, reason: self.retries.append(reason))

    def job(self, path: Path, remote_name: str) -> UploadJob:
        fp = Fingerprint.of(os.stat(path))
        row = self.journal.mark_settled("w", remote_name, fp) or self.journal.find_file("w", remote_name)
        return UploadJob(file_id=row.id, target="t", source=path, fingerprint=fp,
                         remote_name=remote_name, label=f"w:{remote_name}")

    def upload(self, path: Path, remote_name: str | None = None):
        return self.engine.upload(self.job(path, remote_name or path.name))

    def interrupt_after(self, job: UploadJob, nbytes: int) -> None:
        """Upload ``job`` and stop the engine once ``nbytes`` were read: the upload is left
        interrupted (its session open), as a shutdown leaves it."""
        read = 0

        def on_read(n: int) -> None:
            nonlocal read
            read += n
            if read >= nbytes:
                self.stop.set()

        try:
            self.engine.upload(job, on_read=on_read)
        except Interrupted:
            return
        finally:
            self.stop.clear()
        raise AssertionError(f"the upload finished before {nbytes} bytes were read")

    def close(self) -> None:
        self.backend.close()
        self.journal.close()
