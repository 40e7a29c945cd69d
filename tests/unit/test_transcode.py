"""syncd.transcode against the real ffmpeg/ffprobe, on short clips made with lavfi.

Where a behaviour must not depend on timing (timeouts, cancellation, progress parsing,
the child's environment) a tiny shell script stands in for ffmpeg, next to the real
ffprobe, on a PATH of its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd import transcode as tc
from tests.support.tools import require_tools

CLIP_SECONDS = 2.0
FORMATS = ("mp4", "mov", "mkv", "avi", "webm")

# testsrc + sine, 320x240 at 25 fps, two seconds; each container with codecs that force
# a real transcode (and an mp4 that is H.264/AAC but not faststart).
_TESTSRC = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2"]
_SINE = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=2"]
_CLIPS: dict[str, list[str]] = {
    "mp4": [*_TESTSRC, *_SINE, "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-c:a", "aac"],
    "mov": [*_TESTSRC, *_SINE, "-c:v", "mpeg4", "-c:a", "aac"],
    "mkv": [*_TESTSRC, *_SINE, "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv444p", "-c:a", "flac"],
    "avi": [*_TESTSRC, *_SINE, "-c:v", "mpeg4", "-c:a", "mp3"],
    "webm": [*_TESTSRC, *_SINE, "-c:v", "libvpx-vp9", "-deadline", "realtime",
             "-cpu-used", "8", "-c:a", "libopus"],
    "noaudio.mp4": [*_TESTSRC, "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p"],
    "odd.mkv": ["-f", "lavfi", "-i", "testsrc=size=321x241:rate=25:duration=1",
                "-c:v", "ffv1"],
    "audioonly.mp4": [*_SINE, "-c:a", "aac"],
    "yuv444.mp4": [*_TESTSRC, "-c:v", "libx264", "-preset", "ultrafast",
                   "-pix_fmt", "yuv444p", "-movflags", "+faststart"],
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True, timeout=60,
    )


@pytest.fixture(scope="session")
def clips() -> Iterator[dict[str, Path]]:
    require_tools("ffmpeg", "ffprobe")
    # A folder of its own (written before tmp_path runs were isolated from each other; harmless).
    folder = Path(tempfile.mkdtemp(prefix="syncd-test-clips-"))
    try:
        yield _make_clips(folder)
    finally:
        shutil.rmtree(folder)


def _make_clips(folder: Path) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for name, args in _CLIPS.items():
        path = folder / (name if "." in name else f"clip.{name}")
        _ffmpeg(*args, "-shortest", str(path))
        made[name] = path
    # The same H.264/AAC as clip.mp4, faststart, but in a QuickTime container.
    made["faststart.mov"] = folder / "faststart.mov"
    _ffmpeg("-i", str(made["mp4"]), "-c", "copy", "-movflags", "+faststart",
            str(made["faststart.mov"]))
    return made


def _copy(clip: Path, folder: Path, name: str | None = None) -> Path:
    target = folder / (name or clip.name)
    shutil.copyfile(clip, target)
    return target


def _top_level_boxes(path: Path) -> list[bytes]:
    kinds = []
    with open(path, "rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            kinds.append(kind)
            if size == 1:
                (size,) = struct.unpack(">Q", f.read(8))
                f.seek(size - 16, os.SEEK_CUR)
            elif size == 0:
                break
            else:
                f.seek(size - 8, os.SEEK_CUR)
    return kinds


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return pids


@pytest.fixture(autouse=True)
def no_leaked_children():
    before = _children()
    yield
    leaked = _children() - before
    assert not leaked, f"test left child processes: {sorted(leaked)}"


def _assert_only(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ---------------------------------------------------------------- no ffmpeg needed


def test_supported_formats_and_is_video() -> None:
    assert tc.SUPPORTED_FORMATS == {
        ".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".mpeg", ".mpg",
        ".3gp", ".ogv",
    }
    assert tc.is_video("a/b/Clip.MOV")
    assert not tc.is_video("notes.txt")
    assert not tc.is_video("mp4")
    tc.validate_video_format("x.webm")
    with pytest.raises(tc.UnsupportedFormatError, match=r"notes\.txt.*\.txt"):
        tc.validate_video_format("notes.txt")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30000/1001", Fraction(30000, 1001)),
        ("25/1", Fraction(25)),
        ("24", Fraction(24)),
        ("0/0", None),
        ("1/0", None),
        ("0/1", None),
        ("-25/1", None),
        ("", None),
        (None, None),
        ("__import__('os').system('false')", None),
    ],
)
def test_parse_frame_rate(text: str | None, expected: Fraction | None) -> None:
    assert tc.parse_frame_rate(text) == expected


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_parse_frame_rate_round_trips_any_positive_fraction(num: int, den: int) -> None:
    assert tc.parse_frame_rate(f"{num}/{den}") == Fraction(num, den)


def test_default_config_is_the_web_config() -> None:
    assert tc.TranscodeConfig() == tc.WEB_CONFIG
    web = tc.WEB_CONFIG
    assert (web.vcodec, web.preset, web.crf, web.acodec, web.audio_bitrate, web.movflags,
            web.pix_fmt) == ("libx264", "fast", 23, "aac", "128k", "+faststart", "yuv420p")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vcodec", "h264_nvenc"),
        ("preset", "quick"),
        ("crf", 52),
        ("crf", -1),
        ("crf", True),
        ("crf", "23"),
        ("acodec", "mp3"),
        ("audio_bitrate", "loud"),
        ("audio_bitrate", 0),
        ("movflags", "faststart;rm -rf"),
        ("movflags", "+fastest"),
        ("movflags", "+faststart+frag_keyframe+empty_moov"),
        ("resolution", "1280*720"),
        ("resolution", "1281x720"),
        ("resolution", "0x0"),
        ("fps", 0),
        ("fps", float("nan")),
        ("start_time", -1.0),
        ("duration", 0),
        ("pix_fmt", "yuv420p; echo"),
        ("threads", -1),
        ("threads", False),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        tc.TranscodeConfig(**{field: value})


def test_config_accepts_either_mp4_layout_alone() -> None:
    assert tc.TranscodeConfig(movflags="+frag_keyframe+empty_moov").movflags
    assert tc.TranscodeConfig(movflags=None).movflags is None
    assert tc.TranscodeConfig(resolution="1280x720").dimensions() == (1280, 720)


def test_config_from_mapping() -> None:
    config = tc.TranscodeConfig.from_mapping(
        {"crf": 28, "preset": "veryfast", "resolution": "640x360", "start_time": "1m30s",
         "duration": 10, "audio_bitrate": "96k"}
    )
    assert config == tc.TranscodeConfig(
        crf=28, preset="veryfast", resolution="640x360", start_time=90.0, duration=10.0,
        audio_bitrate="96k",
    )
    assert tc.TranscodeConfig.from_mapping({}) == tc.WEB_CONFIG
    with pytest.raises(ValueError, match=r"^quality: unknown transcode setting"):
        tc.TranscodeConfig.from_mapping({"crf": 20, "quality": "high"})
    with pytest.raises(ValueError, match=r"^start_time: 'soon' is not a duration"):
        tc.TranscodeConfig.from_mapping({"start_time": "soon"})
    with pytest.raises(ValueError, match=r"^crf: "):
        tc.TranscodeConfig.from_mapping({"crf": 99})
    with pytest.raises(ValueError, match="mapping"):
        tc.TranscodeConfig.from_mapping(["crf", 20])  # type: ignore[arg-type]


def test_default_timeout_scales_with_duration() -> None:
    assert tc.default_timeout(0) == 120.0
    assert tc.default_timeout(60) == 720.0
    assert tc.default_timeout(3600) == 120.0 + 36000.0
    assert tc.default_timeout(None) == 6 * 3600.0
    assert tc.default_timeout(float("nan")) == 6 * 3600.0


def test_child_env_hides_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    env = tc.child_env()
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert "WATCHDOG_PID" not in env and env["PATH"] == os.environ["PATH"]
    explicit = tc.child_env({"NOTIFY_SOCKET": "@x", "LANG": "C"})
    assert explicit == {"LANG": "C"}


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(tc.FFmpegNotFoundError, match="ffmpeg and ffprobe not found"):
        tc.check_ffmpeg()
    video = tmp_path / "in.mp4"
    video.write_bytes(b"\0" * 64)
    with pytest.raises(tc.FFmpegNotFoundError):
        tc.get_video_info(video)
    with pytest.raises(tc.FFmpegNotFoundError):
        tc.transcode_video(video, tmp_path / "out.mp4")
    _assert_only(tmp_path, "bin", "in.mp4")


def test_only_ffprobe_missing_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ffmpeg").write_text("#!/bin/sh\n")
    (tmp_path / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tc.FFmpegNotFoundError, match=r"^ffprobe not found on PATH"):
        tc.check_ffmpeg()


def test_refuses_before_running(tmp_path: Path) -> None:
    with pytest.raises(tc.UnsupportedFormatError):
        tc.transcode_video(tmp_path / "notes.txt", tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="overwrite the input"):
        tc.transcode_video(tmp_path / "a.mp4", tmp_path / "a.mp4")
    with pytest.raises(FileNotFoundError):
        tc.transcode_video(tmp_path / "a.mp4", tmp_path / "missing" / "out.mp4")
    with pytest.raises(ValueError, match="^nice: "):
        tc.transcode_video(tmp_path / "a.mp4", tmp_path / "out.mp4", nice=-5)
    stop = threading.Event()
    stop.set()
    with pytest.raises(tc.TranscodeCancelled):
        tc.transcode_video(tmp_path / "a.mp4", tmp_path / "out.mp4", stop_event=stop)
    _assert_only(tmp_path)


def test_error_classes() -> None:
    for cls in (tc.UnsupportedFormatError, tc.FFmpegNotFoundError,
                tc.TranscodingFailedError, tc.TranscodeCancelled):
        assert issubclass(cls, tc.VideoTranscodeError)
    assert issubclass(tc.TranscodeTimeoutError, tc.TranscodingFailedError)


# ---------------------------------------------------------------- real ffmpeg

@pytest.mark.ffmpeg
@pytest.mark.parametrize(
    ("fmt", "codecs", "sample_rate"),
    [
        ("mp4", ("h264", "aac"), 44100),
        ("mov", ("mpeg4", "aac"), 44100),
        ("mkv", ("h264", "flac"), 44100),
        ("avi", ("mpeg4", "mp3"), 44100),
        ("webm", ("vp9", "opus"), 48000),  # opus always runs at 48 kHz
    ],
)
def test_get_video_info(
    clips: dict[str, Path], fmt: str, codecs: tuple[str, str], sample_rate: int
) -> None:
    require_tools("ffmpeg", "ffprobe")
    info = tc.get_video_info(clips[fmt])
    assert (info.width, info.height, info.fps) == (320, 240, 25.0)
    assert (info.video_codec, info.audio_codec) == codecs
    assert (info.channels, info.sample_rate) == (1, sample_rate)
    assert info.duration == pytest.approx(CLIP_SECONDS, abs=0.1)
    assert info.size == clips[fmt].stat().st_size
    assert info.bitrate and info.bitrate > 0


@pytest.mark.ffmpeg
@pytest.mark.parametrize("fmt", FORMATS)
def test_optimize_for_web(clips: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    before = _digest(clips[fmt])
    output = tc.optimize_for_web(clips[fmt], tmp_path / "out.mp4")
    assert output == tmp_path / "out.mp4"
    info = tc.get_video_info(output)
    assert (info.video_codec, info.audio_codec, info.pix_fmt) == ("h264", "aac", "yuv420p")
    assert (info.width, info.height) == (320, 240)
    assert info.duration == pytest.approx(tc.get_video_info(clips[fmt]).duration, abs=0.1)
    boxes = _top_level_boxes(output)
    assert boxes[0] == b"ftyp" and b"moof" not in boxes
    assert boxes.index(b"moov") < boxes.index(b"mdat")
    assert tc.is_web_ready(output)
    assert _digest(clips[fmt]) == before
    _assert_only(tmp_path, "out.mp4")


@pytest.mark.ffmpeg
def test_is_web_ready(clips: dict[str, Path]) -> None:
    require_tools("ffmpeg", "ffprobe")
    plain = clips["mp4"]  # H.264/AAC, but mdat before moov
    boxes = _top_level_boxes(plain)
    assert boxes.index(b"mdat") < boxes.index(b"moov")
    assert not tc.is_web_ready(plain)
    assert not tc.is_web_ready(clips["faststart.mov"])  # QuickTime brand
    assert not tc.is_web_ready(clips["yuv444.mp4"])  # faststart MP4, but 4:4:4
    assert not tc.is_web_ready(clips["mkv"])
    with pytest.raises(FileNotFoundError):
        tc.is_web_ready(plain.with_name("missing.mp4"))


@pytest.mark.ffmpeg
@pytest.mark.parametrize(
    ("config", "checks"),
    [
        (tc.TranscodeConfig(resolution="160x120"), {"size": (160, 120)}),
        (tc.TranscodeConfig(fps=10), {"fps": 10.0}),
        (tc.TranscodeConfig(start_time=0.5), {"duration": 1.5}),
        (tc.TranscodeConfig(duration=1.0), {"duration": 1.0}),
        (tc.TranscodeConfig(start_time=0.5, duration=1.0, resolution="240x180", fps=15,
                            threads=1, crf=30, preset="ultrafast"),
         {"duration": 1.0, "size": (240, 180), "fps": 15.0}),
    ],
)
def test_options_are_honoured(
    clips: dict[str, Path], tmp_path: Path, config: tc.TranscodeConfig, checks: dict
) -> None:
    require_tools("ffmpeg", "ffprobe")
    info = tc.get_video_info(tc.transcode_video(clips["mov"], tmp_path / "o.mp4", config))
    assert (info.video_codec, info.audio_codec, info.pix_fmt) == ("h264", "aac", "yuv420p")
    assert (info.width, info.height) == checks.get("size", (320, 240))
    assert info.fps == checks.get("fps", 25.0)
    assert info.duration == pytest.approx(checks.get("duration", CLIP_SECONDS), abs=0.1)


@pytest.mark.ffmpeg
def test_start_time_honoured_in_content(clips: dict[str, Path], tmp_path: Path) -> None:
    """The cut starts at 0.5 s of the input, not just 0.5 s shorter: compare frames."""
    require_tools("ffmpeg", "ffprobe")
    out = tc.transcode_video(clips["mp4"], tmp_path / "o.mp4",
                             tc.TranscodeConfig(start_time=0.5, crf=0))

    def frame(path: Path, at: float) -> bytes:
        return subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{at}", "-i", str(path),
             "-frames:v", "1", "-vf", "scale=32:24", "-f", "rawvideo", "-pix_fmt", "gray",
             "-"], capture_output=True, check=True, timeout=30,
        ).stdout

    first = frame(out, 0.0)
    distances = {at: sum(abs(a - b) for a, b in zip(first, frame(clips["mp4"], at)))
                 for at in (0.0, 0.5, 1.0)}
    assert min(distances, key=distances.get) == 0.5


@pytest.mark.ffmpeg
def test_progress_is_monotonic_and_ends_at_one(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    seen: list[float] = []
    tc.optimize_for_web(clips["mkv"], tmp_path / "o.mp4", seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(a < b for a, b in zip(seen, seen[1:]))
    assert seen.count(1.0) == 1


@pytest.mark.ffmpeg
def test_no_audio_and_odd_dimensions(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    silent = tc.get_video_info(tc.optimize_for_web(clips["noaudio.mp4"], tmp_path / "a.mp4"))
    assert (silent.video_codec, silent.audio_codec) == ("h264", None)
    assert tc.is_web_ready(tmp_path / "a.mp4")
    odd = tc.get_video_info(tc.optimize_for_web(clips["odd.mkv"], tmp_path / "b.mp4"))
    assert (odd.width, odd.height, odd.pix_fmt) == (320, 240, "yuv420p")


@pytest.mark.ffmpeg
def test_audio_only_file_is_not_a_video(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    with pytest.raises(tc.UnsupportedFormatError, match="no video stream"):
        tc.optimize_for_web(clips["audioonly.mp4"], tmp_path / "o.mp4")
    _assert_only(tmp_path)


def _truncated(clip: Path, folder: Path, *, keep: float, name: str) -> Path:
    data = clip.read_bytes()
    target = folder / name
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.ffmpeg
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("garbage", "moov atom not found"),
        ("truncated_mp4", "moov atom not found"),  # the moov at the end is cut off
        ("truncated_faststart", "partial file"),  # ffmpeg itself exits 0 on this one
        ("truncated_mkv", "File ended prematurely"),
        ("truncated_avi", "truncated or corrupt input"),
    ],
)
def test_corrupt_input(clips: dict[str, Path], tmp_path: Path, case: str, reason: str) -> None:
    require_tools("ffmpeg", "ffprobe")
    src = tmp_path / "src"
    src.mkdir()
    if case == "garbage":
        bad = src / "bad.mp4"
        bad.write_bytes(os.urandom(50_000))
    elif case == "truncated_mp4":
        bad = _truncated(clips["mp4"], src, keep=0.9, name="bad.mp4")
    elif case == "truncated_faststart":
        web = tc.optimize_for_web(clips["mp4"], src / "web.mp4")
        bad = _truncated(web, src, keep=0.5, name="bad.mp4")
        web.unlink()
    else:
        fmt = case.rpartition("_")[2]
        bad = _truncated(clips[fmt], src, keep=0.5, name=f"bad.{fmt}")
    before = _digest(bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tc.TranscodingFailedError) as caught:
        tc.optimize_for_web(bad, out / "o.mp4")
    error = caught.value
    assert type(error) is tc.TranscodingFailedError
    message = str(error)
    assert "\n" not in message and message.startswith(f"{bad}: ") and reason in message
    assert error.input == bad and 0 < len(error.stderr_tail) <= 20
    assert _digest(bad) == before
    _assert_only(out)


@pytest.mark.ffmpeg
def test_ffmpeg_failure_names_the_root_cause(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    config = tc.TranscodeConfig(pix_fmt="nosuchformat")
    with pytest.raises(tc.TranscodingFailedError, match="nosuchformat") as caught:
        tc.transcode_video(clips["mp4"], tmp_path / "o.mp4", config)
    assert caught.value.returncode not in (None, 0)
    _assert_only(tmp_path)


@pytest.mark.ffmpeg
def test_probe_of_corrupt_file(tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0\0\0\x08free" + os.urandom(1000))
    with pytest.raises(tc.TranscodingFailedError, match=r"bad\.mp4: .+"):
        tc.get_video_info(bad)
    assert not tc.is_web_ready(bad)
    with pytest.raises(FileNotFoundError):
        tc.get_video_info(tmp_path / "missing.mp4")


@pytest.mark.ffmpeg
def test_callback_exception_leaves_nothing(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")

    class Boom(Exception):
        pass

    def explode(fraction: float) -> None:
        if fraction > 0:
            raise Boom

    with pytest.raises(Boom):
        tc.optimize_for_web(clips["mp4"], tmp_path / "o.mp4", explode)
    _assert_only(tmp_path)


@pytest.mark.ffmpeg
def test_replaces_existing_output_and_stale_partial(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    require_tools("ffmpeg", "ffprobe")
    (tmp_path / "o.mp4").write_bytes(b"old")
    tc.partial_path(tmp_path / "o.mp4").write_bytes(b"left by a killed run")
    tc.optimize_for_web(clips["mp4"], tmp_path / "o.mp4")
    assert tc.is_web_ready(tmp_path / "o.mp4")
    _assert_only(tmp_path, "o.mp4")


# ---------------------------------------------------------------- stand-in ffmpeg


def _fake_tools(
    folder: Path, *, ffmpeg: str | None = None, ffprobe: str | None = None
) -> dict[str, str]:
    """An environment whose PATH has sh scripts for the tools given, the real ones else."""
    folder.mkdir()
    for name, script in (("ffmpeg", ffmpeg), ("ffprobe", ffprobe)):
        if script is None:
            (folder / name).symlink_to(shutil.which(name))  # type: ignore[arg-type]
        else:
            (folder / name).write_text("#!/bin/sh\n" + script)
            (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/bin:/bin"}


# Creates the .partial output ffmpeg would write, then hangs.
_HANGS = 'for a; do case "$a" in *.partial) echo x > "$a";; esac; done\nexec sleep 30\n'


@pytest.mark.ffmpeg
def test_timeout_kills_ffmpeg(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    env = _fake_tools(tmp_path / "bin", ffmpeg=_HANGS)
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    with pytest.raises(tc.TranscodeTimeoutError, match=r"within 0\.5 s"):
        tc.transcode_video(clips["mp4"], out / "o.mp4", timeout=0.5, env=env)
    assert time.monotonic() - started < 5
    _assert_only(out)


@pytest.mark.ffmpeg
def test_stop_event_cancels_promptly(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    env = _fake_tools(tmp_path / "bin", ffmpeg=_HANGS)
    out = tmp_path / "out"
    out.mkdir()
    stop = threading.Event()
    set_at: list[float] = []

    def shut_down() -> None:
        set_at.append(time.monotonic())
        stop.set()

    timer = threading.Timer(0.5, shut_down)
    timer.start()
    try:
        with pytest.raises(tc.TranscodeCancelled):
            tc.transcode_video(clips["mp4"], out / "o.mp4", env=env, stop_event=stop)
        returned_at = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
    assert returned_at - set_at[0] < 0.5
    _assert_only(out)


@pytest.mark.ffmpeg
def test_hung_probe_times_out_or_is_cancelled(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    env = _fake_tools(tmp_path / "bin", ffprobe="exec sleep 30\n")
    with pytest.raises(tc.TranscodeTimeoutError, match=r"ffprobe did not finish within 0\.3 s"):
        tc.get_video_info(clips["mp4"], timeout=0.3, env=env)
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        started = time.monotonic()
        with pytest.raises(tc.TranscodeCancelled):
            tc.transcode_video(clips["mp4"], tmp_path / "o.mp4", env=env, stop_event=stop)
        assert time.monotonic() - started < 2
    finally:
        timer.cancel()
        timer.join()
    _assert_only(tmp_path, "bin")


@pytest.mark.ffmpeg
def test_progress_parsing(clips: dict[str, Path], tmp_path: Path) -> None:
    """Rising fractions only, N/A and overshoot ignored, 1.0 only once it is done."""
    require_tools("ffmpeg", "ffprobe")
    lines = ["out_time_us=N/A", "progress=continue", "out_time_us=-23000",
             "out_time_us=500000", "progress=continue", "out_time_us=400000",
             "out_time_us=1500000", "out_time_us=2050000", "progress=end"]
    script = (
        'for a; do case "$a" in *.partial) echo x > "$a";; esac; done\n'
        + "".join(f"echo '{line}'\n" for line in lines)
    )
    env = _fake_tools(tmp_path / "bin", ffmpeg=script)
    seen: list[float] = []
    tc.transcode_video(clips["mp4"], tmp_path / "o.mp4", progress_callback=seen.append,
                       env=env)
    assert seen == [0.0, pytest.approx(0.25), pytest.approx(0.75), 1.0]


@pytest.mark.ffmpeg
def test_progress_shortfall_is_a_failure(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    script = (
        'for a; do case "$a" in *.partial) echo x > "$a";; esac; done\n'
        "echo '[error] stream 0: partial file' >&2\n"
        "echo out_time_us=900000\necho progress=end\n"
    )
    env = _fake_tools(tmp_path / "bin", ffmpeg=script)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tc.TranscodingFailedError, match=r"0\.90 s of the 2\.00 s.*partial"):
        tc.transcode_video(clips["mp4"], out / "o.mp4", env=env)
    _assert_only(out)


@pytest.mark.ffmpeg
def test_failure_message_names_the_first_error(clips: dict[str, Path], tmp_path: Path) -> None:
    require_tools("ffmpeg", "ffprobe")
    script = (
        "echo '[libx264 @ 0x55] [error] width not divisible by 2' >&2\n"
        "echo '[error] Error initializing output stream 0:0 -- maybe incorrect' >&2\n"
        "echo 'Conversion failed!' >&2\nexit 1\n"
    )
    env = _fake_tools(tmp_path / "bin", ffmpeg=script)
    with pytest.raises(tc.TranscodingFailedError) as caught:
        tc.transcode_video(clips["mp4"], tmp_path / "o.mp4", env=env)
    assert str(caught.value) == f"{clips['mp4']}: width not divisible by 2"
    assert caught.value.returncode == 1 and caught.value.stderr_tail[-1] == "Conversion failed!"
    _assert_only(tmp_path, "bin")


_PROBED = """{"streams": [
  {"index": 0, "codec_type": "video", "codec_name": "mjpeg", "width": 600, "height": 600,
   "r_frame_rate": "90000/1", "disposition": {"attached_pic": 1}},
  {"index": 1, "codec_type": "audio", "codec_name": "aac", "channels": 2,
   "sample_rate": "48000", "r_frame_rate": "0/0"},
  {"index": 2, "codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
   "pix_fmt": "yuv420p", "profile": "High", "r_frame_rate": "%s",
   "avg_frame_rate": "%s", "duration": "12.5", "nb_frames": "N/A"}],
 "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "bit_rate": "N/A"}}"""


@pytest.mark.ffmpeg
@pytest.mark.parametrize(
    ("r_rate", "avg_rate", "fps"),
    [("30000/1001", "0/0", 30000 / 1001), ("0/0", "25/1", 25.0), ("0/0", "0/0", None)],
)
def test_probe_description_is_read_safely(
    tmp_path: Path, r_rate: str, avg_rate: str, fps: float | None
) -> None:
    require_tools("ffmpeg", "ffprobe")
    (tmp_path / "probed.json").write_text(_PROBED % (r_rate, avg_rate))
    env = _fake_tools(tmp_path / "bin", ffprobe=f"cat '{tmp_path / 'probed.json'}'\n")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 1234)
    info = tc.get_video_info(video, env=env)
    assert info == tc.VideoInfo(
        duration=12.5, size=1234, bitrate=None, width=1920, height=1080,
        video_codec="h264", audio_codec="aac", fps=fps, frames=None, channels=2,
        sample_rate=48000, pix_fmt="yuv420p", video_profile="High",
        format_name="mov,mp4,m4a,3gp,3g2,mj2", video_stream=2, audio_stream=1,
    )


@pytest.mark.ffmpeg
def test_child_env_and_nice(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tools("ffmpeg", "ffprobe")
    dump = tmp_path / "seen"
    real = shutil.which("ffmpeg")
    script = (
        f'env > "{dump}.env"\n'
        f'awk \'{{print $19}}\' /proc/$$/stat > "{dump}.nice"\n'
        f'exec "{real}" "$@"\n'
    )
    env = _fake_tools(tmp_path / "bin", ffmpeg=script)
    env.update(NOTIFY_SOCKET="/run/systemd/notify", WATCHDOG_USEC="1000000", KEEP="me")
    tc.optimize_for_web(clips["mp4"], tmp_path / "o.mp4", nice=7, env=env)
    seen_env = dict(
        line.split("=", 1) for line in Path(f"{dump}.env").read_text().splitlines()
        if "=" in line
    )
    assert "NOTIFY_SOCKET" not in seen_env and "WATCHDOG_USEC" not in seen_env
    assert seen_env["KEEP"] == "me"
    assert int(Path(f"{dump}.nice").read_text()) == min(19, os.nice(0) + 7)
    assert tc.is_web_ready(tmp_path / "o.mp4")


@pytest.mark.ffmpeg
def test_build_command_maps_only_the_chosen_streams(clips: dict[str, Path]) -> None:
    require_tools("ffmpeg", "ffprobe")
    info = tc.get_video_info(clips["mp4"])
    argv = tc.build_command(clips["mp4"], "/x/o.mp4.partial", tc.WEB_CONFIG, info=info)
    assert argv[0] == "ffmpeg" and "/x/o.mp4.partial" in argv
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps == ["[s0]", f"0:{info.audio_stream}"]
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.startswith(f"[0:{info.video_stream}]crop=")
    for option, value in [("-c:v", "libx264"), ("-preset", "fast"), ("-crf", "23"),
                          ("-c:a", "aac"), ("-b:a", "128k"), ("-movflags", "+faststart"),
                          ("-pix_fmt", "yuv420p"), ("-f", "mp4")]:
        assert argv[argv.index(option) + 1] == value
