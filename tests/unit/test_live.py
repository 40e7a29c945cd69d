"""Which keys a reload changed, and which of them wait for a restart (syncd/live.py)."""

from __future__ import annotations

from syncd.config import build_config
from syncd.live import changed_keys, needs_restart


def _config(tmp_path, **extra):
    (tmp_path / "drop").mkdir(exist_ok=True)
    data = {"journal": "state/j.db", "staging_dir": "state/staging",
            "targets": {"main": {"url": "http://127.0.0.1:9/", "token": "old-secret"}},
            "watches": [{"name": "drop", "path": "drop", "target": "main"}], **extra}
    return build_config(data, base=tmp_path, name="config.yaml", check=False)


def test_changed_keys_are_paths_without_values(tmp_path):
    old = _config(tmp_path)
    assert changed_keys(old, _config(tmp_path)) == []
    new = _config(tmp_path, log={"level": "debug"}, metrics={"listen": "127.0.0.1:9464"},
                  targets={"main": {"url": "http://127.0.0.1:9/", "token": "new-secret"}},
                  watches=[{"name": "drop", "path": "drop", "target": "main", "settle": {"quiet": "1s"}}])
    changed = changed_keys(old, new)
    assert changed == ["targets.main.token", "watches[0].settle.quiet", "log.level", "metrics.listen"]
    assert needs_restart(changed) == []


def test_receiver_changes_need_a_restart(tmp_path):
    old = _config(tmp_path)
    new = _config(tmp_path, receiver={"root": "received", "allow_anonymous": True})
    assert needs_restart(changed_keys(old, new)) == ["receiver"]
    newer = _config(tmp_path, receiver={"root": "received", "allow_anonymous": True, "max_size": "1MiB"})
    assert needs_restart(changed_keys(new, newer)) == ["receiver.max_size"]
    added = _config(tmp_path, watches=[{"name": "drop", "path": "drop", "target": "main"},
                                       {"name": "b", "path": "drop", "target": "main"}])
    assert changed_keys(old, added) == ["watches"]
