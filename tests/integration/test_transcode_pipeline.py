"""Transcoding in the daemon's pipeline: drop a video, receive a web MP4."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from syncd.transcode import get_video_info, is_web_ready
from tests.support.daemon import REPO, DaemonProcess, make_config
from tests.support.files import md5_of
from tests.support.tools import require_tools

pytestmark = pytest.mark.ffmpeg


def make_clip(path, *, seconds=1, codec_args=("-c:v", "mpeg4", "-c:a", "pcm_s16le")):
    require_tools("ffmpeg", "ffprobe")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", *codec_args, "-shortest", str(path)],
        check=True, capture_output=True, timeout=60)
    return path


def video_config(tmp_path, receiver, **watch):
    spec = {"name": "videos", "path": str(tmp_path / "drop"), "target": "main",
            "settle": {"quiet": "0.3s", "max_wait": "30s"}, "transcode": "optimize_for_web", **watch}
    return make_config(tmp_path, url=receiver.url, token=receiver.token, part_size="64KiB", watches=[spec])


def test_dropped_mov_arrives_as_web_mp4(tmp_path, receiver):
    clip = make_clip(tmp_path / "clip.mov")
    config = video_config(tmp_path, receiver)
    with DaemonProcess(config) as daemon:
        os.rename(clip, tmp_path / "drop" / "clip.mov")
        daemon.wait_states({"videos:clip.mov": "done"}, timeout=60)
        assert daemon.rows()["videos:clip.mov"]["remote_name"] == "clip.mp4"
    stored = receiver.root / "clip.mp4"
    assert is_web_ready(stored)
    info = get_video_info(stored)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 320, 240)
    assert abs(info.duration - 1.0) < 0.1
    assert not (receiver.root / "clip.mov").exists()
    assert list((tmp_path / "state" / "staging").iterdir()) == []  # the web copy is removed
    assert (tmp_path / "drop" / "clip.mov").exists()  # after_upload: keep
    # the log line names the size and MD5 of what was sent: the web version (issue 13, item 9)
    line = next(x for x in daemon.log().splitlines() if "videos:clip.mov: uploaded as clip.mp4" in x)
    assert f"({stored.stat().st_size} bytes, md5 {md5_of(stored)}" in line


def test_upload_original_sends_both_and_web_ready_is_not_reencoded(tmp_path, receiver):
    config = video_config(tmp_path, receiver, upload_original=True)
    make_clip(tmp_path / "drop" / "raw.avi")  # there before the daemon starts: found by the startup scan
    make_clip(tmp_path / "ready.mp4", codec_args=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                                                  "-movflags", "+faststart"))
    with DaemonProcess(config) as daemon:
        os.rename(tmp_path / "ready.mp4", tmp_path / "drop" / "ready.mp4")
        daemon.wait_states({"videos:raw.avi": "done", "videos:ready.mp4": "done"}, timeout=60)
        log = daemon.log()
    assert receiver.stored_md5("raw.avi") == md5_of(tmp_path / "drop" / "raw.avi")
    assert is_web_ready(receiver.root / "raw.mp4")
    assert receiver.stored_md5("ready.mp4") == md5_of(tmp_path / "drop" / "ready.mp4")
    assert "videos:ready.mp4: already web-ready" in log


def test_corrupt_video_fails_with_ffmpegs_reason(tmp_path, receiver):
    require_tools("ffmpeg", "ffprobe")
    config = video_config(tmp_path, receiver)
    bad = tmp_path / "drop" / "broken.mp4"
    with DaemonProcess(config) as daemon:
        bad.write_bytes(b"this is no video at all" * 1000)
        before = md5_of(bad)
        daemon.wait_states({"videos:broken.mp4": "failed"}, timeout=60)
        error = daemon.rows()["videos:broken.mp4"]["last_error"]
    assert "broken.mp4" in error and "\n" not in error
    assert md5_of(bad) == before
    assert not (receiver.root / "broken.mp4").exists()
    assert list((tmp_path / "state" / "staging").iterdir()) == []


def test_missing_ffmpeg_is_refused_naming_the_watch(tmp_path, receiver):
    config = video_config(tmp_path, receiver)
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    out = subprocess.run([sys.executable, "-m", "syncd", "check-config", "-c", str(config)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == ("config.yaml: watches[0].transcode: watch 'videos' transcodes videos, but "
                                  "ffmpeg and ffprobe is not on PATH (install the ffmpeg package)")


def test_bad_transcode_setting_names_the_key(tmp_path, receiver):
    config = video_config(tmp_path, receiver, transcode={"crf": 99})
    out = subprocess.run([sys.executable, "-m", "syncd", "check-config", "-c", str(config)],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert line.startswith("config.yaml: watches[0].transcode: ") and "crf" in line, line
    data = yaml.safe_load(config.read_text())
    data["watches"][0]["transcode"] = {"crf": 20, "preset": "veryfast"}
    config.write_text(yaml.safe_dump(data))
    ok = subprocess.run([sys.executable, "-m", "syncd", "check-config", "-c", str(config)],
                        capture_output=True, text=True, cwd=REPO, timeout=30)
    assert ok.returncode == 0, ok.stderr
