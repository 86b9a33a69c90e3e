"""Proxies on 127.0.0.1 that play faults of the AWS endpoint behind them (moto server).

``FaultProxy`` (TCP) plays an outage; ``ApiProxy`` (HTTP) counts every API call by action and
answers chosen calls with throttling, a server error, or a lost response (see below).

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

import http.client
import http.server
import json
import select
import socket
import struct
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from batch_celery_local.motoserver import HOST

_TICK = 0.2  # how often blocked threads look at the stop flags


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = (HOST, target_port)
        self.port = 0  # chosen at the first start, kept across outages
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._down = False

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

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


# ---------------------------------------------------------------------------------------------
# An HTTP proxy that sees each AWS API call: counts them by action and can answer chosen ones
# with an error instead of forwarding them (moto never throttles nor fails on its own).

THROTTLE = "throttle"  # HTTP 429 TooManyRequestsException (what Batch answers over its rate)
SERVER_ERROR = "server_error"  # HTTP 500, not forwarded
LOST_RESPONSE = "lost_response"  # forwarded (the call takes effect), then answered with HTTP 500

_ERRORS = {
    THROTTLE: (429, "TooManyRequestsException", "Too Many Requests"),
    SERVER_ERROR: (500, "ServerException", "Internal failure (injected)"),
    LOST_RESPONSE: (500, "ServerException", "Internal failure after the call took effect (injected)"),
}


def api_action(path: str, headers, body: bytes) -> str:
    """The AWS action of a request: X-Amz-Target (JSON protocol), Action= (query), else the REST path."""
    target = headers.get("X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    query = parse_qs(urlsplit(path).query)
    if "Action" in query:
        return query["Action"][0]
    if body and b"Action=" in body:
        form = parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            return form["Action"][0]
    return urlsplit(path).path


def api_params(headers, body: bytes) -> dict:
    """The parameters of a request: the JSON document (JSON protocol) or the form, one value per key."""
    if not body:
        return {}
    if headers.get("X-Amz-Target"):
        try:
            params = json.loads(body)
        except ValueError:
            return {}
        return params if isinstance(params, dict) else {}
    return {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


class _LocalServer:
    """A server on 127.0.0.1 in a thread of this process: ``start()`` it (or use ``with``), ``stop()``."""

    _server: "http.server.ThreadingHTTPServer | None" = None

    def start(self) -> "_LocalServer":
        raise NotImplementedError

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ApiProxy(_LocalServer):
    """HTTP proxy on 127.0.0.1 in front of moto: ``counts`` of forwarded and answered calls by
    action, and ``decide(action) -> None | THROTTLE | SERVER_ERROR | LOST_RESPONSE`` per call, or
    ``decide_call(action, params)`` to choose by the call's parameters (e.g. its QueueUrl).
    Each HTTP attempt is one call: an SDK that retries a failed call is asked again.

        with ApiProxy(moto.endpoint) as proxy:
            ...clients use proxy.endpoint...; proxy.counts["ReceiveMessage"]
    """

    def __init__(self, target: str, decide=None, decide_call: Callable[[str, dict], str | None] | None = None) -> None:
        self.target = target
        self.decide = decide or (lambda action: None)
        self.decide_call = decide_call
        self.counts: Counter = Counter()
        self.faults: Counter = Counter()
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.faults.clear()

    def start(self) -> "ApiProxy":
        proxy = self
        target = urlsplit(self.target)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs and pycurl use it
            # The reply goes out as headers, then body: with Nagle's algorithm on, the body waits
            # for the client's delayed ACK (~40 ms), which added ~44 ms to every proxied call.
            disable_nagle_algorithm = True

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = api_action(self.path, self.headers, body)
                if proxy.decide_call is not None:
                    fault = proxy.decide_call(action, api_params(self.headers, body))
                else:
                    fault = proxy.decide(action)
                with proxy._lock:
                    proxy.counts[action] += 1
                    if fault:
                        proxy.faults[(action, fault)] += 1
                if fault in (None, LOST_RESPONSE):
                    try:
                        status, reply, reply_headers = self._forward(body)
                    except (OSError, http.client.HTTPException):
                        # The endpoint behind went away (e.g. at shutdown): say so, as a gateway would.
                        status, reply, reply_headers = 502, b"", []
                if fault:
                    status, code, message = _ERRORS[fault]
                    reply = json.dumps({"__type": code, "message": message}).encode()
                    reply_headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", code)]
                self.send_response(status)
                for key, value in reply_headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _forward(self, body: bytes):
                connection = getattr(self, "_upstream", None)
                for attempt in (1, 2):
                    if connection is None:
                        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                        self._upstream = connection
                    try:
                        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                        connection.request(self.command, self.path, body=body, headers=headers)
                        response = connection.getresponse()
                        return response.status, response.read(), response.getheaders()
                    except (OSError, http.client.HTTPException):
                        connection.close()
                        connection = self._upstream = None
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            do_POST = do_GET = do_PUT = do_DELETE = _relay

            def log_message(self, *args) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                # A client that goes away mid-call (a killed worker's long poll) is part of the play.
                if not isinstance(sys.exc_info()[1], OSError):
                    super().handle_error(request, client_address)

        self._server = Server((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-proxy", daemon=True)
        self._thread.start()
        return self



# ---------------------------------------------------------------------------------------------
# A container credential endpoint (what the ECS agent serves a Batch job's role from) that can fail.


class CredentialServer(_LocalServer):
    """Serves AWS credentials the way a container's credential endpoint does; point a process at it
    with ``env()`` (it replaces the static keys). ``outage()`` answers every request with HTTP 500.

    The credentials it hands out expire in ``expires_in`` seconds; below botocore's mandatory
    refresh window (10 minutes) every signed request fetches them again, so an outage here makes
    every AWS call of the process fail with a BotoCoreError, as a failed refresh does near expiry.
    """

    def __init__(self, *, expires_in: int = 300) -> None:
        self.expires_in = expires_in
        self.requests = 0
        self._down = threading.Event()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/credentials"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with the static keys removed and this endpoint as the credential source."""
        env = {k: v for k, v in base.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = self.url
        return env

    @contextmanager
    def outage(self) -> Iterator["CredentialServer"]:
        self._down.set()
        try:
            yield self
        finally:
            self._down.clear()

    def start(self) -> "CredentialServer":
        import datetime

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server._down.is_set():
                    status, body = 500, b'{"message": "credential endpoint unavailable (injected)"}'
                else:
                    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=server.expires_in)
                    status, body = 200, json.dumps({
                        "AccessKeyId": "testing", "SecretAccessKey": "testing", "Token": "testing",
                        "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server((HOST, 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="credential-server", daemon=True).start()
        return self



class FailDeleteAfterSend:
    """``decide_call`` for ApiProxy: the first DeleteMessage after a SendMessage to a queue whose URL
    ends with ``/<queue_name>`` fails with HTTP 500, and so does every later DeleteMessage of the same
    receipt handle (the SDK's retries, the caller's own) for ``seconds`` from the first. Other calls
    pass. ``failed`` counts the failed attempts, ``deleted_at`` is when one of that handle passed.
    """

    def __init__(self, queue_name: str, seconds: float) -> None:
        self.queue_name = queue_name
        self.seconds = seconds
        self.failed = 0
        self.deleted_at: float | None = None
        self._armed = False
        self._handle: str | None = None
        self._until = 0.0
        self._lock = threading.Lock()

    def __call__(self, action: str, params: dict) -> str | None:
        import time

        with self._lock:
            if action == "SendMessage" and str(params.get("QueueUrl", "")).endswith("/" + self.queue_name):
                self._armed = True
            elif action == "DeleteMessage" and self._armed:
                handle = params.get("ReceiptHandle")
                if self._handle is None:
                    self._handle, self._until = handle, time.monotonic() + self.seconds
                if handle == self._handle:
                    if time.monotonic() < self._until:
                        self.failed += 1
                        return SERVER_ERROR
                    if self.deleted_at is None:
                        self.deleted_at = time.monotonic()
        return None
