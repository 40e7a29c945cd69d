"""``syncd check-config --probe``: reach each target once and say in one line what works.

A protocol offers this with a ``probe()`` method on its backend (S3: HEAD the bucket, then
put and delete a tiny object under the prefix); targets whose protocol has none are named
as not probed."""

from __future__ import annotations

from syncd.config import Config


def probe_targets(config: Config) -> tuple[list[str], bool]:
    """One line per target, and whether every probe that ran succeeded."""
    from syncd.upload.base import UploadError
    from syncd.upload.registry import build_backend

    lines, ok = [], True
    for name, settings in config.targets.items():
        try:
            backend = build_backend(name, settings)
        except Exception as exc:  # a backend that cannot even be built is this target's failure
            lines.append(f"targets.{name}: FAILED: {' '.join(str(exc).split())}")
            ok = False
            continue
        try:
            probe = getattr(backend, "probe", None)
            if probe is None:
                lines.append(f"targets.{name}: not probed (no probe for protocol {settings.protocol})")
                continue
            lines.append(f"targets.{name}: ok: {probe()}")
        except (UploadError, OSError) as exc:
            lines.append(f"targets.{name}: FAILED: {' '.join(str(exc).split())}")
            ok = False
        finally:
            backend.close()
    return lines, ok
