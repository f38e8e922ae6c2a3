"""A TCP proxy the tests control, for faults of the network path to a real server: forward,
go silent (the connections open then stay open and pass nothing ever again, as through a
half-open peer; new ones pass once forwarding resumes), or refuse (listener closed, live
connections reset: the server is down)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

from devcluster.ports import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "forward"
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._held: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: refusing
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stopped.is_set():
                if self.mode == "silent" or a in self._held:
                    time.sleep(0.2)  # hold everything: both sides wait on a silent peer
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.2)
                if self.mode == "silent" or a in self._held:
                    continue  # went silent while waiting: what arrived is held too
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket refuse() closed
            return
        finally:
            for sock in (a, b):
                sock.close()

    def silent(self) -> None:
        with self._lock:
            self._held.update(self._connections)
        self.mode = "silent"

    def forward(self) -> None:
        if self._listener is None:
            self._listen()
        self.mode = "forward"

    def refuse(self) -> None:
        """The server is gone: new connections refused, live ones reset."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._connections:
                try:  # RST, not FIN: as a crashed server's kernel answers
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                except OSError:
                    pass
            self._connections.clear()

    def close(self) -> None:
        self._stopped.set()
        self.refuse()
