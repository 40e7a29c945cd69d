"""Stopping the embedded receiver: requests in flight finish, new ones are turned away."""

from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path

from syncd.server import EmbeddedReceiver, ReceiverSettings
from tests.support.receiver import (
    TIMEOUT,
    TOKEN,
    RawPart,
    complete,
    get,
    md5_hex,
    put_part,
    refuses_connections,
    running,
    stored_files,
    wait_until,
)

PART = 4 << 20


def test_a_part_in_flight_when_the_receiver_stops_is_received_whole(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, part = os.urandom(1000), os.urandom(PART)
    total = len(first) + len(part)
    server = EmbeddedReceiver(ReceiverSettings(root=root, port=0, token=TOKEN), stop_grace=60).start()
    stopper = threading.Thread(target=server.stop, name="test-stopper")
    raw: RawPart | None = None
    idle: http.client.HTTPConnection | None = None
    try:
        port = server.port
        assert port is not None
        doc = put_part(server.url, first, start=0, total=total).json()
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read()  # a kept-alive connection with nothing in flight
        raw = RawPart(port, f"/chunked_upload/{doc['id']}/", part, start=len(first), total=total)
        raw.send(PART // 2)
        data_file = root / ".incoming" / f"{doc['id']}.part"
        wait_until(lambda: data_file.stat().st_size > len(first), what="the part is being written")
        stopper.start()
        wait_until(lambda: refuses_connections(port), what="the receiver stops listening")
        idle.request("GET", "/healthz")
        refused = idle.getresponse()
        assert refused.status == 503
        assert refused.getheader("Retry-After") == "5"
        assert stopper.is_alive()  # still waiting for the part
        status, answer = raw.finish()
        assert (status, answer["offset"]) == (200, total)
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    finally:
        if raw is not None:
            raw.close()
        if idle is not None:
            idle.close()
        if not stopper.is_alive():
            server.stop()
    with running(root) as again:
        url = f"{again.url}{doc['id']}/"
        assert get(url).json()["offset"] == total
        assert complete(url, md5_hex(first + part)).status_code == 200
    assert stored_files(root) == {"f.bin": first + part}


def test_a_part_that_outlasts_the_grace_is_cut_off_and_resumable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    part = os.urandom(PART)
    server = EmbeddedReceiver(ReceiverSettings(root=root, port=0, token=TOKEN), stop_grace=0.2).start()
    try:
        assert server.port is not None
        doc = put_part(server.url, b"a" * 1000, start=0, total=1000 + PART).json()
        raw = RawPart(server.port, f"/chunked_upload/{doc['id']}/", part, start=1000, total=1000 + PART)
        try:
            raw.send(PART // 2)  # and never the rest
            data_file = root / ".incoming" / f"{doc['id']}.part"
            wait_until(lambda: data_file.stat().st_size > 1000, what="the part is being written")
            server.stop()
        finally:
            raw.close()
    finally:
        server.stop()
    with running(root) as again:
        url = f"{again.url}{doc['id']}/"
        assert get(url).json()["offset"] == 1000
        assert put_part(url, part, start=1000, total=1000 + PART).status_code == 200
