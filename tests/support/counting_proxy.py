"""A TCP proxy on 127.0.0.1 that counts the bytes a client sends to a server."""

from __future__ import annotations

import socket
import threading
import time


class CountingProxy:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.sent = 0
        self.timeline: list[tuple[float, int]] = []
        """(time.monotonic(), bytes sent so far) after each block the client sent"""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, name="counting-proxy", daemon=True)

    def url_for(self, url: str) -> str:
        return url.replace(f":{self.upstream[1]}/", f":{self.port}/")

    def reset(self) -> int:
        with self._lock:
            sent, self.sent = self.sent, 0
            self.timeline.clear()
        return sent

    def start(self) -> CountingProxy:
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for src, dst, counted in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True,
                                     name="counting-proxy-pump")
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        self.timeline.append((time.monotonic(), self.sent))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
        self._acceptor.join(5)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
