"""HTTP over real loopback sockets, for the tests that run the server rather than call the app.

Raw HTTP/1.1: `build` writes a request as bytes, `split_response` and
`read_response` parse an answer by hand (status line, headers, Content-Length
body), so the tests see framing exactly as it was sent. What every answer must
hold differs per module (each has its own secret and rules), so callers check
it themselves on what these return.

Also: `serve_in_thread` runs `server.make_server()` in this process,
`LoggedProcess` runs a server as a child process and reads its log, and
`http_request` asks one question through http.client, as an ordinary client
would.

Every socket has a timeout and every wait a deadline of TIMEOUT.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Optional

import server

TIMEOUT = 5.0  # on every socket, and the longest any single wait may take


# --------------------------------------------------------------------------
# Raw requests and answers


def build(
    method: str, target: str, headers=(), body: bytes = b"", version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"{method} {target} {version}".encode("latin-1")]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclasses.dataclass
class Response:
    status: int
    headers: list  # (lower-case name, value), in order
    body: bytes
    raw: bytes

    def values(self, name: str) -> list:
        return [value for key, value in self.headers if key == name]

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def error(self) -> tuple:
        """(status, errorMessage), for one-line assertions."""
        body = self.json()
        assert list(body) == ["errorMessage"], body
        return self.status, body["errorMessage"]


def split_response(data: bytes, *, head: bool = False) -> Optional[tuple]:
    """(Response, bytes past it) once `data` holds a whole answer, else None.

    `head`: the answer to a HEAD request, whose Content-Length announces a body
    that is not sent.
    """
    if b"\r\n\r\n" not in data:
        assert len(data) < 64 * 1024, "answer head too long"
        return None
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    version, status, _reason = lines[0].split(b" ", 2)
    assert version == b"HTTP/1.1", lines[0]
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon and re.fullmatch(rb"[A-Za-z0-9-]+", name), line
        headers.append((name.decode("ascii").lower(), value.strip(b" ").decode("latin-1")))
    response = Response(int(status), headers, b"", b"")
    lengths = response.values("content-length")
    if response.status == 204:
        assert lengths == []
        length = 0
    else:
        assert len(lengths) == 1, headers
        length = 0 if head else int(lengths[0])
    if len(rest) < length:
        return None
    response.body, rest = rest[:length], rest[length:]
    response.raw = head_bytes + b"\r\n\r\n" + response.body
    return response, rest


def recv_before(sock: socket.socket, deadline: float) -> bytes:
    """One recv that must return by `deadline` (time.monotonic()); b"" is the server's FIN."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AssertionError("no answer in time")
    sock.settimeout(remaining)
    return sock.recv(65536)


def read_response(sock: socket.socket, pending: bytes = b"", *, head: bool = False) -> tuple:
    """(Response, bytes received past it). Fails on EOF or a timeout before a whole answer."""
    deadline = time.monotonic() + TIMEOUT
    data = pending
    while True:
        parsed = split_response(data, head=head)
        if parsed is not None:
            return parsed
        chunk = recv_before(sock, deadline)
        assert chunk, f"connection closed before a whole answer; got {data[:200]!r}"
        data += chunk


def read_eof(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Whatever arrives before the server closes; a reset fails the test (ConnectionResetError)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        chunk = recv_before(sock, deadline)
        if not chunk:
            return data
        data += chunk


def expect_closed(sock: socket.socket, rest: bytes) -> None:
    """Nothing more arrives after the answer, then a clean close (FIN, not a reset)."""
    assert rest + read_eof(sock) == b""


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --------------------------------------------------------------------------
# The runner in this process


@dataclasses.dataclass
class Running:
    server: object  # what server.make_server() returns
    thread: threading.Thread
    address: tuple  # (host, port)

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=TIMEOUT)

    def open_connections(self) -> int:
        with self.server.connections_lock:
            return len(self.server.connections)

    def all_busy(self) -> bool:
        """Whether every connection has a request under way (none is idle, so none makes room)."""
        with self.server.connections_lock:
            return all(conn.idle_since is None for conn in self.server.connections.values())

    def idle_connections(self) -> int:
        """How many connections wait for a request (kept alive, or silent since they connected)."""
        with self.server.connections_lock:
            return sum(conn.idle_since is not None for conn in self.server.connections.values())

    def drain_and_join(self, grace: float) -> None:
        self.server.drain(grace=grace)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever did not return after drain()"


def serve_in_thread(app, settings: server.Settings, running: type = Running) -> Running:
    """server.make_server() serving `app` from a daemon thread (its log lines go to the logger server.log).

    `running`: the Running class to return, for modules that add their own ways to talk to it.
    """
    srv = server.make_server(app, settings)
    thread = threading.Thread(
        target=srv.serve_forever, args=(0.05,), name="serve_forever", daemon=True
    )
    thread.start()
    return running(srv, thread, tuple(srv.server_address[:2]))


# --------------------------------------------------------------------------
# A server in a child process

# server.py's logfmt line once it listens (SERVER_HOST=127.0.0.1, SERVER_PORT=0):
# "time=... level=INFO msg=listening host=127.0.0.1 port=NNNN".
LISTENING = re.compile(r"level=INFO msg=listening host=127\.0\.0\.1 port=([0-9]+)$", re.MULTILINE)


class LoggedProcess:
    """A child process whose log a thread reads as it comes, so a full pipe never stalls it.

    The log is its stderr, or with `stderr_to_stdout` both streams merged (for
    hosts that log to either). stdout is otherwise discarded.
    """

    def __init__(self, argv: list, *, cwd, env: dict, stderr_to_stdout: bool = False) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stderr_to_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
        )
        self.stream = self.proc.stdout if stderr_to_stdout else self.proc.stderr
        self.lines: list = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.append(line.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def port(self, pattern: re.Pattern = LISTENING) -> int:
        """The port from the log's listening line; fails if the process exits or TIMEOUT passes first."""
        wait_for(lambda: pattern.search(self.output) is not None or self.proc.poll() is not None)
        match = pattern.search(self.output)
        assert match, self.output
        return int(match[1])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum`; the exit code, once the process and its log reader are done."""
        self.proc.send_signal(signum)
        code = self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.stream.close()


def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict = None
) -> tuple:
    """One request to 127.0.0.1:`port` through http.client: (status, headers by lower-case name, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, data
    finally:
        connection.close()
