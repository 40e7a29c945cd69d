"""The settings a SIGHUP applies in place outside the daemon's watch and upload machinery:
``log.level``, ``log.format`` and ``metrics.listen``; and which keys a reload changed.

``receiver.*`` changes only at a restart (the daemon says so when it reloads), and a new
``journal`` is refused; every other key is applied by the daemon itself.
"""

from __future__ import annotations

import logging
from typing import Any

from syncd.config import Config
from syncd.logs import register_secret, setup_logging
from syncd.metrics import Metrics, MetricsServer, start_metrics_server

log = logging.getLogger("syncd")

RESTART_KEYS = ("receiver",)
"""Top-level keys whose changes take effect only when syncd is restarted."""


def changed_keys(old: Config, new: Config) -> list[str]:
    """Key paths whose values differ (``log.level``, ``watches[0].settle.quiet``); never values,
    so that a changed token can be named without being shown."""
    return _diff(old.model_dump(mode="python"), new.model_dump(mode="python"), "")


_ABSENT: Any = object()


def _diff(a: Any, b: Any, loc: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a) + [k for k in b if k not in a]
        return [path for k in keys for path in _diff(a.get(k, _ABSENT), b.get(k, _ABSENT),
                                                     f"{loc}.{k}" if loc else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [path for i, (x, y) in enumerate(zip(a, b)) for path in _diff(x, y, f"{loc}[{i}]")]
    return [] if a == b else [loc]


def needs_restart(keys: list[str]) -> list[str]:
    return [k for k in keys if k.split(".")[0].split("[")[0] in RESTART_KEYS]


class LiveSettings:
    """Owns the log setup and the metrics endpoint of ``syncd run``.

    ``metrics`` keeps counting whether or not it is served, so moving or re-enabling the
    endpoint on reload loses no counts. A ``--log-level`` given on the command line wins over
    ``log.level`` in every config, reloaded or not."""

    def __init__(self, metrics: Metrics, *, level_override: str | None = None):
        self.metrics = metrics
        self.level_override = level_override
        self.server: MetricsServer | None = None

    def serve_metrics(self, config: Config) -> None:
        """Start the endpoint at ``metrics.listen`` (if set); OSError when it cannot listen."""
        if config.metrics.listen is not None:
            self.server = start_metrics_server(self.metrics, *config.metrics.listen)
            log.info("metrics on %s", self.server.url)

    def apply(self, old: Config, new: Config) -> None:
        """After a reload: bring logging and the endpoint in line with ``new``; logs what it did."""
        for source in [*new.targets.values(), new.receiver]:
            if source is not None and (token := source.resolve_token()):
                register_secret(token)  # a token new in this config is never logged either
        if new.log != old.log:
            setup_logging(level=self.level_override or new.log.level, fmt=new.log.format)
            if self.level_override and new.log.level != old.log.level:
                log.info("reload: log.level is %s in the config, but --log-level %s wins", new.log.level,
                         self.level_override)
            else:
                log.info("reload: logging at %s, format %s", self.level_override or new.log.level,
                         new.log.format)
        if new.metrics.listen != old.metrics.listen:
            self._move_metrics(old, new)

    def _move_metrics(self, old: Config, new: Config) -> None:
        if self.server is not None:
            self.server.stop()  # first: the new address may be the same port on another host
            self.server = None
        if new.metrics.listen is None:
            log.info("reload: metrics endpoint stopped")
            return
        try:
            self.serve_metrics(new)
            return
        except OSError as exc:
            host, port = new.metrics.listen
            problem = f"reload: metrics.listen: cannot listen on {host}:{port} ({exc.strerror or exc})"
        try:
            self.serve_metrics(old)
        except OSError:
            log.error("%s; metrics are not served until the next reload or restart", problem)
        else:
            log.error("%s; still serving the old address", problem)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
