"""The HTTP runner in server.py, over real loopback sockets.

Requests are written as raw bytes and answers parsed by hand (status line,
headers, Content-Length body), so framing is what is tested: keep-alive,
pipelining, strict heads, deadlines, saturation, the drain, the access log and
`python3 server.py` itself. Every socket has a timeout and every loop a bound.

Each answer read goes through `read_response`, which also checks what must
hold for any answer: exactly one Date header, one Content-Length, an error
body of exactly {"errorMessage": ...}, and no secret or traceback anywhere.
Every test ends with the `guard` fixture's checks on the log: no secret, no
JWT, no traceback, and no exception escaping a server thread.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

import livekit_auth
import server
import support_http
from helpers import webhook_authorization
from support_http import (
    TIMEOUT,
    LoggedProcess,
    Response,
    Running,
    build,
    expect_closed,
    read_eof,
    recv_before,
    serve_in_thread,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = "testkey"
SECRET = "a-test-secret-of-at-least-32-chars!!"
NOW = 1_750_000_000  # the app's clock: tokens are minted and verified at this instant
# Three base64url segments of 10+ characters: a JWT, or near enough to be one.
JWT_RE = re.compile(r"[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")
ACCESS_LINE = re.compile(r"127\.0\.0\.1 (\S+) (\S+) ([0-9]{3}) [0-9]+\.[0-9]ms")


# --------------------------------------------------------------------------
# Building requests, reading answers (support_http builds and parses; the checks are this module's)


HOST = ("Host", "test")
JSON = ("Content-Type", "application/json")
HEALTHZ = build("GET", "/healthz", [HOST])


def token_body(participant: str = "alice", room: str = "room-1") -> bytes:
    return json.dumps({"roomName": room, "participantName": participant}).encode("ascii")


def token_request(participant: str = "alice", room: str = "room-1", extra=()) -> bytes:
    body = token_body(participant, room)
    headers = [HOST, ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    return build("POST", "/token", headers, body)


def read_response(sock: socket.socket, pending: bytes = b"", *, head: bool = False) -> tuple:
    """(Response, bytes received past it), checked by check_answer. Fails on EOF before a whole answer."""
    response, rest = support_http.read_response(sock, pending, head=head)
    check_answer(response)
    return response, rest


def check_answer(response: Response) -> None:
    """What must hold for every answer the runner sends."""
    dates = response.values("date")
    assert len(dates) == 1, response.headers
    sent = email.utils.parsedate_to_datetime(dates[0])
    assert abs(sent.timestamp() - time.time()) < 10
    assert b"Traceback" not in response.raw
    assert SECRET.encode() not in response.raw
    for name in {name for name, _ in response.headers}:
        if name in ("content-length", "content-type", "date", "connection", "retry-after"):
            assert len(response.values(name)) == 1, name
    if response.status >= 400 and response.body:
        body = response.json()
        assert list(body) == ["errorMessage"] and type(body["errorMessage"]) is str


def identity_of(response: Response) -> str:
    token = response.json()["token"]
    verifier = livekit_auth.TokenVerifier(KEY, SECRET, clock=lambda: NOW)
    claims = verifier.verify(token)
    assert claims.video.room == "room-1" and claims.video.room_join
    return claims.identity


def webhook_request(extra=()) -> bytes:
    """A webhook as LiveKit sends it: the JWT's sha256 claim is the body's hash."""
    body = json.dumps({"event": "room_started", "id": "EV_1", "room": {"name": "room-1"}}).encode()
    token = webhook_authorization(KEY, SECRET, body, now=NOW)
    headers = [
        HOST,
        ("Content-Type", "application/webhook+json"),
        ("Authorization", token),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    return build("POST", "/webhook", headers, body)


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def start_server():
    """start(**setting overrides, on_event=...) -> Running; drained and joined on teardown."""
    started: list = []

    def start(*, on_event: Optional[Callable] = None, **overrides) -> Running:
        fields = dict(
            api_key=KEY,
            api_secret=SECRET,
            host="127.0.0.1",
            port=0,
            max_connections=4,
            idle_timeout=1.0,
            request_timeout=1.0,
        )
        fields.update(overrides)
        settings = server.Settings(**fields)
        running = serve_in_thread(server.make_app(settings, on_event=on_event, clock=lambda: NOW), settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.drain_and_join(grace=2)


@pytest.fixture
def live(start_server) -> Running:
    return start_server()


@pytest.fixture
def thread_crashes(monkeypatch) -> list:
    """Exceptions that escaped a thread (they would print a traceback to stderr)."""
    crashes: list = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args))
    return crashes


@pytest.fixture(autouse=True)
def guard(caplog, thread_crashes):
    """Capture the server's log for the test; afterwards no secret, JWT or traceback in it."""
    caplog.set_level(logging.INFO, logger="livekit_token_server")
    yield caplog
    # Torn down after start_server, so the server threads are done. caplog.text
    # holds only the current phase (teardown): read the records of all three.
    records = [record for when in ("setup", "call", "teardown") for record in caplog.get_records(when)]
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    text = "\n".join(formatter.format(record) for record in records)
    assert SECRET not in text
    assert "Traceback" not in text
    assert not JWT_RE.search(text), JWT_RE.search(text)
    assert all(record.exc_info is None for record in records)
    assert thread_crashes == [], [(c.exc_type, c.exc_value) for c in thread_crashes]


def access_lines(caplog) -> list:
    """(method, path, status) of each access-log line so far."""
    lines = []
    for record in caplog.records:
        if record.name == "livekit_token_server":
            match = ACCESS_LINE.fullmatch(record.getMessage())
            if match:
                lines.append((match[1], match[2], int(match[3])))
    return lines


class SpyApp:
    """The real app, recording each environ it is called with."""

    def __init__(self, app, fail_on: str = "") -> None:
        self.app = app
        self.fail_on = fail_on
        self.environs: list = []

    def __call__(self, environ, start_response):
        self.environs.append(dict(environ))
        if self.fail_on and environ["PATH_INFO"] == self.fail_on:
            raise RuntimeError("boom with " + SECRET)
        return self.app(environ, start_response)

    def __getattr__(self, name):
        return getattr(self.app, name)  # error_response, used by the runner


# --------------------------------------------------------------------------
# Normal requests, keep-alive, pipelining


def test_token_request_is_answered_with_a_jwt(live):
    with live.connect() as sock:
        sock.sendall(token_request("alice"))
        response, rest = read_response(sock)
    assert response.status == 200
    assert response.values("content-type") == ["application/json"]
    assert list(response.json()) == ["token"]
    assert identity_of(response) == "alice"
    assert response.values("connection") == []
    assert rest == b""


def test_keep_alive_serves_three_requests_on_one_connection(live):
    with live.connect() as sock:
        rest = b""
        for i in range(3):
            sock.sendall(token_request(f"user-{i}"))
            response, rest = read_response(sock, rest)
            assert response.status == 200
            assert response.values("connection") == []
            assert identity_of(response) == f"user-{i}"
        assert rest == b""
        assert live.open_connections() == 1


def test_http_client_keeps_one_connection_alive(live):
    conn = http.client.HTTPConnection(*live.address, timeout=TIMEOUT)
    try:
        sockets = []
        for i in range(3):
            conn.request("POST", "/token", body=token_body(f"user-{i}"), headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            body = reply.read()
            assert reply.status == 200 and not reply.will_close
            assert identity_of(Response(200, [], body, body)) == f"user-{i}"
            sockets.append(conn.sock)
        # HEAD and the 204 preflight carry no body; the connection stays in step.
        conn.request("HEAD", "/healthz")
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read() == b"" and int(reply.getheader("Content-Length")) > 0
        conn.request("OPTIONS", "/token")
        reply = conn.getresponse()
        assert reply.status == 204 and reply.read() == b"" and reply.getheader("Content-Length") is None
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read()) == {"status": "ok"}
        sockets.append(conn.sock)
        assert all(s is sockets[0] for s in sockets)
        assert len(reply.headers.get_all("Date")) == 1
    finally:
        conn.close()


def test_http10_without_keep_alive_is_closed_after_the_answer(live):
    with live.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        response, rest = read_response(sock)
        assert response.status == 200 and response.json() == {"status": "ok"}
        assert response.values("connection") == ["close"]
        expect_closed(sock, rest)


def test_http10_with_keep_alive_stays_open(live):
    request = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with live.connect() as sock:
        rest = b""
        for _ in range(2):
            sock.sendall(request)
            response, rest = read_response(sock, rest)
            assert response.status == 200 and response.values("connection") == ["keep-alive"]


def test_connection_close_request_is_closed_after_the_answer(live):
    with live.connect() as sock:
        sock.sendall(token_request(extra=[("Connection", "close")]))
        response, rest = read_response(sock)
        assert response.status == 200 and identity_of(response) == "alice"
        assert response.values("connection") == ["close"]
        expect_closed(sock, rest)


def test_pipelined_requests_are_answered_in_order(live):
    with live.connect() as sock:
        last = build("GET", "/healthz", [HOST, ("Connection", "close")])
        sock.sendall(token_request("first") + token_request("second") + last)
        first, rest = read_response(sock)
        second, rest = read_response(sock, rest)
        third, rest = read_response(sock, rest)
        assert (first.status, second.status, third.status) == (200, 200, 200)
        assert identity_of(first) == "first" and identity_of(second) == "second"
        assert third.json() == {"status": "ok"} and third.values("connection") == ["close"]
        expect_closed(sock, rest)


def test_each_answer_is_one_send(live, monkeypatch):
    # Proof, not just evidence: count the server's sends on the accepted socket.
    port = live.address[1]
    sends: list = []

    def spy(real):
        def wrapper(self, data, *args):
            try:
                ours = self.family == socket.AF_INET and self.getsockname()[1] == port
            except OSError:
                ours = False
            if ours:
                sends.append(bytes(data))
            return real(self, data, *args)

        return wrapper

    monkeypatch.setattr(socket.socket, "sendall", spy(socket.socket.sendall))
    monkeypatch.setattr(socket.socket, "send", spy(socket.socket.send))
    with live.connect() as sock:
        for request in (HEALTHZ, token_request()):
            sock.sendall(request)
            # Evidence on the wire: the whole answer is in the first recv.
            first = recv_before(sock, time.monotonic() + TIMEOUT)
            response, rest = read_response(sock, first)
            assert rest == b"" and response.raw == first
            assert response.status == 200
            assert sends[-1] == first
    assert len(sends) == 2


def test_accepted_socket_has_tcp_nodelay(live):
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        read_response(sock)
        with live.server.lock:
            accepted = list(live.server.connections)
        assert len(accepted) == 1
        assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_whitespace_around_content_length_is_allowed(live):
    # The server strips optional white space around field values (RFC 9110 §5.5).
    body = token_body("ows")
    request = build("POST", "/token", [HOST, JSON, ("Content-Length", f" \t{len(body)} ")], body)
    with live.connect() as sock:
        sock.sendall(request)
        response, _ = read_response(sock)
    assert response.status == 200 and identity_of(response) == "ows"


def test_a_hundred_header_lines_are_allowed(live):
    headers = [HOST] + [(f"X-H{i}", "v") for i in range(99)]
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz", headers))
        response, _ = read_response(sock)
    assert response.status == 200


# --------------------------------------------------------------------------
# Malformed requests: an exact status and errorMessage, then a clean close

MALFORMED_LINE = "Malformed request line"
MALFORMED_FIELD = "Malformed header field"
CONTROL = "Header field value has a control character"
REPEATED = "Repeated header field"
BAD_LENGTH = "Content-Length must be a decimal number"
CHUNKED = "Transfer-Encoding is not supported; send Content-Length"
VERSION = "Only HTTP/1.1 and HTTP/1.0 are supported"
NOT_A_PATH = "Request target must be a path"
TE_CHUNKED = ("Transfer-Encoding", "chunked")
CHUNKED_BODY = b"2\r\n{}\r\n0\r\n\r\n"


def _post(*headers: tuple, body: bytes = b"{}") -> bytes:
    return build("POST", "/token", [HOST, ("Content-Type", "application/json"), *headers], body)


def _get(*headers: tuple) -> bytes:
    return build("GET", "/healthz", [HOST, *headers])


MALFORMED = [
    pytest.param(b"HELLO\r\n\r\n", 400, MALFORMED_LINE, id="one-word"),
    pytest.param(b"GET /token\r\n\r\n", 400, MALFORMED_LINE, id="no-version"),
    pytest.param(b"GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="double-space"),
    pytest.param(b"GET /healthz http/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="lower-case-version"),
    pytest.param(b"GET /healthz HTTP/1.1 x\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="four-parts"),
    pytest.param(b"G(T /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="method-not-a-token"),
    pytest.param(b"GET /token HTTP/2.0\r\n\r\n", 505, VERSION, id="http2"),
    pytest.param(b"GET /token HTTP/2.0\r\nHost: t\r\n\r\n", 505, VERSION, id="http2-host"),
    pytest.param(b"GET /token HTTP/0.9\r\n\r\n", 505, VERSION, id="http09"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, "Host header is required", id="no-host"),
    pytest.param(b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, NOT_A_PATH, id="absolute-form"),
    pytest.param(b"GET healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, NOT_A_PATH, id="relative-target"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, NOT_A_PATH, id="asterisk-not-options"),
    pytest.param(b"GET /healthz HTTP/1.1\nHost: t\n\n", 400, "Request lines must end with CRLF", id="bare-lf"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400, MALFORMED_FIELD, id="no-colon"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  b\r\n\r\n", 400, MALFORMED_FIELD, id="obs-fold"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\r\n\tY: b\r\n\r\n", 400, MALFORMED_FIELD, id="obs-fold-colon"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n", 400, MALFORMED_FIELD, id="space-before-colon"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n Host: t\r\n\r\n", 400, MALFORMED_FIELD, id="space-before-name"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\n: v\r\n\r\n", 400, MALFORMED_FIELD, id="empty-name"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX(A): v\r\n\r\n", 400, MALFORMED_FIELD, id="name-not-a-token"),
    pytest.param(_get(("X-A", "a\x01b")), 400, CONTROL, id="ctl-soh"),
    pytest.param(_get(("X-A", "a\x00b")), 400, CONTROL, id="ctl-nul"),
    pytest.param(_get(("X-A", "a\x7fb")), 400, CONTROL, id="ctl-del"),
    pytest.param(_get(("X-A", "a\rb")), 400, CONTROL, id="ctl-bare-cr"),
    pytest.param(_get(("X-A", "a\nContent-Length: 5")), 400, CONTROL, id="ctl-bare-lf-smuggle"),
    pytest.param(_get(("Host", "t")), 400, REPEATED, id="repeated-host"),
    pytest.param(_post(("Content-Length", "2"), ("Content-Length", "2")), 400, REPEATED, id="cl-repeated-same"),
    pytest.param(_post(("Content-Length", "2"), ("Content-Length", "3")), 400, REPEATED, id="cl-repeated-different"),
    pytest.param(_post(("Content-Length", "2"), ("content-length", "2")), 400, REPEATED, id="cl-repeated-case"),
    pytest.param(_post(("Content-Length", "2, 2")), 400, BAD_LENGTH, id="cl-list"),
    pytest.param(_post(("Content-Length", "+2")), 400, BAD_LENGTH, id="cl-plus"),
    pytest.param(_post(("Content-Length", "-1")), 400, BAD_LENGTH, id="cl-minus"),
    pytest.param(_post(("Content-Length", "1_0"), body=b"{}" * 5), 400, BAD_LENGTH, id="cl-underscore"),
    pytest.param(_post(("Content-Length", "0x2")), 400, BAD_LENGTH, id="cl-hex"),
    pytest.param(_post(("Content-Length", "2.0")), 400, BAD_LENGTH, id="cl-decimal-point"),
    pytest.param(_post(("Content-Length", "")), 400, BAD_LENGTH, id="cl-empty"),
    pytest.param(_post(("Content-Length", "1 1")), 400, BAD_LENGTH, id="cl-inner-space"),
    pytest.param(_post(("Content-Length", "\xb2")), 400, BAD_LENGTH, id="cl-superscript-two"),
    pytest.param(_post(("Content-Length", "0" * 13)), 400, BAD_LENGTH, id="cl-13-digits"),
    pytest.param(_post(TE_CHUNKED, body=CHUNKED_BODY), 411, CHUNKED, id="te-chunked"),
    pytest.param(
        _post(TE_CHUNKED, ("Content-Length", "2"), body=CHUNKED_BODY), 411, CHUNKED, id="te-chunked-and-cl"
    ),
    pytest.param(
        _post(("Content-Length", "2"), TE_CHUNKED, body=CHUNKED_BODY), 411, CHUNKED, id="cl-and-te-chunked"
    ),
    pytest.param(_post(("Transfer-Encoding", "identity"), ("Content-Length", "2")), 411, CHUNKED, id="te-identity"),
    pytest.param(_get(*[(f"X-H{i}", "v") for i in range(100)]), 431, "Too many header fields", id="101-header-lines"),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (17 * 1024),
        431,
        "Request head is too large",
        id="head-over-16k-unfinished",
    ),
]


@pytest.mark.parametrize("raw, status, message", MALFORMED)
def test_malformed_request_is_answered_then_closed(live, raw, status, message):
    with live.connect() as sock:
        sock.sendall(raw)
        response, rest = read_response(sock)
        assert (response.status, response.json()) == (status, {"errorMessage": message})
        assert response.values("connection") == ["close"]
        assert response.values("content-type") == ["application/json"]
        expect_closed(sock, rest)


def test_head_over_16k_in_one_send_is_refused(live):
    # 16.5 KiB: were the kernel to split it, the split would have to land in the
    # last half KiB for the current check to see it, so the result is stable.
    raw = build("GET", "/healthz", [HOST, ("X-Big", "a" * (16 * 1024 + 512))])
    with live.connect() as sock:
        sock.sendall(raw)
        response, rest = read_response(sock)
        assert (response.status, response.json()) == (431, {"errorMessage": "Request head is too large"})


# --------------------------------------------------------------------------
# Header names with "_": never merged into their "-" twins


def test_underscore_header_does_not_pass_for_its_dash_twin(live, monkeypatch):
    monkeypatch.setenv("LIVEKIT_API_SECRET", "process-env-secret-must-not-reach-environ")
    spy = SpyApp(live.server.app)
    live.server.app = spy
    with live.connect() as sock:
        rest = b""
        for headers in (
            [("X_Auth", "evil"), ("X-Auth", "good")],
            [("X-Auth", "good"), ("X_Auth", "evil")],
            [("X_Auth", "evil")],
        ):
            sock.sendall(build("GET", "/healthz", [HOST, *headers]))
            response, rest = read_response(sock, rest)
            assert response.status == 200
    assert [environ.get("HTTP_X_AUTH") for environ in spy.environs] == ["good", "good", None]
    for environ in spy.environs:
        # Built from the request alone: nothing from os.environ, secrets least of all.
        assert "PATH" not in environ and "LIVEKIT_API_SECRET" not in environ
        assert not any("process-env-secret" in str(value) for value in environ.values())
        assert not any("evil" in str(value) for value in environ.values())


def test_underscore_content_length_is_ignored(live):
    with live.connect() as sock:
        # A correct Content-Length wins; Content_Length is neither a duplicate nor used.
        sock.sendall(token_request("bob", extra=[("Content_Length", "5")]))
        response, rest = read_response(sock)
        assert response.status == 200 and identity_of(response) == "bob"
        # Content_Length alone frames nothing: the app sees no length at all.
        sock.sendall(build("POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content_Length", "2")]))
        response, rest = read_response(sock, rest)
        assert (response.status, response.json()) == (411, {"errorMessage": "Content-Length is required"})
        # Nor does Content_Type stand in for Content-Type.
        body = token_body()
        headers = [HOST, ("Content_Type", "application/json"), ("Content-Length", str(len(body)))]
        sock.sendall(build("POST", "/token", headers, body))
        response, rest = read_response(sock, rest)
        assert (response.status, response.json()) == (415, {"errorMessage": "Content-Type must be application/json"})


# --------------------------------------------------------------------------
# Bodies: short, stalled, oversized


def test_body_shorter_than_content_length_times_out_with_408(live):
    head = build("POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content-Length", "100")])
    with live.connect() as sock:
        started = time.monotonic()
        sock.sendall(head + b'{"roomName"')
        response, rest = read_response(sock)
        elapsed = time.monotonic() - started
        assert (response.status, response.json()) == (408, {"errorMessage": "Request timed out"})
        assert response.values("connection") == ["close"]
        assert 0.8 <= elapsed <= 2.0, elapsed
        expect_closed(sock, rest)


def test_oversized_body_gets_413_while_the_client_still_sends(live):
    body = b"x" * (200 * 1024)
    head = build("POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    errors: list = []
    with live.connect() as sock:
        sock.sendall(head)

        def send_body():
            try:
                sock.sendall(body)
            except OSError as err:
                errors.append(err)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response, rest = read_response(sock)
        sender.join(TIMEOUT)
        assert not sender.is_alive()
        assert errors == []  # the server swallowed the body rather than resetting
        assert response.status == 413
        assert response.json() == {"errorMessage": f"Request body must be at most {server.MAX_TOKEN_BODY_BYTES} bytes"}
        assert response.values("connection") == ["close"]
        sock.shutdown(socket.SHUT_WR)
        expect_closed(sock, rest)


def test_small_unread_body_is_skipped_never_parsed_as_a_request(live):
    # The app never reads a body sent to /healthz: the runner skips it, and
    # must not take the request hidden in it for the client's next one.
    smuggled = build("GET", "/nope", [HOST])
    request = build("GET", "/healthz", [HOST, ("Content-Length", str(len(smuggled)))], smuggled)
    with live.connect() as sock:
        sock.sendall(request + HEALTHZ)
        first, rest = read_response(sock)
        second, rest = read_response(sock, rest)
    assert (first.status, first.values("connection")) == (200, [])
    assert (second.status, second.json()) == (200, {"status": "ok"})


def test_large_unread_body_ends_keep_alive(live):
    body = b"x" * (server.MAX_SKIP_BYTES + 1)
    request = build("GET", "/healthz", [HOST, ("Content-Length", str(len(body)))], body)
    with live.connect() as sock:
        sock.sendall(request)
        response, rest = read_response(sock)
        assert response.status == 200 and response.values("connection") == ["close"]
        expect_closed(sock, rest)


def test_expect_100_continue_gets_an_interim_answer(live):
    body = token_body("expect")
    head = build(
        "POST",
        "/token",
        [HOST, ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Expect", "100-continue")],
    )
    continue_line = b"HTTP/1.1 100 Continue\r\n\r\n"
    with live.connect() as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        try:
            interim = sock.recv(len(continue_line))
        except socket.timeout:
            interim = b""
        assert interim == continue_line
        sock.sendall(body)
        response, _ = read_response(sock)
        assert response.status == 200 and identity_of(response) == "expect"


# --------------------------------------------------------------------------
# Slow and stalled clients


def test_silent_connection_is_closed_after_idle_timeout(live):
    with live.connect() as sock:
        started = time.monotonic()
        assert read_eof(sock) == b""  # no 408 for a connection that never asked
        assert 0.8 <= time.monotonic() - started <= 2.0


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(live):
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        _, rest = read_response(sock)
        started = time.monotonic()
        expect_closed(sock, rest)
        assert 0.8 <= time.monotonic() - started <= 2.0


def test_stray_crlf_after_a_body_leaves_the_connection_idle(live):
    with live.connect() as sock:
        sock.sendall(token_request() + b"\r\n")
        response, rest = read_response(sock)
        assert response.status == 200
        assert rest + read_eof(sock) == b""  # closed after idle_timeout, no answer to nothing


def _trickle(sock: socket.socket, prefix: bytes, byte: bytes, every: float = 0.2, limit: float = 4.0) -> tuple:
    """Send prefix, then one byte every `every` s until the server answers or closes: (data, seconds)."""
    started = time.monotonic()
    sock.sendall(prefix)
    data = b""
    while time.monotonic() - started < limit:
        sock.settimeout(every)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            try:
                sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                break
            continue
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            break
    return data, time.monotonic() - started


def test_slowloris_head_gets_408_at_the_request_deadline(live):
    with live.connect() as sock:
        data, elapsed = _trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ", b"a")
        # One deadline for the whole head: each byte does not reset the clock.
        assert 0.8 <= elapsed <= 1.0 + 0.8, elapsed
        response, _ = read_response(sock, data)
        assert (response.status, response.json()) == (408, {"errorMessage": "Request timed out"})


def test_slowloris_body_gets_408_at_the_request_deadline(live):
    head = build("POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content-Length", "1000")])
    with live.connect() as sock:
        data, elapsed = _trickle(sock, head, b" ")
        assert 0.8 <= elapsed <= 1.0 + 0.8, elapsed
        response, _ = read_response(sock, data)
        assert (response.status, response.json()) == (408, {"errorMessage": "Request timed out"})


def test_stalled_clients_do_not_block_a_normal_one(live):
    stalled = [live.connect() for _ in range(3)]
    try:
        stalled[1].sendall(b"GET /healthz HTTP/1.1\r\nHo")  # half a head
        stalled[2].sendall(build("POST", "/token", [HOST, JSON, ("Content-Length", "50")]) + b"{")
        assert wait_for(lambda: live.open_connections() == 3)
        with live.connect() as sock:
            started = time.monotonic()
            sock.sendall(token_request("prompt"))
            response, _ = read_response(sock)
            assert time.monotonic() - started < 0.5
        assert response.status == 200 and identity_of(response) == "prompt"
    finally:
        for sock in stalled:
            sock.close()


# --------------------------------------------------------------------------
# Saturation


def test_when_full_an_idle_keep_alive_connection_makes_room(start_server):
    live = start_server(idle_timeout=10.0)
    idle = [live.connect() for _ in range(4)]
    try:
        for sock in idle:
            sock.sendall(HEALTHZ)
            response, _ = read_response(sock)
            assert response.status == 200 and response.values("connection") == []
        with live.connect() as sock:
            sock.sendall(token_request("fifth"))
            response, _ = read_response(sock)
        assert response.status == 200 and identity_of(response) == "fifth"
        # The oldest idle connection was closed for it; the others stay open.
        assert recv_before(idle[0], time.monotonic() + TIMEOUT) == b""
        for sock in idle[1:]:
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0].status == 200
    finally:
        for sock in idle:
            sock.close()


def test_when_full_of_requests_in_progress_a_new_one_gets_503(start_server):
    live = start_server(request_timeout=10.0)
    busy = []
    try:
        for count in range(1, 5):
            busy.append(live.connect())
            busy[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
            assert wait_for(lambda: live.open_connections() == count and live.all_busy())
        with live.connect() as sock:
            sock.sendall(token_request())
            response, rest = read_response(sock)
            assert response.status == 503
            assert response.json() == {"errorMessage": "Server is busy; try again"}
            assert response.values("retry-after") == ["1"]
            assert response.values("connection") == ["close"]
            expect_closed(sock, rest)
    finally:
        for sock in busy:
            sock.close()
    assert wait_for(lambda: live.open_connections() == 0)
    with live.connect() as sock:
        sock.sendall(token_request("again"))
        response, _ = read_response(sock)
    assert response.status == 200 and identity_of(response) == "again"


def test_connections_beyond_twice_the_limit_wait_in_the_backlog(start_server):
    live = start_server(request_timeout=10.0)
    held = []
    waiting = None
    try:
        for count in range(1, 9):
            held.append(live.connect())
            held[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # busy, not idle: none can make room
            assert wait_for(lambda: live.open_connections() == count and live.all_busy())
        threads = threading.active_count()
        waiting = live.connect()  # completes in the kernel's backlog
        waiting.sendall(HEALTHZ)
        waiting.settimeout(0.5)
        with pytest.raises(socket.timeout):
            waiting.recv(1)
        assert live.open_connections() == 8 and threading.active_count() == threads
    finally:
        for sock in held:
            sock.close()
    try:
        # Accepted once a slot frees; 503 or 200 depends on how many are gone by then.
        response, _ = read_response(waiting)
        assert response.status in (200, 503)
    finally:
        waiting.close()


# --------------------------------------------------------------------------
# Graceful drain


def test_drain_finishes_the_request_in_flight_and_closes_idle_connections(start_server):
    entered, release = threading.Event(), threading.Event()

    def slow_handler(event: dict) -> None:
        entered.set()
        release.wait(TIMEOUT)

    live = start_server(on_event=slow_handler, idle_timeout=30.0, request_timeout=5.0)
    idle = live.connect()
    busy = live.connect()
    drainer = threading.Thread(target=live.server.drain, kwargs={"grace": TIMEOUT}, daemon=True)
    try:
        idle.sendall(HEALTHZ)
        _, idle_rest = read_response(idle)
        # The in-flight webhook has a second request pipelined behind it.
        busy.sendall(webhook_request() + HEALTHZ)
        assert entered.wait(TIMEOUT)

        started = time.monotonic()
        drainer.start()
        expect_closed(idle, idle_rest)  # woken at once, not after idle_timeout (30 s)
        assert time.monotonic() - started < 1.0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(live.address, timeout=TIMEOUT).close()
        assert drainer.is_alive()  # still waiting for the request in flight

        release.set()
        response, rest = read_response(busy)
        assert (response.status, response.json()) == (200, {"status": "ok"})
        assert response.values("connection") == ["close"]
        expect_closed(busy, rest)  # the pipelined request is not served during the drain
        drainer.join(TIMEOUT)
        assert not drainer.is_alive()
        live.thread.join(TIMEOUT)
        assert not live.thread.is_alive()  # serve_forever returned
        assert live.open_connections() == 0
    finally:
        release.set()
        idle.close()
        busy.close()


# --------------------------------------------------------------------------
# Errors inside the app, and the access log


def test_app_exception_is_a_generic_500_and_keeps_the_connection(live, caplog):
    live.server.app = SpyApp(live.server.app, fail_on="/healthz")
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        response, rest = read_response(sock)
        assert (response.status, response.json()) == (500, {"errorMessage": "Internal server error"})
        sock.sendall(token_request())
        response, rest = read_response(sock, rest)
        assert response.status == 200
    assert wait_for(lambda: len(access_lines(caplog)) == 2)
    assert "application error: RuntimeError" in caplog.text


def test_app_that_never_starts_a_response_gets_a_500(live, thread_crashes):
    class NoStart:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            return [b"forgot start_response"]

        def __getattr__(self, name):
            return getattr(self.app, name)

    live.server.app = NoStart(live.server.app)
    try:
        with live.connect() as sock:
            sock.sendall(HEALTHZ)
            response, _ = read_response(sock)
        assert (response.status, response.json()) == (500, {"errorMessage": "Internal server error"})
    finally:
        # The thread's excepthook runs after it closed the socket: wait for it.
        wait_for(lambda: live.open_connections() == 0 and bool(thread_crashes), timeout=2.0)
        crashed = [crash.exc_type.__name__ for crash in thread_crashes]
        thread_crashes.clear()  # reported by the assertion above, not again by the guard
        assert crashed == []


def test_access_log_has_one_line_per_request_without_secrets(live, caplog):
    token = livekit_auth.AccessToken(KEY, SECRET).with_identity("x").to_jwt(now=NOW)
    long_path = "/" + "a" * 100
    with live.connect() as sock:
        rest = b""
        for request in (
            token_request(),
            HEALTHZ,
            build("GET", "/token?access_token=" + token, [HOST]),
            build("GET", long_path, [HOST]),
            build("GET", "/" + token, [HOST]),
            build("GET", "/x?secret=" + SECRET.replace("!", "%21"), [HOST]),
        ):
            sock.sendall(request)
            response, rest = read_response(sock, rest)
    # Each line is logged just after its answer is sent: wait, so that the
    # next connection's line cannot overtake the last of this one.
    assert wait_for(lambda: len(access_lines(caplog)) == 6)
    with live.connect() as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        response, rest = read_response(sock)
        expect_closed(sock, rest)
    expected = [
        ("POST", "/token", 200),
        ("GET", "/healthz", 200),
        ("GET", "/token", 405),
        ("GET", json.dumps(long_path[:40] + "..."), 404),
        ("GET", json.dumps(("/" + token)[:40] + "..."), 404),
        ("GET", '"/x"', 404),
        ("-", '"-"', 400),
    ]
    assert wait_for(lambda: len(access_lines(caplog)) >= len(expected))
    assert access_lines(caplog) == expected
    assert token not in caplog.text and "a" * 41 not in caplog.text
    # The guard fixture then checks every line for the secret, a JWT and "Traceback".


# --------------------------------------------------------------------------
# python3 server.py


def _env(**values: str) -> dict:
    env = {"PATH": os.environ.get("PATH", os.defpath), "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0"}
    env.update(values)
    return env


class ServerProcess(LoggedProcess):
    """`python3 -E -S server.py` (standard library only), its stderr read by a thread."""

    def __init__(self, env: dict) -> None:
        super().__init__([sys.executable, "-E", "-S", "server.py"], cwd=ROOT, env=env)

    stderr = LoggedProcess.output  # server.py logs to stderr alone

    def stop(self) -> tuple:
        """SIGTERM; (exit code, seconds to exit)."""
        started = time.monotonic()
        code = super().stop()
        return code, time.monotonic() - started


def _check_process_log(text: str) -> None:
    assert "Traceback" not in text
    assert SECRET not in text
    assert not JWT_RE.search(text), text


def test_main_dev_mode_warns_serves_and_exits_on_sigterm():
    process = ServerProcess(_env())
    try:
        port = process.port()
        assert "DEVELOPMENT MODE" in process.stderr and "devkey" in process.stderr
        idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with idle, socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            idle.sendall(HEALTHZ)
            _, idle_rest = read_response(idle)
            sock.sendall(token_request("dev"))
            response, _ = read_response(sock)
            assert response.status == 200
            claims = livekit_auth.TokenVerifier("devkey", "secret").verify(response.json()["token"])
            assert claims.identity == "dev"
            code, seconds = process.stop()
            assert code == 0 and seconds < 2.0
            expect_closed(idle, idle_rest)
    finally:
        process.kill()
    assert "shutting down" in process.stderr
    assert re.search(r"INFO 127\.0\.0\.1 POST /token 200 ", process.stderr)
    _check_process_log(process.stderr)


def test_main_with_credentials_signs_with_them_and_keeps_the_secret_out_of_stderr():
    process = ServerProcess(_env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET))
    try:
        port = process.port()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(token_request("carol"))
            response, _ = read_response(sock)
        assert response.status == 200
        assert livekit_auth.TokenVerifier(KEY, SECRET).verify(response.json()["token"]).identity == "carol"
        code, seconds = process.stop()
        assert code == 0 and seconds < 2.0
    finally:
        process.kill()
    assert "DEVELOPMENT MODE" not in process.stderr and "shorter than 32" not in process.stderr
    _check_process_log(process.stderr)


def test_main_warns_about_a_short_secret():
    process = ServerProcess(_env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET="tiny-s3cret"))
    try:
        process.port()
        code, _ = process.stop()
        assert code == 0
    finally:
        process.kill()
    assert "livekit.api_secret (LIVEKIT_API_SECRET) holds a secret shorter than 32 characters" in process.stderr
    assert "tiny-s3cret" not in process.stderr


@pytest.mark.parametrize(
    "env, named",
    [
        pytest.param({"LIVEKIT_API_KEY": KEY}, "LIVEKIT_API_SECRET", id="key-without-secret"),
        pytest.param({"LIVEKIT_API_SECRET": SECRET}, "LIVEKIT_API_KEY", id="secret-without-key"),
        pytest.param({"SERVER_PORT": "+80"}, "SERVER_PORT", id="port-plus"),
        pytest.param({"SERVER_PORT": "70000"}, "SERVER_PORT", id="port-out-of-range"),
        pytest.param({"SERVER_MAX_CONNECTIONS": "0"}, "SERVER_MAX_CONNECTIONS", id="no-connections"),
    ],
)
def test_main_configuration_error_exits_2_naming_the_setting(env, named):
    result = subprocess.run(
        [sys.executable, "-E", "-S", "server.py"],
        cwd=ROOT,
        env=_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert "configuration error" in stderr and named in stderr
    assert "listening on" not in stderr
    _check_process_log(stderr)


def test_main_port_in_use_exits_1():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-E", "-S", "server.py"],
            cwd=ROOT,
            env=_env(SERVER_PORT=str(port), LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT * 2,
        )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    _check_process_log(stderr)


# --------------------------------------------------------------------------
# Found in review: each pins a fix


def test_a_lingering_connection_keeps_its_slot_until_it_is_closed(live):
    # The server answers without the body and lingers to swallow it: that
    # thread must still count against the limit, or a client could have
    # any number of threads lingering at once.
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz", [HOST, ("Content-Length", "999999")]))
        response, _ = read_response(sock)
        assert response.status == 200 and response.values("connection") == ["close"]
        assert live.open_connections() == 1
    assert wait_for(lambda: live.open_connections() == 0)


def test_an_unusual_method_is_not_written_to_the_access_log(live, caplog):
    token_like = "eyJhbGciOiJIUzI1NiJ9x" * 4
    with live.connect() as sock:
        sock.sendall(build(token_like, "/token", [HOST]))
        response, _ = read_response(sock)
    assert response.status == 405
    assert wait_for(lambda: ("-", "/token", 405) in access_lines(caplog))
    assert token_like not in caplog.text


@pytest.mark.parametrize("host", ["bad host!", "[::1]"])
def test_main_with_an_unusable_host_exits_2_naming_it(host):
    process = ServerProcess(_env(SERVER_HOST=host))
    try:
        assert process.proc.wait(TIMEOUT) == 2
    finally:
        process.kill()
    assert "server.host (SERVER_HOST) is not an address of this machine" in process.stderr


class SlowOnQuery:
    """The real app, taking `seconds` on the event loop for requests with ?slow: the loop is held up."""

    def __init__(self, app, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ, start_response):
        if environ["QUERY_STRING"] == "slow":
            time.sleep(self.seconds)
        return self.app(environ, start_response)

    def __getattr__(self, name):
        return getattr(self.app, name)  # may_block (False for /healthz) and error_response


SLOW_HEALTHZ = build("GET", "/healthz?slow", [HOST])


def test_a_connection_closed_to_make_room_is_not_read_in_the_same_turn(start_server):
    # While the loop is held up, a new connection arrives and then an idle one
    # closes: both come out of one select(). Making room closes the idle one;
    # its end-of-file, next in the batch, must not be read from a closed socket.
    live = start_server(max_connections=2, idle_timeout=30.0, request_timeout=30.0)
    live.server.app = SlowOnQuery(live.server.app, 0.3)
    idle, busy = live.connect(), live.connect()
    try:
        idle.sendall(HEALTHZ)
        read_response(idle)
        busy.sendall(SLOW_HEALTHZ)
        time.sleep(0.1)
        with live.connect() as new:
            idle.close()
            new.sendall(HEALTHZ)
            assert read_response(new)[0].status == 200
        assert read_response(busy)[0].status == 200
        assert live.thread.is_alive()
    finally:
        idle.close()
        busy.close()


def test_a_request_sent_before_the_idle_deadline_is_answered_when_the_loop_was_busy(start_server):
    live = start_server(idle_timeout=0.5, request_timeout=5.0)
    live.server.app = SlowOnQuery(live.server.app, 0.3)
    with live.connect() as waiting, live.connect() as busy:
        waiting.sendall(HEALTHZ)
        read_response(waiting)
        idle_from = time.monotonic()
        time.sleep(0.3)
        busy.sendall(SLOW_HEALTHZ)  # holds the loop from 0.3 s to 0.6 s
        time.sleep(0.1)
        waiting.sendall(HEALTHZ)  # at 0.4 s, before the 0.5 s idle deadline; read after it
        response, rest = read_response(waiting)
        assert time.monotonic() - idle_from > 0.5
        assert response.status == 200 and response.values("connection") == []
        assert read_response(busy)[0].status == 200


def test_a_pipelining_client_takes_turns_with_the_others(start_server):
    # Fifty requests pipelined at once, 5 ms each on the loop: answered one a
    # turn, so a request from another client is answered between two of them,
    # not after all fifty (a quarter of a second).
    live = start_server(request_timeout=5.0, idle_timeout=5.0)
    live.server.app = SlowOnQuery(live.server.app, 0.005)
    with live.connect() as pipelining, live.connect() as other:
        pipelining.sendall(SLOW_HEALTHZ * 50)
        time.sleep(0.02)
        started = time.monotonic()
        other.sendall(HEALTHZ)
        response, _ = read_response(other)
        waited = time.monotonic() - started
        pipelining.setblocking(False)
        answered_before = recv_all_available(pipelining).count(b"HTTP/1.1 200 OK")
        assert response.status == 200
        assert answered_before < 50 and waited < 0.15, (answered_before, waited)


def recv_all_available(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    return data


def test_an_error_while_answering_loses_that_connection_not_the_server(live, caplog):
    def access_log(fields: dict) -> None:
        if fields["path"] == "/healthz":
            raise RuntimeError("the log sink failed")

    live.server.access_log = access_log
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        response, rest = read_response(sock)  # sent before the access line
        assert response.status == 200
        expect_closed(sock, rest)
    with live.connect() as sock:
        sock.sendall(token_request("after"))
        response, _ = read_response(sock)
        assert response.status == 200 and identity_of(response) == "after"
    assert "runner error: RuntimeError" in caplog.text
    assert wait_for(lambda: live.open_connections() == 0)


def test_when_full_a_connection_its_client_closed_makes_room_at_once(start_server):
    # A client that connects and closes at once (wrk does, to probe) is still
    # counted until its end of stream is read. Accepted in the same turn as a
    # new connection, it is closed to make room rather than the new one refused.
    live = start_server(max_connections=2, idle_timeout=30.0, request_timeout=30.0)
    live.server.app = SlowOnQuery(live.server.app, 0.3)
    with live.connect() as busy:
        # Holds the loop while the next two wait in the backlog; the start of a
        # second request keeps it from being the one closed to make room.
        busy.sendall(SLOW_HEALTHZ + b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.1)
        live.connect().close()
        with live.connect() as new:
            new.sendall(token_request("new"))
            response, _ = read_response(new)
            assert response.status == 200 and identity_of(response) == "new"
        assert read_response(busy)[0].status == 200


def test_a_connection_bound_for_a_503_never_makes_room(start_server):
    # Full, and a third connection (to be answered 503) stays silent past a
    # tick: closing it would free no place to serve from, so a fourth is
    # answered 503 too, and the third still gets its 503.
    live = start_server(max_connections=2, idle_timeout=1.0, request_timeout=5.0)
    busy = [live.connect(), live.connect()]
    try:
        for sock in busy:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        assert wait_for(lambda: live.open_connections() == 2 and live.all_busy())
        with live.connect() as third:
            time.sleep(0.2)  # past the tick (a tenth of the 1 s idle timeout)
            with live.connect() as fourth:
                fourth.sendall(token_request())
                assert read_response(fourth)[0].error == (503, "Server is busy; try again")
            third.sendall(token_request())
            assert read_response(third)[0].error == (503, "Server is busy; try again")
    finally:
        for sock in busy:
            sock.close()


def test_a_request_that_arrived_before_the_drain_is_answered(start_server):
    live = start_server(idle_timeout=30.0, request_timeout=5.0)
    live.server.app = SlowOnQuery(live.server.app, 0.3)
    with live.connect() as busy, live.connect() as waiting:
        waiting.sendall(HEALTHZ)
        read_response(waiting)
        busy.sendall(SLOW_HEALTHZ)  # holds the loop
        time.sleep(0.1)
        waiting.sendall(HEALTHZ)  # arrives, unread, before the drain begins
        live.server.stop(grace=TIMEOUT)
        response, rest = read_response(waiting)
        assert response.status == 200 and response.values("connection") == ["close"]
        expect_closed(waiting, rest)
        assert read_response(busy)[0].status == 200


def test_an_error_on_a_thread_is_logged_without_a_traceback(live, caplog):
    def access_log(fields: dict) -> None:
        raise RuntimeError("the log sink failed")

    live.server.access_log = access_log
    request = token_request("late")
    head, _, body = request.partition(b"\r\n\r\n")
    with live.connect() as sock:
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(0.05)  # the body comes late: a thread reads it
        sock.sendall(body)
        response, rest = read_response(sock)
        assert response.status == 200 and identity_of(response) == "late"
        expect_closed(sock, rest)
    assert wait_for(lambda: "runner error: RuntimeError" in caplog.text)
