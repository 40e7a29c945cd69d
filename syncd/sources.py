"""What is sent for a watched file: the file itself, or the web version of a video made
in the staging folder (and, with ``upload_original``, the original as well).

A web version's staging name is derived from the original's fingerprint and the
transcode settings, so after a restart a finished transcode is reused, and a half-done
one (``.partial``) is started again by ffmpeg.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from syncd.config import Watch
from syncd.journal import FileRow, Fingerprint
from syncd.transcode import WEB_CONFIG, TranscodeConfig, is_video, is_web_ready, transcode_video

log = logging.getLogger("syncd.transcode")


@dataclass(frozen=True)
class Source:
    path: Path
    fingerprint: Fingerprint
    remote_name: str
    staged: bool
    """a staging file, removed once the watched file is done"""


def transcode_config(watch: Watch) -> TranscodeConfig | None:
    if watch.transcode is None:
        return None
    if watch.transcode == "optimize_for_web":
        return WEB_CONFIG
    return TranscodeConfig.from_mapping(watch.transcode)


def needs_transcode(watch: Watch, path: Path) -> bool:
    return watch.transcode is not None and is_video(path)


def staging_name(watch: Watch, row: FileRow, config: TranscodeConfig) -> str:
    fp = row.fingerprint
    settings = json.dumps(asdict(config), sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return f"{watch.name}-{fp.dev}-{fp.ino}-{fp.size}-{fp.mtime_ns}-{digest}.mp4"


class SourcePlanner:
    def __init__(self, staging_dir: Path, *, transcodes: int, nice: int, stop: threading.Event,
                 on_transcoded: Callable[[float], None] | None = None):
        self.staging_dir = staging_dir
        self.nice = nice
        self.stop = stop
        self._slots = threading.Semaphore(transcodes)
        self._on_transcoded = on_transcoded

    def sources(self, watch: Watch, row: FileRow, path: Path, remote_name: str, label: str) -> list[Source]:
        """Raises the transcode module's errors (VideoTranscodeError and subclasses)."""
        original = Source(path, row.fingerprint, remote_name, staged=False)
        config = transcode_config(watch)
        if config is None or not is_video(path):
            return [original]
        if watch.skip_if_web_ready and is_web_ready(path, stop_event=self.stop):
            log.info("%s: already web-ready; uploading it as it is", label)
            return [original]
        web_name = posixpath.splitext(remote_name)[0] + ".mp4"
        if watch.upload_original and web_name == remote_name:
            web_name = posixpath.splitext(remote_name)[0] + ".web.mp4"
        staged = self.staging_dir / staging_name(watch, row, config)
        if not staged.exists():
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            with self._slots:
                started = time.monotonic()
                log.info("%s: transcoding for the web", label)
                transcode_video(path, staged, config, nice=self.nice, stop_event=self.stop)
                seconds = time.monotonic() - started
            log.info("%s: transcoded in %.1fs (%d -> %d bytes)", label, seconds, row.fingerprint.size,
                     staged.stat().st_size)
            if self._on_transcoded is not None:
                self._on_transcoded(seconds)
        web = Source(staged, Fingerprint.of(os.stat(staged)), web_name, staged=True)
        return [web, original] if watch.upload_original else [web]
