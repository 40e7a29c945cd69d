"""Pause and resume: the journal's controls table, the commands, and what status and
metrics show of pauses and bandwidth limits."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from syncd.bandwidth import Limits
from syncd.cli import main
from syncd.controls import Paused
from syncd.journal import _MIGRATIONS, SCHEMA_VERSION, Journal
from syncd.metrics import Metrics, start_metrics_server

CONFIG = """
journal: state/journal.db
staging_dir: state/staging
bandwidth: [{at: "00:00", limit: 8MiB/s}]
targets:
  main: {url: "http://127.0.0.1:9/chunked_upload/", bandwidth: 0}
  spare: {url: "http://127.0.0.1:9/chunked_upload/"}
watches:
  - {name: cams, path: cams, target: main}
  - {name: scans, path: scans, target: spare}
"""


@pytest.fixture
def config_path(tmp_path):
    for folder in ("cams", "scans", "state"):
        (tmp_path / folder).mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    Journal(tmp_path / "state" / "journal.db").close()  # as the daemon's first start leaves it
    return path


def journal_of(config_path) -> Journal:
    return Journal(config_path.parent / "state" / "journal.db")


# --- the journal ----------------------------------------------------------------------------

def test_pauses_are_rows_that_outlive_the_connection(tmp_path):
    journal = Journal(tmp_path / "j.db")
    assert journal.pause("target", "main") is True
    assert journal.pause("target", "main") is False
    assert journal.pause("watch", "cams") is True
    journal.close()
    journal = Journal(tmp_path / "j.db")
    assert Paused.read(journal) == Paused(targets=frozenset({"main"}), watches=frozenset({"cams"}))
    assert journal.resume("watch", "cams") == 1
    assert journal.resume("watch", "cams") == 0
    journal.pause("all")
    assert Paused.read(journal).everything
    assert journal.resume() == 2
    assert not Paused.read(journal)
    journal.close()


def test_a_journal_of_the_previous_schema_gains_the_controls_table(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for n, script in enumerate(_MIGRATIONS[:4]):  # schema 5 added it
        db.executescript(f"{script}; PRAGMA user_version = {n + 1};")
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'controls'").fetchone() == (0,)
    db.close()
    journal = Journal(path)
    assert journal.pause("all") is True
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("SELECT scope, name FROM controls").fetchall() == [("all", "")]
    db.close()


def test_a_write_from_another_connection_changes_data_version(tmp_path):
    daemon_side = Journal(tmp_path / "j.db")
    before = daemon_side.data_version()
    other = Journal(tmp_path / "j.db")
    other.pause("watch", "cams")
    other.close()
    assert daemon_side.data_version() != before
    assert Paused.read(daemon_side).watches == {"cams"}
    daemon_side.close()


def test_paused_holds_by_watch_target_or_everything():
    paused = Paused(targets=frozenset({"main"}), watches=frozenset({"scans"}))
    assert paused.holds(watch="cams", target="main")
    assert paused.holds(watch="scans", target="spare")
    assert not paused.holds(watch="other", target="spare")
    assert Paused(everything=True).holds(watch=None, target=None)
    assert paused.describe() == "paused: target main, watch scans"
    assert Paused().describe() == "" and not Paused()


# --- the commands ---------------------------------------------------------------------------

def test_pause_and_resume_commands(config_path, capsys):
    assert main(["pause", "-c", str(config_path), "--target", "main"]) == 0
    assert "paused target main" in capsys.readouterr().out
    assert main(["pause", "-c", str(config_path), "--watch", "scans"]) == 0
    assert main(["pause", "-c", str(config_path), "--watch", "scans"]) == 0
    assert "watch scans was already paused" in capsys.readouterr().out
    journal = journal_of(config_path)
    assert Paused.read(journal) == Paused(targets=frozenset({"main"}), watches=frozenset({"scans"}))
    journal.close()
    assert main(["resume", "-c", str(config_path), "--target", "main"]) == 0
    out = capsys.readouterr().out
    assert "resumed target main" in out and "still paused: watch scans" in out
    assert main(["resume", "-c", str(config_path)]) == 0
    assert "resumed everything (1 pause(s) lifted)" in capsys.readouterr().out
    journal = journal_of(config_path)
    assert not Paused.read(journal)
    journal.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "nope"], "syncd pause: --target: 'nope' is not a target in config.yaml (known: main, spare)"),
    (["--watch", "nope"], "syncd pause: --watch: 'nope' is not a watch in config.yaml (known: cams, scans)"),
])
def test_an_unknown_name_is_a_usage_error(config_path, capsys, args, message):
    assert main(["pause", "-c", str(config_path), *args]) == 2
    assert capsys.readouterr().err.strip() == message


def test_target_and_watch_exclude_each_other(config_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pause", "-c", str(config_path), "--target", "main", "--watch", "cams"])
    assert exit_.value.code == 2


def test_pause_before_the_first_run_is_refused(tmp_path, capsys):
    for folder in ("cams", "scans"):
        (tmp_path / folder).mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    assert main(["pause", "-c", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("journal.db: no journal here (has the daemon run yet?)") and "\n" not in err
    assert not (tmp_path / "state" / "journal.db").exists()


# --- status and metrics ---------------------------------------------------------------------

def test_status_shows_pauses_and_limits(config_path, capsys):
    assert main(["pause", "-c", str(config_path), "--watch", "cams"]) == 0
    capsys.readouterr()
    assert main(["status", "-c", str(config_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paused"] == {"everything": False, "targets": [], "watches": ["cams"]}
    assert data["bandwidth"] == {"overall": 8 * 1024**2, "targets": {"main": 0}}
    assert main(["status", "-c", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert "paused: watch cams (syncd resume [--target T | --watch W] to go on)" in text
    assert "bandwidth: overall 8 MiB/s, main paused" in text


def test_status_without_pauses_or_limits_says_nothing_of_them(config_path, capsys):
    config_path.write_text(config_path.read_text().replace('bandwidth: [{at: "00:00", limit: 8MiB/s}]\n', "")
                           .replace(", bandwidth: 0}", "}"))
    assert main(["status", "-c", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert "paused" not in text and "bandwidth" not in text
    assert main(["status", "-c", str(config_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bandwidth"] == {"overall": None, "targets": {}}
    assert data["paused"] == {"everything": False, "targets": [], "watches": []}


class Controls:
    def __init__(self) -> None:
        self.now_limits = Limits(None, {"main": 0})
        self.now_paused = Paused(watches=frozenset({"cams"}))

    def limits(self) -> Limits:
        return self.now_limits

    def pauses(self) -> Paused:
        return self.now_paused

    def names(self):
        return ["main", "spare"], ["cams", "scans"]


def test_metrics_export_limits_and_pauses():
    controls = Controls()
    metrics = Metrics(lambda: {}, lambda: 0, lambda: None, controls=controls)

    def scrape() -> dict:
        text = requests.get(server.url, timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name in ("syncd_bandwidth_limit_bytes_per_second", "syncd_paused")}

    with start_metrics_server(metrics, "127.0.0.1", 0) as server:
        first = scrape()
        controls.now_limits = Limits(5 * 1024**2, {"main": 1024})
        controls.now_paused = Paused(everything=True)
        second = scrape()
    limit = "syncd_bandwidth_limit_bytes_per_second"
    assert first[(limit, (("name", ""), ("scope", "overall")))] == float("inf")
    assert first[(limit, (("name", "main"), ("scope", "target")))] == 0
    assert first[(limit, (("name", "spare"), ("scope", "target")))] == float("inf")
    assert first[("syncd_paused", (("name", "cams"), ("scope", "watch")))] == 1
    assert first[("syncd_paused", (("name", "scans"), ("scope", "watch")))] == 0
    assert first[("syncd_paused", (("name", ""), ("scope", "all")))] == 0
    assert second[(limit, (("name", ""), ("scope", "overall")))] == 5 * 1024**2
    assert second[(limit, (("name", "main"), ("scope", "target")))] == 1024
    assert second[("syncd_paused", (("name", ""), ("scope", "all")))] == 1


def test_held_watches_give_their_turn_to_the_others(tmp_path):
    """A paused high-priority watch does not take the free workers from the ones below it."""
    from syncd.dispatch import Dispatcher, WatchQueue
    from syncd.journal import Fingerprint

    journal = Journal(tmp_path / "j.db")
    dispatcher = Dispatcher([WatchQueue("urgent", priority=10), WatchQueue("bulk")])
    for n, watch in enumerate(["urgent", "urgent", "bulk", "bulk"]):
        journal.mark_settled(watch, f"f{n}", Fingerprint(1, n, 10, 0))
    picked = dispatcher.pick(journal, free=2, running=set(), held=["urgent"])
    assert [(r.watch, r.relpath) for r in picked] == [("bulk", "f2"), ("bulk", "f3")]
    picked = dispatcher.pick(journal, free=2, running=set())
    assert [r.watch for r in picked] == ["urgent", "urgent"]
    journal.close()
