"""Prometheus metrics on a private registry, served over HTTP.

Event counts and timings are recorded by the daemon as they happen. Values that the
journal already knows (files by state, queue depth, oldest pending file) are read
through callbacks at scrape time, so the endpoint can never disagree with the
journal. The callbacks run on the metrics server's thread: they must be safe to
call from there (e.g. use their own SQLite connection).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncd.upload.base import RETRY_REASONS

if TYPE_CHECKING:
    from syncd.bandwidth import Limits
    from syncd.controls import Paused

log = logging.getLogger(__name__)

# RETRY_REASONS (every protocol's TransientError labels) are created at zero so that rate()
# and alerts see them before the first retry.

_UPLOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_SETTLE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_TRANSCODE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class _JournalCollector(Collector):
    def __init__(
        self,
        state_counts: Callable[[], Mapping[str, int]],
        queue_depth: Callable[[], int],
        oldest_pending_age: Callable[[], float | None],
    ) -> None:
        self._state_counts = state_counts
        self._queue_depth = queue_depth
        self._oldest_pending_age = oldest_pending_age

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check names at registration without calling the journal.
        yield GaugeMetricFamily("syncd_files", _FILES_HELP, labels=["state"])
        yield GaugeMetricFamily("syncd_queue_depth", _QUEUE_HELP)
        yield GaugeMetricFamily("syncd_oldest_pending_age_seconds", _AGE_HELP)

    def collect(self) -> Iterator[Metric]:
        # A failing callback drops its metric from this scrape instead of failing it all.
        counts = _read(self._state_counts)
        if counts is not _FAILED:
            files = GaugeMetricFamily("syncd_files", _FILES_HELP, labels=["state"])
            for state, n in sorted(counts.items()):
                files.add_metric([state], n)
            yield files
        depth = _read(self._queue_depth)
        if depth is not _FAILED:
            yield GaugeMetricFamily("syncd_queue_depth", _QUEUE_HELP, value=depth)
        age = _read(self._oldest_pending_age)
        if age is not _FAILED:
            value = 0.0 if age is None else age
            yield GaugeMetricFamily("syncd_oldest_pending_age_seconds", _AGE_HELP, value=value)


_FAILED: Any = object()


def _read(callback: Callable[[], Any]) -> Any:
    try:
        return callback()
    except Exception:
        name = getattr(callback, "__name__", repr(callback))
        log.warning("metrics: reading %s failed", name, exc_info=True)
        return _FAILED


class OperatorControls(Protocol):
    """What the daemon reports of its bandwidth limits and pauses (syncd.daemon)."""

    def limits(self) -> Limits: ...
    def pauses(self) -> Paused: ...
    def names(self) -> tuple[Sequence[str], Sequence[str]]:
        """(targets, watches) of the running config"""


class _ControlsCollector(Collector):
    """Limits in force and pauses, one series per target and watch so alerts see zeros too."""

    def __init__(self, controls: OperatorControls) -> None:
        self._controls = controls

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("syncd_bandwidth_limit_bytes_per_second", _LIMIT_HELP, labels=["scope", "name"])
        yield GaugeMetricFamily("syncd_paused", _PAUSED_HELP, labels=["scope", "name"])

    def collect(self) -> Iterator[Metric]:
        limits, paused, names = (_read(self._controls.limits), _read(self._controls.pauses),
                                 _read(self._controls.names))
        if _FAILED in (limits, paused, names):
            return
        targets, watches = names

        def rate(value: int | None) -> float:
            return math.inf if value is None else float(value)

        family = GaugeMetricFamily("syncd_bandwidth_limit_bytes_per_second", _LIMIT_HELP, labels=["scope", "name"])
        family.add_metric(["overall", ""], rate(limits.overall))
        for target in targets:
            family.add_metric(["target", target], rate(limits.targets.get(target)))
        yield family
        family = GaugeMetricFamily("syncd_paused", _PAUSED_HELP, labels=["scope", "name"])
        family.add_metric(["all", ""], float(paused.everything))
        for target in targets:
            family.add_metric(["target", target], float(target in paused.targets))
        for watch in watches:
            family.add_metric(["watch", watch], float(watch in paused.watches))
        yield family


_LIMIT_HELP = "Bandwidth limit in force (+Inf: unlimited, 0: held by the timetable), overall and per target."
_PAUSED_HELP = "1 while `syncd pause` holds everything (scope all), a target or a watch."
_FILES_HELP = "Files in the journal, by state."
_QUEUE_HELP = "Files waiting to be settled, transcoded or uploaded."
_AGE_HELP = "Age of the oldest pending file in the journal (0 when none is pending)."


class Metrics:
    """All of syncd's metrics, on a registry of their own (``self.registry``)."""

    def __init__(
        self,
        state_counts: Callable[[], Mapping[str, int]],
        queue_depth: Callable[[], int],
        oldest_pending_age: Callable[[], float | None],
        *,
        controls: OperatorControls | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._files_uploaded = Counter(
            "syncd_files_uploaded", "Files uploaded and completed on the server.", registry=r
        )
        self._bytes_uploaded = Counter(
            "syncd_uploaded_bytes", "Bytes acknowledged by the server.", registry=r
        )
        self._upload_seconds = Histogram(
            "syncd_upload_duration_seconds",
            "Time from opening an upload session to completing it, per file.",
            buckets=_UPLOAD_BUCKETS,
            registry=r,
        )
        self._retries = Counter(
            "syncd_retries", "Requests retried, by reason.", labelnames=["reason"], registry=r
        )
        for reason in RETRY_REASONS:
            self._retries.labels(reason=reason)
        self._settle_seconds = Histogram(
            "syncd_settle_wait_seconds",
            "Time from a file's first sighting until it was settled.",
            buckets=_SETTLE_BUCKETS,
            registry=r,
        )
        self._transcode_seconds = Histogram(
            "syncd_transcode_duration_seconds",
            "Time spent transcoding one video.",
            buckets=_TRANSCODE_BUCKETS,
            registry=r,
        )
        self._last_success = Gauge(
            "syncd_last_success_timestamp_seconds",
            "Unix time of the last file completed on the server (0 before the first).",
            registry=r,
        )
        r.register(_JournalCollector(state_counts, queue_depth, oldest_pending_age))
        if controls is not None:
            r.register(_ControlsCollector(controls))

    def files_uploaded(self, n: int = 1) -> None:
        self._files_uploaded.inc(n)

    def bytes_uploaded(self, n: int) -> None:
        self._bytes_uploaded.inc(n)

    def observe_upload_seconds(self, seconds: float) -> None:
        self._upload_seconds.observe(seconds)

    def retry(self, reason: str) -> None:
        """Counts one retry; keep ``reason`` to a small fixed set (see RETRY_REASONS)."""
        self._retries.labels(reason=reason).inc()

    def observe_settle_seconds(self, seconds: float) -> None:
        self._settle_seconds.observe(seconds)

    def observe_transcode_seconds(self, seconds: float) -> None:
        self._transcode_seconds.observe(seconds)

    def last_success(self, ts: float) -> None:
        self._last_success.set(ts)


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # a stalled client cannot hold the single serving thread for long

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """The HTTP endpoint (every path answers with the metrics); ``stop()`` joins it."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server_class = _Server6 if ":" in host else WSGIServer
        self._httpd = make_server(
            host,
            port,
            make_wsgi_app(metrics.registry),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self.host = host
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="syncd-metrics",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stops serving, closes the socket and joins the thread; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serves ``metrics`` on ``host:port`` (0 picks a free port: see ``.port``)."""
    return MetricsServer(metrics, host, port)
