"""Probe and transcode videos for the web with the system's ffmpeg and ffprobe.

The command line is built with ffmpeg-python's graph API; the process itself is run
here, not by ffmpeg-python, so that this module controls what a daemon needs: priority
(``nice``), the child's environment (never ``NOTIFY_SOCKET``), a timeout, prompt
cancellation through a ``threading.Event``, and progress read from ``-progress pipe:1``.
ffprobe is run directly for the same reasons (``ffmpeg.probe`` has no timeout).

Output is written to ``<output>.partial`` next to the output, fsync'ed and renamed over
the output on success; on any failure, timeout, cancellation or exception the partial
file is removed. The name is fixed so that a run killed with the whole daemon is simply
overwritten by the next run (see :func:`partial_path`).

Faststart, not fragmented. The Synapse SDK passes ``+faststart+frag_keyframe+empty_moov``.
That asks for two layouts at once and ffmpeg resolves it as a fragmented MP4 (an empty
``moov`` followed by ``moof``/``mdat`` pairs) in which ``faststart`` does nothing. We write
a plain, non-fragmented MP4 with the ``moov`` atom moved to the front (``+faststart``):
the layout progressive download in browsers is built around; one sample table up front
lets a player seek anywhere as soon as the first bytes arrive, while a fragmented file
without a ``sidx`` index has to be walked fragment by fragment to seek. Fragmenting pays
only when a file is read while it is still being written (live streaming), which a
transcode-then-upload pipeline never does. :class:`TranscodeConfig` therefore refuses
``faststart`` combined with ``frag_keyframe``/``empty_moov``; either layout alone is fine.

Truncation: ffmpeg exits 0 on many truncated inputs (an MP4 with its ``moov`` in front
and its data cut short decodes "successfully" up to the cut). When the input's header
declares a duration, an output that ends well short of it (more than
``max(0.5 s, 2 %)``) is reported as :class:`TranscodingFailedError` with ffmpeg's reason.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import selectors
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from syncd.durable import fsync_dir, fsync_file
from syncd.units import parse_duration

__all__ = [
    "SUPPORTED_FORMATS",
    "WEB_CONFIG",
    "FFmpegNotFoundError",
    "TranscodeCancelled",
    "TranscodeConfig",
    "TranscodeTimeoutError",
    "TranscodingFailedError",
    "UnsupportedFormatError",
    "VideoInfo",
    "VideoTranscodeError",
    "build_command",
    "check_ffmpeg",
    "child_env",
    "default_timeout",
    "get_video_info",
    "is_video",
    "is_web_ready",
    "optimize_for_web",
    "parse_frame_rate",
    "partial_path",
    "transcode_video",
    "validate_video_format",
]

SUPPORTED_FORMATS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".mpeg", ".mpg",
     ".3gp", ".ogv"}
)

ProgressCallback = Callable[[float], None]

STDERR_TAIL_LINES = 20
PROBE_TIMEOUT_S = 60.0
# Variables through which a child could reach systemd (sd_notify, watchdog pings, or
# sockets passed by socket activation). ffmpeg must never see them.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_POLL_S = 0.05
_MAX_LINE = 4096


# ---------------------------------------------------------------- errors


class VideoTranscodeError(Exception):
    """Base class of every error this module raises on purpose."""


class UnsupportedFormatError(VideoTranscodeError):
    """The file is not a video this module handles (extension, or no video stream)."""


class FFmpegNotFoundError(VideoTranscodeError):
    """ffmpeg and/or ffprobe are not on PATH."""


class TranscodingFailedError(VideoTranscodeError):
    """ffmpeg or ffprobe failed; ``stderr_tail`` holds the last lines they printed."""

    def __init__(
        self,
        message: str,
        *,
        input: Path,
        stderr_tail: tuple[str, ...] = (),
        returncode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.input = input
        self.stderr_tail = stderr_tail
        self.returncode = returncode


class TranscodeTimeoutError(TranscodingFailedError):
    """ffmpeg ran past its timeout and was killed."""


class TranscodeCancelled(VideoTranscodeError):
    """The stop event was set; ffmpeg was killed and no output was left behind."""


# ---------------------------------------------------------------- formats and tools


def is_video(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of :data:`SUPPORTED_FORMATS` (case-insensitive).

    A name check only: cheap enough for a watch handler; the content is probed later.
    """
    return Path(path).suffix.lower() in SUPPORTED_FORMATS


def validate_video_format(path: str | os.PathLike[str]) -> None:
    """Raise :class:`UnsupportedFormatError` unless :func:`is_video` accepts the name."""
    if not is_video(path):
        suffix = Path(path).suffix or "(no extension)"
        raise UnsupportedFormatError(
            f"{path}: unsupported video format {suffix} "
            f"(supported: {' '.join(sorted(SUPPORTED_FORMATS))})"
        )


def check_ffmpeg(*, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`FFmpegNotFoundError` naming whichever of ffmpeg/ffprobe is missing."""
    _tool_paths(child_env(env))


def _tool_paths(env: Mapping[str, str]) -> tuple[str, str]:
    search = env.get("PATH", os.defpath)
    found = {name: shutil.which(name, path=search) for name in ("ffmpeg", "ffprobe")}
    missing = [name for name, where in found.items() if where is None]
    if missing:
        raise FFmpegNotFoundError(
            f"{' and '.join(missing)} not found on PATH (install the ffmpeg package)"
        )
    return found["ffmpeg"], found["ffprobe"]  # type: ignore[return-value]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ffmpeg/ffprobe: ``env`` (default: ours) minus systemd's variables.

    They are removed from an explicit ``env`` as well: a child that inherits
    ``NOTIFY_SOCKET`` could report readiness or stop the watchdog on the daemon's behalf.
    """
    base = os.environ if env is None else env
    return {k: v for k, v in base.items() if k not in _SYSTEMD_ENV}


def default_timeout(duration_s: float | None) -> float:
    """Seconds ffmpeg may run for an input of ``duration_s`` seconds.

    ``120 + 10 * duration_s``: two minutes for start-up and the faststart rewrite, plus
    encoding at a tenth of real time. Two cores encode 720p at preset ``fast`` at about
    2.5x real time (bench/transcode.py); 4K has 9x the pixels, about 0.3x real time, so
    even 4K at low priority keeps a margin. Unknown duration (``None``): six hours.
    """
    if duration_s is None or not math.isfinite(duration_s) or duration_s < 0:
        return 6 * 3600.0
    return 120.0 + 10.0 * duration_s


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where :func:`transcode_video` writes before renaming: ``<output>.partial``."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


# ---------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a file; ``None`` where it does not know."""

    duration: float | None  # seconds, from the container
    size: int  # bytes on disk
    bitrate: int | None  # bits per second, whole file
    width: int
    height: int
    video_codec: str
    audio_codec: str | None  # None: no audio stream
    fps: float | None
    frames: int | None  # video frames, as the header counts them
    channels: int | None
    sample_rate: int | None
    pix_fmt: str | None
    video_profile: str | None  # e.g. "High", "Constrained Baseline"
    format_name: str  # ffprobe's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    video_stream: int  # stream indices in the file, for -map
    audio_stream: int | None

    @property
    def has_audio(self) -> bool:
        return self.audio_stream is not None


def parse_frame_rate(text: str | None) -> Fraction | None:
    """``"30000/1001"`` -> ``Fraction(30000, 1001)``; ``"0/0"``, garbage or <= 0 -> None."""
    if not text:
        return None
    try:
        rate = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate > 0 else None


def get_video_info(
    path: str | os.PathLike[str],
    *,
    timeout: float = PROBE_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    stop_event: threading.Event | None = None,
) -> VideoInfo:
    """Probe ``path`` with ffprobe.

    Raises FileNotFoundError when the file is missing, :class:`TranscodingFailedError`
    when ffprobe cannot read it (corrupt, truncated, not a media file; ffprobe's reason in
    the message), :class:`UnsupportedFormatError` when it has no video stream,
    :class:`TranscodeTimeoutError` after ``timeout`` seconds and
    :class:`TranscodeCancelled` soon after ``stop_event`` is set.
    """
    path = Path(path).absolute()
    size = path.stat().st_size
    env = child_env(env)
    _, ffprobe = _tool_paths(env)
    argv = [ffprobe, "-hide_banner", "-loglevel", "level+error",
            "-show_format", "-show_streams", "-of", "json", str(path)]
    returncode, stdout, stderr = _communicate(
        argv, env=env, source=path, timeout=timeout, stop_event=stop_event
    )
    tail = _tail_of(stderr)
    if returncode != 0:
        raise TranscodingFailedError(
            f"{path}: {_relevant_line(tail) or f'ffprobe exited with {returncode}'}",
            input=path, stderr_tail=tail, returncode=returncode,
        )
    try:
        data = json.loads(stdout)
    except ValueError:
        raise TranscodingFailedError(
            f"{path}: ffprobe printed no readable description", input=path, stderr_tail=tail
        ) from None
    return _video_info(path, size, data)


def _communicate(
    argv: list[str],
    *,
    env: Mapping[str, str],
    source: Path,
    timeout: float,
    stop_event: threading.Event | None,
) -> tuple[int, bytes, bytes]:
    """Run a short-lived tool to completion, as killable as ffmpeg itself."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, close_fds=True, process_group=0,
    )
    try:
        while True:
            _raise_if_stopped(stop_event, source)
            try:
                stdout, stderr = proc.communicate(timeout=_POLL_S)
            except subprocess.TimeoutExpired as exc:
                if time.monotonic() > deadline:
                    raise TranscodeTimeoutError(
                        f"{source}: {Path(argv[0]).name} did not finish within {timeout:g} s",
                        input=source, stderr_tail=_tail_of(exc.stderr),
                    ) from None
            else:
                return proc.returncode, stdout, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _video_info(path: Path, size: int, data: Mapping[str, Any]) -> VideoInfo:
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    video = next(
        (s for s in streams
         if s.get("codec_type") == "video"
         and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        raise UnsupportedFormatError(f"{path}: no video stream")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    rate = parse_frame_rate(video.get("r_frame_rate")) or parse_frame_rate(
        video.get("avg_frame_rate")
    )
    duration = _number(fmt.get("duration"))
    if duration is None:
        duration = _number(video.get("duration"))
    bitrate = _number(fmt.get("bit_rate"))
    frames = _number(video.get("nb_frames"))
    channels = _number(audio.get("channels")) if audio else None
    sample_rate = _number(audio.get("sample_rate")) if audio else None
    return VideoInfo(
        duration=duration,
        size=size,
        bitrate=int(bitrate) if bitrate is not None else None,
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        video_codec=str(video.get("codec_name") or "unknown"),
        audio_codec=str(audio.get("codec_name") or "unknown") if audio else None,
        fps=float(rate) if rate is not None else None,
        frames=int(frames) if frames is not None else None,
        channels=int(channels) if channels is not None else None,
        sample_rate=int(sample_rate) if sample_rate is not None else None,
        pix_fmt=video.get("pix_fmt"),
        video_profile=video.get("profile"),
        format_name=str(fmt.get("format_name") or ""),
        video_stream=int(video["index"]),
        audio_stream=int(audio["index"]) if audio else None,
    )


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


# ---------------------------------------------------------------- web readiness

# Major brands of ISO base media files that are MP4 proper ("qt  " is QuickTime .mov,
# "3gp*" is 3GPP: both share the box format but are not what browsers expect).
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1",
     b"M4V ", b"M4VP", b"dash", b"mmp4"}
)
_WEB_H264_PROFILES = frozenset({"Baseline", "Constrained Baseline", "Main", "High"})
_MAX_BOXES = 10_000


def _faststart_mp4(f: BinaryIO) -> bool:
    """True when the top-level boxes are ``ftyp`` (an MP4 brand) ... ``moov`` ... ``mdat``."""
    end = os.fstat(f.fileno()).st_size
    offset = 0
    brand_ok = False
    for index in range(_MAX_BOXES):
        if offset + 8 > end:
            return False
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            return False
        size, kind = struct.unpack(">I4s", header[:8])
        header_len = 8
        if size == 1:  # 64-bit size follows the type
            if len(header) < 16:
                return False
            (size,) = struct.unpack(">Q", header[8:16])
            header_len = 16
        elif size == 0:  # the box runs to the end of the file
            size = end - offset
        if size < header_len:
            return False
        if index == 0:
            if kind != b"ftyp" or len(header) < header_len + 4:
                return False
            brand_ok = header[header_len:header_len + 4] in _MP4_BRANDS
            if not brand_ok:
                return False
        elif kind == b"moov":
            return brand_ok
        elif kind == b"mdat":
            return False
        offset += size
    return False


def is_web_ready(
    path: str | os.PathLike[str],
    *,
    timeout: float = PROBE_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    stop_event: threading.Event | None = None,
) -> bool:
    """True when browsers can play ``path`` by progressive download as it is.

    That is: an MP4 (by its ``ftyp`` brand, not its name) whose ``moov`` atom comes
    before its ``mdat``, 8-bit 4:2:0 H.264 (Baseline/Main/High) video, AAC audio or none.
    A file ffprobe cannot read is simply not web-ready (False); a missing file raises
    FileNotFoundError and missing tools :class:`FFmpegNotFoundError`.
    """
    with open(path, "rb") as f:
        if not _faststart_mp4(f):
            return False
    try:
        info = get_video_info(path, timeout=timeout, env=env, stop_event=stop_event)
    except (TranscodingFailedError, UnsupportedFormatError):
        return False
    return (
        info.video_codec == "h264"
        and info.pix_fmt == "yuv420p"
        and info.video_profile in _WEB_H264_PROFILES
        and info.audio_codec in (None, "aac")
    )


# ---------------------------------------------------------------- configuration

VIDEO_CODECS = ("libx264", "libx265")
AUDIO_CODECS = ("aac", "libopus")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
           "slower", "veryslow", "placebo")
# mov/mp4 muxer flags of ffmpeg 5.x
MOVFLAGS = frozenset(
    {"rtphint", "empty_moov", "frag_keyframe", "frag_every_frame", "separate_moof",
     "frag_custom", "isml", "faststart", "omit_tfhd_offset", "disable_chpl",
     "default_base_moof", "dash", "cmaf", "frag_discont", "delay_moov", "global_sidx",
     "skip_sidx", "write_colr", "prefer_icc", "write_gama", "use_metadata_tags",
     "skip_trailer", "negative_cts_offsets"}
)
_FRAGMENTING = frozenset({"empty_moov", "frag_keyframe", "frag_every_frame", "frag_custom",
                          "separate_moof", "isml", "dash", "cmaf", "delay_moov"})
_MOVFLAG_RE = re.compile(r"([+-]?)([a-z_]+)")
_RESOLUTION_RE = re.compile(r"(\d+)x(\d+)")
_BITRATE_RE = re.compile(r"\d+(\.\d+)?[kKM]?")
_PIX_FMT_RE = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class TranscodeConfig:
    """Encoding settings. The defaults are :data:`WEB_CONFIG`'s: web-playable H.264/AAC MP4.

    ``resolution`` ("1280x720") scales to exactly that size; without it the input's size
    is kept, cropped by at most one pixel to even dimensions (4:2:0 needs them).
    ``start_time``/``duration`` are seconds; ``threads`` 0 lets the encoder choose.
    The output container is always MP4.
    """

    vcodec: str = "libx264"
    preset: str = "fast"
    crf: float = 23
    acodec: str = "aac"
    audio_bitrate: str | int = "128k"
    movflags: str | None = "+faststart"
    resolution: str | None = None
    fps: float | None = None
    start_time: float | None = None
    duration: float | None = None
    pix_fmt: str = "yuv420p"
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_choice("vcodec", self.vcodec, VIDEO_CODECS)
        _check_choice("preset", self.preset, PRESETS)
        _check_number("crf", self.crf, low=0, high=51)
        _check_choice("acodec", self.acodec, AUDIO_CODECS)
        self._check_audio_bitrate()
        self._check_movflags()
        if self.resolution is not None:
            self.dimensions()  # validates
        if self.fps is not None:
            _check_number("fps", self.fps, low=0, high=1000, low_open=True)
        if self.start_time is not None:
            _check_number("start_time", self.start_time, low=0)
        if self.duration is not None:
            _check_number("duration", self.duration, low=0, low_open=True)
        if not isinstance(self.pix_fmt, str) or not _PIX_FMT_RE.fullmatch(self.pix_fmt):
            raise ValueError(f"pix_fmt: {self.pix_fmt!r} is not a pixel format name")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int)
            or not 0 <= self.threads <= 256
        ):
            raise ValueError(f"threads: {self.threads!r} is not a whole number in 0..256")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> TranscodeConfig:
        """Build from a YAML mapping; durations may be written ``90s``/``1m30s``.

        Unknown keys and bad values raise ValueError naming the key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping of transcode settings, got {data!r}")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(
                    f"{key}: unknown transcode setting (known: {', '.join(sorted(known))})"
                )
            if key in ("start_time", "duration") and value is not None:
                try:
                    value = parse_duration(value)
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
            values[key] = value
        return cls(**values)

    def dimensions(self) -> tuple[int, int] | None:
        """``resolution`` as ``(width, height)``."""
        if self.resolution is None:
            return None
        match = (
            _RESOLUTION_RE.fullmatch(self.resolution)
            if isinstance(self.resolution, str) else None
        )
        if not match:
            raise ValueError(f"resolution: {self.resolution!r} is not WIDTHxHEIGHT (1280x720)")
        width, height = int(match.group(1)), int(match.group(2))
        if not (2 <= width <= 16384 and 2 <= height <= 16384) or width % 2 or height % 2:
            raise ValueError(
                f"resolution: {self.resolution!r} needs even sides between 2 and 16384"
            )
        return width, height

    def _check_audio_bitrate(self) -> None:
        value = self.audio_bitrate
        ok = (
            (isinstance(value, int) and not isinstance(value, bool) and value > 0)
            or (isinstance(value, str) and bool(_BITRATE_RE.fullmatch(value))
                and float(value.rstrip("kKM")) > 0)
        )
        if not ok:
            raise ValueError(f"audio_bitrate: {value!r} is not a bitrate (e.g. 128k)")

    def _check_movflags(self) -> None:
        if self.movflags is None:
            return
        text = self.movflags
        parts = _MOVFLAG_RE.findall(text) if isinstance(text, str) else []
        if not parts or "".join(sign + name for sign, name in parts) != text:
            raise ValueError(f"movflags: {text!r} is not a flag list (e.g. +faststart)")
        unknown = [name for _, name in parts if name not in MOVFLAGS]
        if unknown:
            raise ValueError(f"movflags: unknown flag {unknown[0]!r}")
        enabled = {name for sign, name in parts if sign != "-"}
        if "faststart" in enabled and enabled & _FRAGMENTING:
            raise ValueError(
                f"movflags: {text!r} asks for faststart and a fragmented MP4 at once; "
                "choose one (+faststart for progressive download)"
            )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def _check_number(
    name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
        value
    ):
        raise ValueError(f"{name}: {value!r} is not a number")
    if value < low or (low_open and value == low) or value > high:
        bound = f"{'>' if low_open else '>='} {low:g}"
        if high != math.inf:
            bound += f" and <= {high:g}"
        raise ValueError(f"{name}: {value!r} must be {bound}")


WEB_CONFIG = TranscodeConfig(
    vcodec="libx264", preset="fast", crf=23, acodec="aac", audio_bitrate="128k",
    movflags="+faststart", pix_fmt="yuv420p",
)


# ---------------------------------------------------------------- command line


def build_command(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TranscodeConfig,
    *,
    info: VideoInfo,
    ffmpeg_bin: str = "ffmpeg",
) -> list[str]:
    """The ffmpeg command line (without progress reporting) for one transcode.

    Maps exactly the probed video stream and the first audio stream, so subtitle, data
    and cover-art streams never make a run fail.
    """
    import ffmpeg  # only a daemon that transcodes needs it (4 MiB of RSS)

    input_kwargs: dict[str, Any] = {}
    if config.start_time:
        input_kwargs["ss"] = _seconds(config.start_time)
    source = ffmpeg.input(str(input), **input_kwargs)
    video = source[str(info.video_stream)]
    size = config.dimensions()
    if size is not None:
        video = video.filter("scale", size[0], size[1])
    else:
        video = video.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2")
    if config.fps is not None:
        video = video.filter("fps", fps=f"{config.fps:g}")
    streams = [video]
    out: dict[str, Any] = {
        "format": "mp4",
        "c:v": config.vcodec,
        "preset": config.preset,
        "crf": f"{config.crf:g}",
        "pix_fmt": config.pix_fmt,
    }
    if info.audio_stream is not None:
        streams.append(source[str(info.audio_stream)])
        out["c:a"] = config.acodec
        out["b:a"] = str(config.audio_bitrate)
    if config.movflags:
        out["movflags"] = config.movflags
    if config.duration is not None:
        out["t"] = _seconds(config.duration)
    if config.threads is not None:
        out["threads"] = str(config.threads)
    stream = ffmpeg.output(*streams, str(output), **out).global_args(
        "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+warning"
    )
    return ffmpeg.compile(stream, cmd=ffmpeg_bin, overwrite_output=True)


def _seconds(value: float) -> str:
    return f"{value:.6f}"


# ---------------------------------------------------------------- running


def transcode_video(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TranscodeConfig | None = None,
    progress_callback: ProgressCallback | None = None,
    *,
    timeout: float | None = None,
    nice: int | None = None,
    env: Mapping[str, str] | None = None,
    stop_event: threading.Event | None = None,
) -> Path:
    """Transcode ``input`` into the MP4 ``output``; returns ``output`` as a Path.

    ``progress_callback`` gets fractions 0..1 in the calling thread: 0.0 first, rising
    strictly, and exactly 1.0 once, after the output is in place. ``timeout`` (seconds)
    defaults to :func:`default_timeout` of the input's duration; pass ``math.inf`` for
    none. ``nice`` (0..19) lowers ffmpeg's priority through ``nice(1)``. ``env`` is the
    child's environment (default ours), always without systemd's variables. Setting
    ``stop_event`` kills ffmpeg within about 50 ms and raises :class:`TranscodeCancelled`.

    Raises FileNotFoundError (input or output directory missing),
    :class:`UnsupportedFormatError`, :class:`FFmpegNotFoundError`,
    :class:`TranscodingFailedError` (:class:`TranscodeTimeoutError` on timeout) and
    :class:`TranscodeCancelled`. Never leaves ``<output>.partial`` behind; never touches
    the input.
    """
    config = config or TranscodeConfig()
    source = Path(input).absolute()
    target = Path(output).absolute()
    if nice is not None and (isinstance(nice, bool) or not isinstance(nice, int)
                             or not 0 <= nice <= 19):
        raise ValueError(f"nice: {nice!r} is not a whole number in 0..19")
    validate_video_format(source)
    if source == target:
        raise ValueError(f"{source}: output would overwrite the input")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"output directory {target.parent} does not exist")
    _raise_if_stopped(stop_event, source)
    env = child_env(env)
    ffmpeg_bin, _ = _tool_paths(env)

    info = get_video_info(source, env=env, stop_event=stop_event)
    expected = _expected_duration(info, config, source)
    if timeout is None:
        timeout = default_timeout(expected if expected is not None else info.duration)
    partial = partial_path(target)
    argv = build_command(source, partial, config, info=info, ffmpeg_bin=ffmpeg_bin)
    # Added here, not in build_command, which stays the plain command the bench runs.
    argv[1:1] = ["-progress", "pipe:1"]
    if nice:
        nice_bin = shutil.which("nice", path=env.get("PATH", os.defpath))
        if nice_bin is None:
            raise FFmpegNotFoundError(f"nice not found on PATH (needed for nice={nice})")
        argv[:0] = [nice_bin, "-n", str(nice)]

    report = _Progress(progress_callback, expected)
    try:
        report.update(0.0)
        run = _run(argv, env=env, source=source, report=report,
                   deadline=time.monotonic() + timeout, timeout=timeout,
                   stop_event=stop_event)
        _check_complete(run, expected, source)
        fsync_file(partial)
        os.replace(partial, target)
        fsync_dir(target.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    report.finish()
    return target


def optimize_for_web(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    progress_callback: ProgressCallback | None = None,
    *,
    timeout: float | None = None,
    nice: int | None = None,
    env: Mapping[str, str] | None = None,
    stop_event: threading.Event | None = None,
) -> Path:
    """:func:`transcode_video` with :data:`WEB_CONFIG`: H.264 (preset fast, CRF 23),
    8-bit yuv420p, even dimensions, AAC 128k, faststart MP4 (see the module docstring)."""
    return transcode_video(
        input, output, WEB_CONFIG, progress_callback,
        timeout=timeout, nice=nice, env=env, stop_event=stop_event,
    )


def _declared_duration(info: VideoInfo) -> float | None:
    """The input's duration as its header declares it.

    An AVI cut short loses its index, and ffprobe then reports the duration of what is
    left; the frame count in the AVI header still tells the length it was meant to have.
    (Not used for other containers: an MP4 edit list can trim frames the count includes.)
    """
    if info.format_name == "avi" and info.frames and info.fps:
        return max(info.duration or 0.0, info.frames / info.fps)
    return info.duration


def _expected_duration(info: VideoInfo, config: TranscodeConfig, source: Path) -> float | None:
    """The output's duration as far as the input's header tells; None when unknown."""
    declared = _declared_duration(info)
    if declared is None:
        return config.duration
    start = config.start_time or 0.0
    if start >= declared:
        raise TranscodingFailedError(
            f"{source}: start_time {start:g} s is at or past the end ({declared:g} s)",
            input=source,
        )
    available = declared - start
    return min(available, config.duration) if config.duration is not None else available


class _Progress:
    """Turns ffmpeg's ``out_time_us`` into strictly rising fractions below 1.0.

    ``progress=end`` is not waited for: 1.0 is reported once the output is in place,
    which ffmpeg's exit status and the rename tell, not its progress stream.
    """

    def __init__(self, callback: ProgressCallback | None, expected_s: float | None) -> None:
        self._callback = callback
        self._expected_us = expected_s * 1e6 if expected_s else None
        self._last = -1.0
        self.out_time_s: float | None = None

    def line(self, text: str) -> None:
        key, _, value = text.partition("=")
        if key == "out_time_us":
            try:
                out_us = int(value)
            except ValueError:  # "N/A" before the first packet
                return
            self.out_time_s = max(self.out_time_s or 0.0, out_us / 1e6)
            if self._expected_us and out_us > 0:
                fraction = out_us / self._expected_us
                if fraction < 1.0:
                    self.update(fraction)

    def update(self, fraction: float) -> None:
        if fraction > self._last:
            self._last = fraction
            if self._callback is not None:
                self._callback(fraction)

    def finish(self) -> None:
        self.update(1.0)


@dataclass(frozen=True)
class _Run:
    returncode: int
    tail: tuple[str, ...]
    first_error: str | None  # the root cause when ffmpeg fails
    last_error: str | None  # where a truncated input ran out
    out_time_s: float | None


class _Lines:
    """Splits a byte stream into lines, bounding the memory a runaway line can take."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, rest = self._buffer.split(b"\n")
        for raw in lines:
            self._sink(raw[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r"))
        self._buffer = bytearray(rest[:_MAX_LINE])

    def close(self) -> None:
        if self._buffer:
            self._sink(self._buffer.decode("utf-8", "replace").rstrip("\r"))
            self._buffer.clear()


def _run(
    argv: list[str],
    *,
    env: Mapping[str, str],
    source: Path,
    report: _Progress,
    deadline: float,
    timeout: float,
    stop_event: threading.Event | None,
) -> _Run:
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    errors: dict[str, str] = {}

    def log_line(text: str) -> None:
        if text.strip():
            tail.append(text)
            if _is_error(text):
                errors.setdefault("first", text)
                errors["last"] = text

    def check() -> None:
        _raise_if_stopped(stop_event, source)
        if time.monotonic() > deadline:
            raise TranscodeTimeoutError(
                f"{source}: ffmpeg did not finish within {timeout:g} s",
                input=source, stderr_tail=tuple(tail),
            )

    try:
        # Own process group: a Ctrl-C in the daemon's terminal must not reach ffmpeg;
        # the daemon stops it through stop_event. No preexec_fn: the daemon is threaded.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, close_fds=True, process_group=0,
        )
    except FileNotFoundError as exc:
        raise FFmpegNotFoundError(f"cannot start {argv[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    readers = {proc.stdout.fileno(): _Lines(report.line),
               proc.stderr.fileno(): _Lines(log_line)}
    selector = selectors.DefaultSelector()
    try:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            check()
            for key, _ in selector.select(timeout=_POLL_S):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    readers[key.fd].feed(chunk)
                else:
                    selector.unregister(key.fileobj)
                    readers[key.fd].close()
        while proc.poll() is None:  # pipes closed: ffmpeg is exiting
            check()
            time.sleep(0.01)
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return _Run(proc.returncode, tuple(tail), errors.get("first"), errors.get("last"),
                report.out_time_s)


def _check_complete(run: _Run, expected: float | None, source: Path) -> None:
    if run.returncode != 0:
        reason = _clean(run.first_error) if run.first_error else None
        if run.returncode < 0:
            what = f"ffmpeg was killed by signal {-run.returncode}"
        else:
            what = reason or _relevant_line(run.tail) or f"ffmpeg exited with {run.returncode}"
        raise TranscodingFailedError(
            f"{source}: {what}", input=source, stderr_tail=run.tail,
            returncode=run.returncode,
        )
    if expected is None or run.out_time_s is None:
        return
    if run.out_time_s < expected - max(0.5, 0.02 * expected):
        detail = f"; ffmpeg: {_clean(run.last_error)}" if run.last_error else ""
        raise TranscodingFailedError(
            f"{source}: output ends at {run.out_time_s:.2f} s of the {expected:.2f} s the "
            f"input declares (truncated or corrupt input){detail}",
            input=source, stderr_tail=run.tail, returncode=0,
        )


def _raise_if_stopped(stop_event: threading.Event | None, source: Path) -> None:
    if stop_event is not None and stop_event.is_set():
        raise TranscodeCancelled(f"{source}: transcode cancelled")


_LEVEL_RE = re.compile(r"\[(error|fatal|panic)\]")
_CONTEXT_RE = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\] )?\[(warning|error|fatal|panic|info)\] ")


def _is_error(line: str) -> bool:
    return bool(_LEVEL_RE.search(line))


def _clean(line: str) -> str:
    """Drop ffmpeg's ``[demuxer @ 0x...] [error]`` prefix from a log line."""
    return _CONTEXT_RE.sub("", line).strip()


def _relevant_line(tail: tuple[str, ...]) -> str | None:
    errors = [line for line in tail if _is_error(line)]
    chosen = errors[0] if errors else (tail[-1] if tail else None)
    return _clean(chosen) if chosen else None


def _tail_of(stderr: bytes | None) -> tuple[str, ...]:
    text = (stderr or b"").decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return tuple(lines[-STDERR_TAIL_LINES:])
