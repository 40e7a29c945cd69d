"""The metrics endpoint, scraped over loopback and read with prometheus_client's parser."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from syncd.metrics import Metrics, MetricsServer, start_metrics_server


class FakeJournal:
    """What the daemon's journal answers; changed between scrapes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"done": 4, "waiting": 1, "failed": 0}
        self.depth = 7
        self.age: float | None = 12.5
        self.broken = False

    def state_counts(self) -> Mapping[str, int]:
        if self.broken:
            raise RuntimeError("database is locked")
        return dict(self.counts)

    def queue_depth(self) -> int:
        return self.depth

    def oldest_pending_age(self) -> float | None:
        return self.age


@pytest.fixture
def journal() -> FakeJournal:
    return FakeJournal()


@pytest.fixture
def metrics(journal: FakeJournal) -> Metrics:
    return Metrics(journal.state_counts, journal.queue_depth, journal.oldest_pending_age)


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    with start_metrics_server(metrics, "127.0.0.1", 0) as running:
        yield running


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: MetricsServer) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels), and HELP text by family."""
    response = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    helps: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        helps[family.name] = family.documentation
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, helps


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_recorded_events_are_served(metrics: Metrics, server: MetricsServer):
    assert server.port != 0
    metrics.files_uploaded()
    metrics.files_uploaded(3)
    metrics.bytes_uploaded(1000)
    metrics.bytes_uploaded(24)
    metrics.observe_upload_seconds(0.3)
    metrics.observe_upload_seconds(7.0)
    metrics.retry("server")
    metrics.retry("server")
    metrics.retry("timeout")
    metrics.observe_settle_seconds(3.0)
    metrics.observe_transcode_seconds(42.0)
    metrics.last_success(1_700_000_000.5)

    samples, _ = scrape(server)
    assert value(samples, "syncd_files_uploaded_total") == 4
    assert value(samples, "syncd_uploaded_bytes_total") == 1024
    assert value(samples, "syncd_upload_duration_seconds_count") == 2
    assert value(samples, "syncd_upload_duration_seconds_sum") == pytest.approx(7.3)
    assert value(samples, "syncd_upload_duration_seconds_bucket", le="0.5") == 1
    assert value(samples, "syncd_upload_duration_seconds_bucket", le="10.0") == 2
    assert value(samples, "syncd_retries_total", reason="server") == 2
    assert value(samples, "syncd_retries_total", reason="timeout") == 1
    assert value(samples, "syncd_retries_total", reason="throttled") == 0  # present before any
    assert value(samples, "syncd_settle_wait_seconds_sum") == 3.0
    assert value(samples, "syncd_settle_wait_seconds_bucket", le="2.0") == 0
    assert value(samples, "syncd_settle_wait_seconds_bucket", le="5.0") == 1
    assert value(samples, "syncd_transcode_duration_seconds_count") == 1
    assert value(samples, "syncd_transcode_duration_seconds_sum") == 42.0
    assert value(samples, "syncd_last_success_timestamp_seconds") == 1_700_000_000.5


def test_journal_values_are_read_at_scrape_time(journal: FakeJournal, server: MetricsServer):
    samples, _ = scrape(server)
    assert value(samples, "syncd_files", state="done") == 4
    assert value(samples, "syncd_files", state="waiting") == 1
    assert value(samples, "syncd_files", state="failed") == 0
    assert value(samples, "syncd_queue_depth") == 7
    assert value(samples, "syncd_oldest_pending_age_seconds") == 12.5

    journal.counts = {"done": 9, "uploading": 2}
    journal.depth = 0
    journal.age = None
    samples, _ = scrape(server)
    states = {dict(labels)["state"] for name, labels in samples if name == "syncd_files"}
    assert states == {"done", "uploading"}
    assert value(samples, "syncd_files", state="done") == 9
    assert value(samples, "syncd_files", state="uploading") == 2
    assert value(samples, "syncd_queue_depth") == 0
    assert value(samples, "syncd_oldest_pending_age_seconds") == 0


def test_a_failing_callback_drops_only_its_metric(
    journal: FakeJournal, server: MetricsServer, caplog: pytest.LogCaptureFixture
):
    journal.broken = True
    samples, _ = scrape(server)
    assert not [name for name, _ in samples if name == "syncd_files"]
    assert value(samples, "syncd_queue_depth") == 7
    assert "database is locked" in caplog.text


def test_every_family_is_prefixed_and_documented(server: MetricsServer):
    _, helps = scrape(server)
    assert {
        "syncd_files_uploaded",
        "syncd_uploaded_bytes",
        "syncd_upload_duration_seconds",
        "syncd_retries",
        "syncd_settle_wait_seconds",
        "syncd_transcode_duration_seconds",
        "syncd_last_success_timestamp_seconds",
        "syncd_files",
        "syncd_queue_depth",
        "syncd_oldest_pending_age_seconds",
    } <= helps.keys()
    for name, text in helps.items():
        assert name.startswith("syncd_")
        assert text.strip(), f"{name} has no HELP"


def test_registries_are_private(journal: FakeJournal):
    first = Metrics(journal.state_counts, journal.queue_depth, journal.oldest_pending_age)
    second = Metrics(journal.state_counts, journal.queue_depth, journal.oldest_pending_age)
    first.files_uploaded()
    assert first.registry.get_sample_value("syncd_files_uploaded_total") == 1
    assert second.registry.get_sample_value("syncd_files_uploaded_total") == 0
    assert REGISTRY.get_sample_value("syncd_files_uploaded_total") is None


def test_stop_closes_the_port_and_joins_the_thread(metrics: Metrics):
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    scrape(server)
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    # and no thread is left: the autouse guard in tests/conftest.py would fail this test
