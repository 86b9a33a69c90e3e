"""A TCP proxy on 127.0.0.1 that can play an outage of the endpoint behind it.

Put it in front of moto server and point the clients at ``proxy.endpoint``. ``go_down()`` stops
listening (new connections are refused) and resets every open connection, as an unreachable
endpoint would; ``come_back()`` listens again on the same port. Plain threads, all daemonic, and
``stop()`` (or leaving the ``with`` block) always ends them.

    with FaultProxy(moto.port) as proxy:
        ...clients use proxy.endpoint...
        with proxy.outage():
            time.sleep(30)
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from contextlib import contextmanager
from typing import Iterator

HOST = "127.0.0.1"
_TICK = 0.2  # how often blocked threads look at the stop flags


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = HOST, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.connections_accepted = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._down = False

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._down

    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._close_listener()
        self._cut_open_connections()

    def go_down(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self._down = True
        self._close_listener()
        self._cut_open_connections()

    def come_back(self) -> None:
        """Accept connections again, on the same port."""
        with self._lock:
            self._down = False
        self._listen()

    @contextmanager
    def outage(self) -> Iterator["FaultProxy"]:
        self.go_down()
        try:
            yield self
        finally:
            if not self._stopped.is_set():
                self.come_back()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"fault-proxy-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set() and self._listener is listener:
            try:
                readable, _, _ = select.select([listener], [], [], _TICK)
                if not readable:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return  # the listener was closed: an outage or stop
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._down:
                    _reset(client)
                    _reset(upstream)
                    continue
                self.connections_accepted += 1
                self._open.update((client, upstream))
            threading.Thread(
                target=self._pump, args=(client, upstream), name="fault-proxy-pump", daemon=True
            ).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(list(peers), [], [], _TICK)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return  # cut by an outage, or the peer went away
        finally:
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)
            client.close()
            upstream.close()

    def _cut_open_connections(self) -> None:
        with self._lock:
            open_sockets, self._open = self._open, set()
        for sock in open_sockets:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a vanished host's network would, rather than a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
