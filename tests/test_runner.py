"""The HTTP runner in server.py (section 5), over real loopback sockets.

Requests are written as raw bytes and answers parsed by hand (status line,
headers, Content-Length body), so framing is what is tested: keep-alive,
pipelining, strict heads, deadlines, the connection bound, the drain, the
access log, any WSGI app (not only ours), and `python3 server.py` itself.
Every socket has a timeout and every loop a bound.

Each answer read goes through `read_response` (helpers.py), which also checks what must
hold for any answer: exactly one Date header, one Content-Length, an error
body of exactly {"errorMessage": ...}, and no secret or traceback anywhere.
Every test ends with the `guard` fixture's checks (helpers.py) on the log, formatted as
server.py writes it (logfmt, fields included): no secret, no JWT, no
traceback, and no exception escaping a server thread.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wsgiref.validate
from pathlib import Path
from typing import Callable, Optional

import pytest

import helpers
import livekit_auth
import server
import support_http
from helpers import (
    HEALTHZ,
    HOST,
    KEY,
    SECRET,
    STAMP,
    _check_process_log,
    _env,
    listening_port,
    log_records,
    read_response,
    run_serve_in_thread,
    webhook_authorization,
)
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
NOW = 1_750_000_000  # the app's clock: tokens are minted and verified at this instant
# server.py's access line on standard error (LogfmtFormatter; STAMP, its time, from helpers.py),
# then what the app adds: room and identity for a token, event, id and room for a webhook, a reason.
ACCESS_LINE = re.compile(
    STAMP
    + r" level=INFO msg=request client=(\S+) method=(\S+) path=(\S+) status=([0-9]{3}) duration_ms=[0-9]+\.[0-9]+"
    r"(?: (?:room|identity|event|id|duplicate|reason)=(?:[\w.:/@+-]+|\"(?:[^\"\\]|\\.)*\"))*"
)


# --------------------------------------------------------------------------
# Building requests, reading answers (support_http builds and parses; helpers.read_response checks)


JSON = ("Content-Type", "application/json")
BUSY = (503, "Server is busy; try again")


def token_body(participant: str = "alice", room: str = "room-1") -> bytes:
    return json.dumps({"roomName": room, "participantName": participant}).encode("ascii")


def token_request(participant: str = "alice", room: str = "room-1", extra=()) -> bytes:
    body = token_body(participant, room)
    headers = [
        HOST,
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    return build("POST", "/token", headers, body)


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


def hello_world(environ, start_response):
    """PEP 3333's hello world, as any WSGI tutorial writes it: not ours, and no Content-Length."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!\n"]


HELLO_BODY = b"Hello, world!\n"


# --------------------------------------------------------------------------
# Fixtures

# The log guard (helpers.py): every test here ends with its checks.
thread_crashes, guard = helpers.thread_crashes, helpers.guard
pytestmark = pytest.mark.usefixtures("guard")


@pytest.fixture
def start_server():
    """start(app=None, on_event=..., **setting overrides) -> Running; drained and joined on teardown.

    `app`: any WSGI callable, served instead of ours (built from the same settings).
    """
    started: list = []

    def start(
        *, app: Optional[Callable] = None, on_event: Optional[Callable] = None, **overrides
    ) -> Running:
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
        app = app or server.make_app(settings, on_event=on_event, clock=lambda: NOW)
        running = serve_in_thread(app, settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.drain_and_join(grace=2)


@pytest.fixture
def live(start_server) -> Running:
    return start_server()


def access_records(caplog) -> list:
    """The fields of each access-log record ("request") so far."""
    records = [record for record in caplog.records if record.name == "livekit_token_server"]
    return [record.fields for record in records if record.msg == "request"]


def access_lines(caplog) -> list:
    """(method, path, status) of each access-log record so far."""
    return [
        (fields["method"], fields["path"], fields["status"]) for fields in access_records(caplog)
    ]


def logged(caplog, message: str) -> list:
    """The fields of each record whose message is `message`."""
    return [
        getattr(record, "fields", {}) for record in caplog.records if record.getMessage() == message
    ]


class SpyApp:
    """A WSGI app (ours unless told) recording each environ it is called with."""

    def __init__(self, app, fail_on: str = "", error: type = RuntimeError) -> None:
        self.app = app
        self.fail_on = fail_on
        self.error = error
        self.environs: list = []

    def __call__(self, environ, start_response):
        self.environs.append(dict(environ))
        if self.fail_on and environ["PATH_INFO"] == self.fail_on:
            raise self.error("boom with " + SECRET)
        return self.app(environ, start_response)


class SlowOnQuery:
    """A WSGI app (ours) taking `seconds` before it answers requests with the query string ?slow."""

    def __init__(self, app, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ, start_response):
        if environ["QUERY_STRING"] == "slow":
            time.sleep(self.seconds)
        return self.app(environ, start_response)


SLOW_HEALTHZ = build("GET", "/healthz?slow", [HOST])


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
            conn.request(
                "POST",
                "/token",
                body=token_body(f"user-{i}"),
                headers={"Content-Type": "application/json"},
            )
            reply = conn.getresponse()
            body = reply.read()
            assert reply.status == 200 and not reply.will_close
            assert identity_of(Response(200, [], body, body)) == f"user-{i}"
            sockets.append(conn.sock)
        # HEAD and the 204 preflight carry no body; the connection stays in step.
        conn.request("HEAD", "/healthz")
        reply = conn.getresponse()
        assert (
            reply.status == 200
            and reply.read() == b""
            and int(reply.getheader("Content-Length")) > 0
        )
        conn.request("OPTIONS", "/token")
        reply = conn.getresponse()
        assert (
            reply.status == 204
            and reply.read() == b""
            and reply.getheader("Content-Length") is None
        )
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
        with live.server.connections_lock:
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


def test_ninety_nine_header_lines_are_allowed(live):
    # server.MAX_HEADERS: http.client reads at most 100 lines, the blank one included.
    headers = [HOST] + [(f"X-H{i}", "v") for i in range(98)]
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
BARE_LF = "Request lines must end with CRLF"
TOO_MANY = "Too many header fields"
TE_CHUNKED = ("Transfer-Encoding", "chunked")
CHUNKED_BODY = b"2\r\n{}\r\n0\r\n\r\n"


def _post(*headers: tuple, body: bytes = b"{}") -> bytes:
    return build("POST", "/token", [HOST, ("Content-Type", "application/json"), *headers], body)


def _get(*headers: tuple) -> bytes:
    return build("GET", "/healthz", [HOST, *headers])


MALFORMED = [
    pytest.param(b"HELLO\r\n\r\n", 400, MALFORMED_LINE, id="one-word"),
    pytest.param(b"GET /token\r\n\r\n", 400, MALFORMED_LINE, id="no-version"),
    pytest.param(
        b"GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="double-space"
    ),
    pytest.param(
        b"GET /healthz http/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="lower-case-version"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1 x\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="four-parts"
    ),
    pytest.param(
        b"G(T /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, MALFORMED_LINE, id="method-not-a-token"
    ),
    pytest.param(b"GET /token HTTP/2.0\r\n\r\n", 505, VERSION, id="http2"),
    pytest.param(b"GET /token HTTP/2.0\r\nHost: t\r\n\r\n", 505, VERSION, id="http2-host"),
    pytest.param(b"GET /token HTTP/0.9\r\n\r\n", 505, VERSION, id="http09"),
    pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, "Host header is required", id="no-host"),
    pytest.param(
        b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        NOT_A_PATH,
        id="absolute-form",
    ),
    pytest.param(b"GET healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, NOT_A_PATH, id="relative-target"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, NOT_A_PATH, id="asterisk-not-options"),
    pytest.param(b"GET /healthz HTTP/1.1\nHost: t\n\n", 400, BARE_LF, id="bare-lf"),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400, BARE_LF, id="bare-lf-header-line"
    ),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\n", 400, BARE_LF, id="bare-lf-blank-line"),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400, MALFORMED_FIELD, id="no-colon"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  b\r\n\r\n",
        400,
        MALFORMED_FIELD,
        id="obs-fold",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\r\n\tY: b\r\n\r\n",
        400,
        MALFORMED_FIELD,
        id="obs-fold-colon",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n", 400, MALFORMED_FIELD, id="space-before-colon"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\n Host: t\r\n\r\n", 400, MALFORMED_FIELD, id="space-before-name"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n: v\r\n\r\n", 400, MALFORMED_FIELD, id="empty-name"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX(A): v\r\n\r\n",
        400,
        MALFORMED_FIELD,
        id="name-not-a-token",
    ),
    pytest.param(_get(("X-A", "a\x01b")), 400, CONTROL, id="ctl-soh"),
    pytest.param(_get(("X-A", "a\x00b")), 400, CONTROL, id="ctl-nul"),
    pytest.param(_get(("X-A", "a\x7fb")), 400, CONTROL, id="ctl-del"),
    pytest.param(_get(("X-A", "a\rb")), 400, CONTROL, id="ctl-bare-cr"),
    # A bare LF ends the line for http.client: the smuggled line is refused as a bare-LF line.
    pytest.param(
        _get(("X-A", "a\nContent-Length: 5")), 400, BARE_LF, id="bare-lf-in-value-smuggle"
    ),
    pytest.param(_get(("Host", "t")), 400, REPEATED, id="repeated-host"),
    pytest.param(
        _post(("Content-Length", "2"), ("Content-Length", "2")),
        400,
        REPEATED,
        id="cl-repeated-same",
    ),
    pytest.param(
        _post(("Content-Length", "2"), ("Content-Length", "3")),
        400,
        REPEATED,
        id="cl-repeated-different",
    ),
    pytest.param(
        _post(("Content-Length", "2"), ("content-length", "2")),
        400,
        REPEATED,
        id="cl-repeated-case",
    ),
    pytest.param(_post(("Content-Length", "2, 2")), 400, BAD_LENGTH, id="cl-list"),
    pytest.param(_post(("Content-Length", "+2")), 400, BAD_LENGTH, id="cl-plus"),
    pytest.param(_post(("Content-Length", "-1")), 400, BAD_LENGTH, id="cl-minus"),
    pytest.param(
        _post(("Content-Length", "1_0"), body=b"{}" * 5), 400, BAD_LENGTH, id="cl-underscore"
    ),
    pytest.param(_post(("Content-Length", "0x2")), 400, BAD_LENGTH, id="cl-hex"),
    pytest.param(_post(("Content-Length", "2.0")), 400, BAD_LENGTH, id="cl-decimal-point"),
    pytest.param(_post(("Content-Length", "")), 400, BAD_LENGTH, id="cl-empty"),
    pytest.param(_post(("Content-Length", "1 1")), 400, BAD_LENGTH, id="cl-inner-space"),
    pytest.param(_post(("Content-Length", "\xb2")), 400, BAD_LENGTH, id="cl-superscript-two"),
    pytest.param(_post(("Content-Length", "0" * 13)), 400, BAD_LENGTH, id="cl-13-digits"),
    pytest.param(_post(TE_CHUNKED, body=CHUNKED_BODY), 411, CHUNKED, id="te-chunked"),
    pytest.param(
        _post(TE_CHUNKED, ("Content-Length", "2"), body=CHUNKED_BODY),
        411,
        CHUNKED,
        id="te-chunked-and-cl",
    ),
    pytest.param(
        _post(("Content-Length", "2"), TE_CHUNKED, body=CHUNKED_BODY),
        411,
        CHUNKED,
        id="cl-and-te-chunked",
    ),
    pytest.param(
        _post(("Transfer-Encoding", "identity"), ("Content-Length", "2")),
        411,
        CHUNKED,
        id="te-identity",
    ),
    # Host and 99 more: 100 header lines, one past server.MAX_HEADERS.
    pytest.param(
        _get(*[(f"X-H{i}", "v") for i in range(99)]), 431, TOO_MANY, id="100-header-lines"
    ),
    pytest.param(
        _get(*[(f"X-H{i}", "v") for i in range(100)]), 431, TOO_MANY, id="101-header-lines"
    ),
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
        assert (response.status, response.json()) == (
            431,
            {"errorMessage": "Request head is too large"},
        )


# --------------------------------------------------------------------------
# The WSGI environ: built from the request alone; header names with "_" dropped

# What the runner puts in every environ, besides the request's own HTTP_* headers.
CGI_KEYS = {
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
}
WSGI_KEYS = {
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.input",
    "wsgi.errors",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
    # The runner's own: what the app adds to this request's access line.
    "access_log.fields",
}


def test_environ_holds_the_request_and_nothing_from_os_environ(live, monkeypatch):
    # wsgiref's simple_server copies os.environ, secrets included, into every environ.
    monkeypatch.setenv("LIVEKIT_API_SECRET", "process-env-secret-must-not-reach-environ")
    monkeypatch.setenv("SPY_ONLY_IN_OS_ENVIRON", "process-env-value")
    spy = SpyApp(live.server.app)
    live.server.app = spy
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz?a=1", [HOST, ("X-Auth", "good")]))
        response, _ = read_response(sock)
        assert response.status == 200
    (environ,) = spy.environs
    assert set(environ) == CGI_KEYS | WSGI_KEYS | {"HTTP_HOST", "HTTP_X_AUTH"}
    assert not set(environ) & (
        set(os.environ) - CGI_KEYS
    )  # no variable of this process, by name...
    assert not any("process-env" in str(value) for value in environ.values())  # ...nor by value
    port = str(live.address[1])
    assert {key: environ[key] for key in CGI_KEYS} == {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/healthz",
        "QUERY_STRING": "a=1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    assert (environ["HTTP_HOST"], environ["HTTP_X_AUTH"]) == ("test", "good")
    assert (environ["wsgi.version"], environ["wsgi.url_scheme"]) == ((1, 0), "http")
    assert (
        environ["wsgi.multithread"],
        environ["wsgi.multiprocess"],
        environ["wsgi.run_once"],
    ) == (True, False, False)


def test_underscore_header_does_not_pass_for_its_dash_twin(live):
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
        assert not any("evil" in str(value) for value in environ.values())
        assert not any("X_AUTH" in key and key != "HTTP_X_AUTH" for key in environ)


def test_underscore_content_length_is_ignored(live):
    with live.connect() as sock:
        # A correct Content-Length wins; Content_Length is neither a duplicate nor used.
        sock.sendall(token_request("bob", extra=[("Content_Length", "5")]))
        response, rest = read_response(sock)
        assert response.status == 200 and identity_of(response) == "bob"
        # Content_Length alone frames nothing: the app sees no length at all.
        sock.sendall(
            build(
                "POST",
                "/token",
                [HOST, ("Content-Type", "application/json"), ("Content_Length", "2")],
            )
        )
        response, rest = read_response(sock, rest)
        assert (response.status, response.json()) == (
            411,
            {"errorMessage": "Content-Length is required"},
        )
        # Nor does Content_Type stand in for Content-Type.
        body = token_body()
        headers = [HOST, ("Content_Type", "application/json"), ("Content-Length", str(len(body)))]
        sock.sendall(build("POST", "/token", headers, body))
        response, rest = read_response(sock, rest)
        assert (response.status, response.json()) == (
            415,
            {"errorMessage": "Content-Type must be application/json"},
        )


# --------------------------------------------------------------------------
# Bodies: short, stalled, oversized


def test_body_shorter_than_content_length_times_out_with_408(live):
    head = build(
        "POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content-Length", "100")]
    )
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
    head = build(
        "POST",
        "/token",
        [HOST, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
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
        assert response.json() == {
            "errorMessage": f"Request body must be at most {server.MAX_TOKEN_BODY_BYTES} bytes"
        }
        assert response.values("connection") == ["close"]
        sock.shutdown(socket.SHUT_WR)
        expect_closed(sock, rest)


def test_after_an_unread_body_the_server_swallows_at_most_max_linger_bytes_then_closes(
    start_server, monkeypatch
):
    # A client that goes on sending past the bound is not waited for until LINGER_SECONDS.
    monkeypatch.setattr(server, "MAX_LINGER_BYTES", 64 * 1024)
    monkeypatch.setattr(server, "LINGER_SECONDS", 60.0)
    live = start_server()
    head = build(
        "POST",
        "/token",
        [HOST, ("Content-Type", "application/json"), ("Content-Length", "999999999")],
    )
    with live.connect() as sock:
        sock.sendall(head)
        response, _ = read_response(sock)
        assert response.status == 413
        deadline = time.monotonic() + TIMEOUT
        # The server closes with data unread, so a send meets its reset.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while time.monotonic() < deadline:
                sock.sendall(b"x" * 4096)


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
        [
            HOST,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Expect", "100-continue"),
        ],
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


def test_expect_100_continue_is_not_sent_when_the_app_answers_unread(live):
    # A 413 decided from Content-Length alone: the client must not be invited to send 20 KiB.
    head = build(
        "POST", "/token", [HOST, JSON, ("Content-Length", "20000"), ("Expect", "100-continue")]
    )
    with live.connect() as sock:
        sock.sendall(head)
        response, rest = read_response(
            sock
        )  # the first bytes are the answer, no interim one before it
        assert response.raw.startswith(b"HTTP/1.1 413 ")
        assert response.error == (
            413,
            f"Request body must be at most {server.MAX_TOKEN_BODY_BYTES} bytes",
        )
        assert response.values("connection") == ["close"]  # the body was never read
        expect_closed(sock, rest)


def test_expect_100_continue_is_not_sent_to_an_http10_client(live):
    # RFC 9110 §10.1.1: a server must not send 100 Continue to an HTTP/1.0 client.
    body = token_body("old")
    headers = [HOST, JSON, ("Content-Length", str(len(body))), ("Expect", "100-continue")]
    head = build("POST", "/token", headers, version="HTTP/1.0")
    with live.connect() as sock:
        sock.sendall(head + body)  # the app reads it: an interim answer would come first
        response, rest = read_response(sock)
        assert response.raw.startswith(b"HTTP/1.1 200 ")
        assert identity_of(response) == "old" and response.values("connection") == ["close"]
        expect_closed(sock, rest)


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


def _trickle(
    sock: socket.socket, prefix: bytes, byte: bytes, every: float = 0.2, limit: float = 4.0
) -> tuple:
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
    head = build(
        "POST", "/token", [HOST, ("Content-Type", "application/json"), ("Content-Length", "1000")]
    )
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


def test_a_slow_answer_on_one_connection_does_not_delay_another(start_server):
    # Each connection has its own thread: an app taking its time holds up no other client.
    live = start_server(request_timeout=5.0, idle_timeout=5.0)
    live.server.app = SlowOnQuery(live.server.app, 0.5)
    with live.connect() as slow, live.connect() as other:
        slow.sendall(SLOW_HEALTHZ)
        started = time.monotonic()
        other.sendall(HEALTHZ)
        response, _ = read_response(other)
        assert time.monotonic() - started < 0.3
        assert response.status == 200
        assert read_response(slow)[0].status == 200


def test_a_pipelining_client_does_not_hold_up_the_others(start_server):
    # Fifty requests pipelined at once, 5 ms each: a quarter of a second of work on
    # that connection. Another client's request is answered meanwhile, not after it.
    live = start_server(request_timeout=5.0, idle_timeout=5.0)
    live.server.app = SlowOnQuery(live.server.app, 0.005)
    with live.connect() as pipelining, live.connect() as other:
        pipelining.sendall(SLOW_HEALTHZ * 50)
        started = time.monotonic()
        other.sendall(HEALTHZ)
        response, _ = read_response(other)
        waited = time.monotonic() - started
        assert response.status == 200 and waited < 0.15, waited
        rest = b""
        for _ in range(50):  # all fifty answered, in order, on the one connection
            answer, rest = read_response(pipelining, rest)
            assert answer.status == 200 and answer.values("connection") == []
        assert rest == b""


# --------------------------------------------------------------------------
# The bound: max_connections served, 503 past it, the backlog past twice it, making room


def fill_with_kept_alive_connections(live: Running, count: int) -> list:
    """`count` connections, each kept alive after one answer, idle in that order."""
    idle = []
    for number in range(1, count + 1):
        idle.append(live.connect())
        sock = idle[-1]
        sock.sendall(HEALTHZ)
        response, rest = read_response(sock)
        assert response.status == 200 and response.values("connection") == [] and rest == b""
        assert wait_for(
            lambda: live.idle_connections() == number
        )  # its thread waits for the next request
    return idle


def test_when_full_an_idle_keep_alive_connection_makes_room(start_server):
    live = start_server(idle_timeout=10.0)
    idle = fill_with_kept_alive_connections(live, 4)
    try:
        time.sleep(server.MAKE_ROOM_AFTER + 0.05)  # all four idle that long since their answer
        with live.connect() as sock:
            sock.sendall(token_request("fifth"))
            response, _ = read_response(sock)
        assert response.status == 200 and identity_of(response) == "fifth"
        # The connection idle longest was closed for it (no answer, a FIN); the others stay open.
        assert read_eof(idle[0]) == b""
        for sock in idle[1:]:
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0].status == 200
    finally:
        for sock in idle:
            sock.close()


def test_when_full_a_connection_just_answered_keeps_its_place(start_server):
    # Its client may be about to send the next request: a kept-alive connection
    # answered less than MAKE_ROOM_AFTER ago is not closed for room.
    live = start_server(max_connections=1, idle_timeout=10.0)
    (kept,) = fill_with_kept_alive_connections(live, 1)
    answered = time.monotonic()
    try:
        with live.connect() as new:
            new.sendall(token_request("new"))
            assert (
                time.monotonic() - answered < server.MAKE_ROOM_AFTER / 2
            )  # else this test proves nothing
            assert read_response(new)[0].error == BUSY
        kept.sendall(token_request("kept"))
        response, _ = read_response(kept)
        assert response.status == 200 and identity_of(response) == "kept"
    finally:
        kept.close()


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
            assert response.error == BUSY
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
        # Accepted once a place frees; 503 or 200 depends on how many are gone by then.
        response, _ = read_response(waiting)
        assert response.status in (200, 503)
    finally:
        waiting.close()


def run_late(running: Running, seconds: float) -> set:
    """Start the threads of some connections `seconds` late, as a loaded machine may: those whose
    client port is put in the returned set. socketserver's ThreadingMixIn runs each connection's
    thread on process_request_thread, looked up on the server: wrapped here."""
    ports: set = set()
    real = running.server.process_request_thread

    def process_request_thread(request, client_address):
        if client_address[1] in ports:
            time.sleep(seconds)
        real(request, client_address)

    running.server.process_request_thread = process_request_thread
    return ports


def connect_from_port(running: Running, ports: set) -> socket.socket:
    """A connection to the server whose client port is added to `ports` before it connects."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.bind(("127.0.0.1", 0))
    ports.add(sock.getsockname()[1])
    sock.connect(running.address)
    return sock


def test_when_full_a_connection_its_client_closed_makes_room(start_server):
    # A client that connects and closes at once (wrk does, to probe) must not have
    # the next client refused: still counted, it is closed to make room. Whether its
    # thread has run by then is the scheduler's business: here it runs late, always.
    live = start_server(max_connections=2, idle_timeout=30.0, request_timeout=30.0)
    late = run_late(live, 0.3)
    with live.connect() as busy:
        busy.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        assert wait_for(lambda: live.open_connections() == 1 and live.all_busy())
        connect_from_port(live, late).close()
        assert wait_for(lambda: live.open_connections() == 2)
        with live.connect() as new:
            new.sendall(token_request("new"))
            response, _ = read_response(new)
        assert response.status == 200 and identity_of(response) == "new"


def test_a_connection_its_client_reset_peeks_as_closed():
    # make_room and drain peek at idle connections: a reset (recv raises) counts as the client's close.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        accepted, _ = listener.accept()
        with accepted:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # linger 0: a reset, not a FIN
            assert wait_for(lambda: select.select([accepted], [], [], 0)[0])
            assert server._Connection(accepted, None, False).peek() == b""


def test_a_silent_connection_peeks_as_waiting_at_once_under_a_default_socket_timeout():
    # An embedder may have called socket.setdefaulttimeout(): accepted sockets then carry a
    # Python timeout, under which a peek would wait for it and then count the client as gone.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        accepted, _ = listener.accept()
        with client, accepted:
            accepted.settimeout(5.0)
            started = time.monotonic()
            conn = server._Connection(accepted, None, False)
            assert conn.peek() is None and time.monotonic() - started < 1.0
            assert accepted.gettimeout() is None  # blocking: the deadlines are the kernel's


def test_when_full_a_connection_silent_since_it_connected_makes_room(start_server):
    live = start_server(max_connections=2, idle_timeout=30.0, request_timeout=30.0)
    with live.connect() as busy, live.connect() as silent:
        busy.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        silent_since = time.monotonic()
        assert wait_for(lambda: live.open_connections() == 2)
        time.sleep(max(server.MAKE_ROOM_AFTER - (time.monotonic() - silent_since), 0) + 0.05)
        with live.connect() as new:
            new.sendall(token_request("new"))
            response, _ = read_response(new)
        assert response.status == 200 and identity_of(response) == "new"
        assert read_eof(silent) == b""  # closed for it: no 408 to a connection that never asked


def test_when_full_a_connection_just_opened_keeps_its_place(start_server):
    # Its request may be on the way: a connection younger than MAKE_ROOM_AFTER is not closed.
    live = start_server(max_connections=1, idle_timeout=30.0, request_timeout=30.0)
    with live.connect() as young:
        opened = time.monotonic()
        with live.connect() as new:
            new.sendall(token_request("new"))
            assert (
                time.monotonic() - opened < server.MAKE_ROOM_AFTER / 2
            )  # else this test proves nothing
            assert read_response(new)[0].error == BUSY
        young.sendall(token_request("young"))
        response, _ = read_response(young)
        assert response.status == 200 and identity_of(response) == "young"


def test_a_connection_bound_for_a_503_never_makes_room(start_server):
    # Full, and a third connection (to be answered 503) stays silent past
    # MAKE_ROOM_AFTER: closing it would free no place to serve from, so a fourth
    # is answered 503 too, and the third still gets its 503.
    live = start_server(max_connections=2, idle_timeout=1.0, request_timeout=5.0)
    busy = [live.connect(), live.connect()]
    try:
        for sock in busy:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        assert wait_for(lambda: live.open_connections() == 2 and live.all_busy())
        with live.connect() as third:
            time.sleep(server.MAKE_ROOM_AFTER + 0.1)
            with live.connect() as fourth:
                fourth.sendall(token_request())
                assert read_response(fourth)[0].error == BUSY
            third.sendall(token_request())
            assert read_response(third)[0].error == BUSY
    finally:
        for sock in busy:
            sock.close()


def ask_with_one_retry(address: tuple, request: bytes, within: float) -> tuple:
    """(statuses, seconds): `request` on a new connection; after a 503 with Retry-After: 1,
    one more on another connection a second later, as a client would. All within `within` seconds."""
    started = time.monotonic()
    statuses = []
    for attempt in range(2):
        with socket.create_connection(address, timeout=within) as sock:
            sock.sendall(request)
            data, parsed = b"", None
            while parsed is None:
                chunk = recv_before(sock, started + within)
                assert chunk, f"closed without an answer after {statuses}"
                data += chunk
                parsed = support_http.split_response(data)
            response = parsed[0]
        statuses.append(response.status)
        if response.status != 503 or attempt:
            break
        assert response.values("retry-after") == ["1"]
        time.sleep(1.0)
    return statuses, time.monotonic() - started


@pytest.mark.parametrize("silent", [5, 7], ids=["bound-plus-one", "twice-the-bound-minus-one"])
def test_silent_sockets_past_the_bound_keep_a_client_waiting_a_second_at_most(
    start_server, monkeypatch, silent
):
    # max_connections=4, idle_timeout=5: sockets opened and kept silent cannot hold
    # the server until their idle timeout; a normal client is answered within about
    # a second (at worst one 503 and its Retry-After).
    # The silent sockets must all be registered before any may be closed to make room:
    # MAKE_ROOM_AFTER of 0.5 s gives a busy machine time to accept them all.
    monkeypatch.setattr(server, "MAKE_ROOM_AFTER", 0.5)
    live = start_server(idle_timeout=5.0, request_timeout=5.0)
    sockets = [live.connect() for _ in range(silent)]
    try:
        assert wait_for(lambda: live.open_connections() == silent)
        statuses, seconds = ask_with_one_retry(live.address, token_request("normal"), within=1.5)
        assert statuses in ([200], [503, 200]) and seconds < 1.5, (statuses, seconds)
    finally:
        for sock in sockets:
            sock.close()


def test_twice_the_bound_of_silent_sockets_keep_a_client_waiting_a_second_at_most(
    start_server, monkeypatch
):
    # As above: time for every silent socket to be registered before any makes room.
    monkeypatch.setattr(server, "MAKE_ROOM_AFTER", 0.5)
    live = start_server(idle_timeout=5.0, request_timeout=5.0)
    sockets = [live.connect() for _ in range(2 * 4 + 2)]  # two more already wait in the backlog
    try:
        assert wait_for(lambda: live.open_connections() == 8)
        statuses, seconds = ask_with_one_retry(live.address, token_request("normal"), within=1.5)
        assert statuses in ([200], [503, 200]) and seconds < 1.5, (statuses, seconds)
    finally:
        for sock in sockets:
            sock.close()


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
        assert wait_for(lambda: refused(live.address))  # the listening socket is closed
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


def refused(address: tuple) -> bool:
    """Whether a connection to `address` is refused (nothing listens there any more)."""
    try:
        socket.create_connection(address, timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # taken into the backlog as the listening socket closed: ask again
        return False
    return False


class SlowAccessLine(logging.Filter):
    """Holds up the connection's thread `seconds` on the first access line: a log sink that is slow."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.held = seconds, threading.Event()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "request" and not self.held.is_set():
            self.held.set()
            time.sleep(self.seconds)
        return True


def test_a_request_that_arrived_before_the_drain_is_answered(start_server):
    live = start_server(idle_timeout=30.0, request_timeout=5.0)
    slow = SlowAccessLine(0.3)
    server.log.addFilter(slow)
    try:
        with live.connect() as waiting:
            waiting.sendall(HEALTHZ)
            read_response(waiting)  # sent before its access line, which holds the thread up
            assert slow.held.wait(TIMEOUT)
            waiting.sendall(HEALTHZ)  # the next request arrives on the kept-alive connection...
            live.server.drain(grace=TIMEOUT)  # ...then the drain begins
            response, rest = read_response(waiting)
            assert response.status == 200 and response.values("connection") == ["close"]
            expect_closed(waiting, rest)
    finally:
        server.log.removeFilter(slow)


def test_a_request_that_arrived_before_its_thread_ran_is_answered(start_server):
    # A connection counts as idle from its accept until its thread first reads: a drain that
    # begins in between closes it only if nothing has arrived on it.
    live = start_server(idle_timeout=30.0, request_timeout=5.0)
    late = run_late(live, 0.5)
    with connect_from_port(live, late) as early:
        early.sendall(HEALTHZ)
        assert wait_for(lambda: live.open_connections() == 1)
        live.server.drain(grace=TIMEOUT)
        response, rest = read_response(early)
        assert response.status == 200 and response.values("connection") == ["close"]
        expect_closed(early, rest)


def test_a_connection_accepted_once_the_drain_has_begun_is_closed_unserved(start_server):
    # The acceptor can take one more connection as the drain begins: it is closed, not registered.
    live = start_server()
    live.server.drain(grace=TIMEOUT)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        live.server.process_request(ours, ("127.0.0.1", 1))
        assert ours.fileno() == -1 and live.open_connections() == 0
        theirs.settimeout(TIMEOUT)
        assert theirs.recv(1) == b""


def test_drain_gives_up_on_a_stalled_request_after_the_grace(start_server):
    live = start_server(idle_timeout=30.0, request_timeout=30.0)
    with live.connect() as stalled:
        assert wait_for(lambda: live.idle_connections() == 1)  # its thread waits for a request...
        stalled.sendall(b"GET /healthz HTTP/1.1\r\n")  # ...which is a head that never ends
        assert wait_for(lambda: live.open_connections() == 1 and live.idle_connections() == 0)
        started = time.monotonic()
        live.server.drain(grace=0.3)
        assert 0.25 <= time.monotonic() - started < 2.0
        live.thread.join(TIMEOUT)
        assert not live.thread.is_alive()


# --------------------------------------------------------------------------
# Errors inside the app, or while answering


def test_app_exception_is_a_generic_500_and_keeps_the_connection(live, caplog):
    live.server.app = SpyApp(live.server.app, fail_on="/healthz")
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        response, rest = read_response(sock)
        assert (response.status, response.json()) == (
            500,
            {"errorMessage": "Internal server error"},
        )
        assert response.values("connection") == []
        sock.sendall(token_request())
        response, rest = read_response(sock, rest)
        assert response.status == 200
    assert wait_for(lambda: len(access_lines(caplog)) == 2)
    assert access_lines(caplog) == [("GET", "/healthz", 500), ("POST", "/token", 200)]
    # The exception's type only: its message holds the secret.
    assert logged(caplog, "application error") == [{"error": "RuntimeError"}]


def test_app_raising_an_oserror_of_its_own_gets_a_500(live, caplog):
    live.server.app = SpyApp(live.server.app, fail_on="/healthz", error=FileNotFoundError)
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        sock.settimeout(TIMEOUT)
        response, _ = read_response(sock)
        assert (response.status, response.json()) == (
            500,
            {"errorMessage": "Internal server error"},
        )
    assert logged(caplog, "application error") == [{"error": "FileNotFoundError"}]


def test_app_that_never_starts_a_response_gets_a_500(live, caplog):
    def no_start(environ, start_response):
        return [b"forgot start_response"]

    live.server.app = no_start
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        response, rest = read_response(sock)
        assert (response.status, response.json()) == (
            500,
            {"errorMessage": "Internal server error"},
        )
        assert b"forgot" not in response.raw
    assert logged(caplog, "application error") == [{"error": "ValueError"}]


def test_an_error_while_answering_loses_that_connection_not_the_server(
    live, caplog, thread_crashes
):
    # Here the access line fails (a logging filter raising): the answer is out
    # already; that connection is closed, the error logged by its type alone,
    # and the server goes on serving.
    class FailingFilter(logging.Filter):
        def filter(self, record):
            if record.getMessage() == "request" and record.fields["client"] == "127.0.0.1":
                if record.fields["path"] == "/healthz":
                    raise RuntimeError("the log sink failed with " + SECRET)
            return True

    failing = FailingFilter()
    server.log.addFilter(failing)
    try:
        request = token_request("late")
        head, _, body = request.partition(b"\r\n\r\n")
        with live.connect() as sock:
            sock.sendall(HEALTHZ)
            response, rest = read_response(sock)  # sent before the access line
            assert response.status == 200
            expect_closed(sock, rest)
        with live.connect() as sock:
            sock.sendall(head + b"\r\n\r\n")
            sock.sendall(body)
            response, _ = read_response(sock)
            assert response.status == 200 and identity_of(response) == "late"
    finally:
        server.log.removeFilter(failing)
    assert wait_for(lambda: live.open_connections() == 0)
    assert logged(caplog, "connection error") == [{"error": "RuntimeError"}]
    assert thread_crashes == []


# --------------------------------------------------------------------------
# The access log


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
        ("GET", "/token", 405),  # never the query string
        ("GET", long_path[:40] + "...", 404),  # cut, so that no token fits in it
        ("GET", ("/" + token)[:40] + "...", 404),
        ("GET", "/x", 404),
        ("-", "-", 400),
    ]
    assert wait_for(lambda: len(access_lines(caplog)) >= len(expected))
    assert access_lines(caplog) == expected
    assert all(fields["client"] == "127.0.0.1" for fields in access_records(caplog))
    records = [record for record in caplog.records if record.msg == "request"]
    lines = [server.LogfmtFormatter().format(record) for record in records]
    assert all(ACCESS_LINE.fullmatch(line) for line in lines), lines
    assert ACCESS_LINE.fullmatch(lines[0]).groups() == ("127.0.0.1", "POST", "/token", "200")
    assert token not in "\n".join(lines) and "a" * 41 not in "\n".join(lines)
    # The guard fixture then checks every line for the secret, a JWT and "Traceback".


def test_an_unusual_method_is_not_written_to_the_access_log(live, caplog):
    token_like = "eyJhbGciOiJIUzI1NiJ9x" * 4
    with live.connect() as sock:
        sock.sendall(build(token_like, "/token", [HOST]))
        response, _ = read_response(sock)
    assert response.status == 405
    assert wait_for(lambda: access_lines(caplog) == [("-", "/token", 405)])
    assert token_like not in caplog.text


NETWORK = ipaddress.ip_network


@pytest.mark.parametrize(
    "trusted, forwarded_for, client",
    [
        pytest.param((NETWORK("127.0.0.0/8"),), "203.0.113.7", "203.0.113.7", id="trusted-peer"),
        pytest.param(
            (NETWORK("127.0.0.1/32"),),
            "198.51.100.1, 203.0.113.7",
            "203.0.113.7",
            id="rightmost-hop",
        ),
        pytest.param(
            (NETWORK("127.0.0.0/8"), NETWORK("10.0.0.0/8")),
            "203.0.113.7, 10.1.2.3",
            "203.0.113.7",
            id="two-proxies",
        ),
        pytest.param((NETWORK("127.0.0.0/8"),), None, "127.0.0.1", id="trusted-peer-no-header"),
        pytest.param((NETWORK("10.0.0.0/8"),), "203.0.113.7", "127.0.0.1", id="untrusted-peer"),
        pytest.param((), "203.0.113.7", "127.0.0.1", id="no-trusted-proxies"),
    ],
)
def test_access_line_names_the_forwarded_client_only_behind_a_trusted_proxy(
    start_server, caplog, trusted, forwarded_for, client
):
    live = start_server(trusted_proxies=trusted)
    extra = [] if forwarded_for is None else [("X-Forwarded-For", forwarded_for)]
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz", [HOST, *extra]))
        response, _ = read_response(sock)
        assert response.status == 200
    assert wait_for(lambda: len(access_records(caplog)) == 1)
    assert access_records(caplog)[0]["client"] == client


# --------------------------------------------------------------------------
# Any WSGI app: the runner knows nothing of ours


def test_any_wsgi_app_is_served_with_its_access_line(start_server, caplog):
    live = start_server(app=hello_world)
    with live.connect() as sock:
        sock.sendall(build("GET", "/", [HOST, ("Connection", "close")]))
        data = read_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"\r\nContent-Type: text/plain\r\n" in head + b"\r\n"
    assert b"\r\nConnection: close" in head and body == HELLO_BODY
    assert b"\r\nContent-Length: 14\r\n" in head + b"\r\n"
    assert wait_for(lambda: len(access_records(caplog)) == 1)
    assert access_lines(caplog) == [("GET", "/", 200)]


def test_the_runner_passes_wsgirefs_validator(start_server):
    # wsgiref.validate checks the environ, wsgi.input and wsgi.errors, start_response and
    # that the server closes the result; a failed check is an AssertionError, so a 500.
    def app(environ, start_response):
        body = environ["wsgi.input"].read(
            int(environ["CONTENT_LENGTH"])
        )  # the validator wants a size
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    live = start_server(app=wsgiref.validate.validator(app))
    with live.connect() as sock:
        sock.sendall(build("POST", "/echo?x=1", [HOST, ("Content-Length", "5")], b"hello"))
        response, _ = read_response(sock)
        assert (response.status, response.body) == (200, b"hello")


def test_any_wsgi_app_keeps_the_connection_alive(start_server):
    # The app gives no Content-Length: the runner, holding the whole body, adds it, or
    # the client could only read the answer to the end of the connection.
    live = start_server(app=hello_world, idle_timeout=1.0)
    with live.connect() as sock:
        rest = b""
        for _ in range(2):
            sock.sendall(build("GET", "/", [HOST]))
            response, rest = read_response(
                sock, rest
            )  # needs the Content-Length to know where it ends
            assert (response.status, response.body) == (200, HELLO_BODY)
            assert response.values("content-length") == [str(len(HELLO_BODY))]
            assert response.values("connection") == []


def test_any_wsgi_apps_answer_to_head_has_no_body(start_server):
    def app(environ, start_response):
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO_BODY)))]
        )
        return [HELLO_BODY]

    live = start_server(app=app)
    with live.connect() as sock:
        sock.sendall(build("HEAD", "/", [HOST]) + build("GET", "/", [HOST]))
        head, rest = read_response(sock, head=True)
        assert head.status == 200 and head.values("content-length") == [str(len(HELLO_BODY))]
        get, rest = read_response(sock, rest)
        assert (get.status, get.body, rest) == (200, HELLO_BODY, b"")


# --------------------------------------------------------------------------
# python3 server.py, and server.serve() in a process of its own


class ServerProcess(LoggedProcess):
    """`python3 -E -S server.py` (standard library only), its stderr read by a thread."""

    def __init__(self, env: dict, argv: Optional[list] = None) -> None:
        super().__init__(argv or [sys.executable, "-E", "-S", "server.py"], cwd=ROOT, env=env)

    stderr = LoggedProcess.output  # server.py logs to stderr alone

    def stop(self, signum: int = signal.SIGTERM) -> tuple:
        """Send `signum`; (exit code, seconds to exit)."""
        started = time.monotonic()
        code = super().stop(signum)
        return code, time.monotonic() - started


def _access_line(stderr: str, client: str, method: str, path: str, status: int) -> bool:
    return any(
        ACCESS_LINE.fullmatch(line)
        and ACCESS_LINE.fullmatch(line).groups() == (client, method, path, str(status))
        for line in stderr.splitlines()
    )


def test_main_dev_mode_warns_serves_and_drains_on_sigterm():
    process = ServerProcess(_env())
    try:
        port = process.port()
        assert (
            "level=WARNING msg=\"DEVELOPMENT MODE: tokens are signed with LiveKit's public development key"
            in process.stderr
        )
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
    assert re.search(
        r'level=INFO msg="stopping: finishing requests in flight" signal=SIGTERM$',
        process.stderr,
        re.M,
    )
    assert process.stderr.endswith(" level=INFO msg=stopped\n")
    assert _access_line(process.stderr, "127.0.0.1", "POST", "/token", 200)
    _check_process_log(process.stderr)


def test_main_with_credentials_signs_with_them_and_keeps_the_secret_out_of_stderr():
    # SERVER_TRUSTED_PROXIES: the access line names the client the proxy (here, the test) forwards for.
    process = ServerProcess(
        _env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SERVER_TRUSTED_PROXIES="127.0.0.1")
    )
    try:
        port = process.port()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(token_request("carol", extra=[("X-Forwarded-For", "203.0.113.7")]))
            response, _ = read_response(sock)
        assert response.status == 200
        assert (
            livekit_auth.TokenVerifier(KEY, SECRET).verify(response.json()["token"]).identity
            == "carol"
        )
        assert wait_for(lambda: _access_line(process.stderr, "203.0.113.7", "POST", "/token", 200))
        code, seconds = process.stop()
        assert code == 0 and seconds < 2.0
    finally:
        process.kill()
    assert "DEVELOPMENT MODE" not in process.stderr and "shorter than 32" not in process.stderr
    _check_process_log(process.stderr)


@pytest.mark.parametrize(
    "signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name
)
def test_main_drains_on_a_signal_answering_the_request_in_flight(signum):
    process = ServerProcess(_env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET))
    try:
        port = process.port()
        body = token_body("in-flight")
        head = build(
            "POST",
            "/token",
            [HOST, JSON, ("Content-Length", str(len(body))), ("Expect", "100-continue")],
        )
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(head)
            # The interim answer goes out as the app starts reading the body: the request is in flight.
            assert recv_before(sock, time.monotonic() + TIMEOUT) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body[:10])
            process.proc.send_signal(signum)
            assert wait_for(lambda: f"signal={signum.name}" in process.stderr)
            assert wait_for(lambda: refused(("127.0.0.1", port)))  # no longer accepting
            sock.sendall(body[10:])  # the rest of the body, after the signal
            response, rest = read_response(sock)
            assert response.status == 200 and response.values("connection") == ["close"]
            assert (
                livekit_auth.TokenVerifier(KEY, SECRET).verify(response.json()["token"]).identity
                == "in-flight"
            )
            expect_closed(sock, rest)
        assert process.proc.wait(TIMEOUT) == 0
        process.reader.join(TIMEOUT)
    finally:
        process.kill()
    stopping = f'level=INFO msg="stopping: finishing requests in flight" signal={signum.name}$'
    assert re.search(stopping, process.stderr, re.M)
    assert process.stderr.endswith(" level=INFO msg=stopped\n")
    assert _access_line(process.stderr, "127.0.0.1", "POST", "/token", 200)
    _check_process_log(process.stderr)


def test_main_second_signal_ends_the_process_at_once():
    process = ServerProcess(_env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET))
    try:
        port = process.port()
        head = build(
            "POST", "/token", [HOST, JSON, ("Content-Length", "100"), ("Expect", "100-continue")]
        )
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(head)
            assert recv_before(sock, time.monotonic() + TIMEOUT) == b"HTTP/1.1 100 Continue\r\n\r\n"
            process.proc.send_signal(
                signal.SIGTERM
            )  # the drain waits for this request, up to 10 s...
            assert wait_for(lambda: "signal=SIGTERM" in process.stderr)
            started = time.monotonic()
            process.proc.send_signal(signal.SIGTERM)  # ...unless told again
            assert process.proc.wait(TIMEOUT) == -signal.SIGTERM
            assert time.monotonic() - started < 1.0
    finally:
        process.kill()


@pytest.mark.parametrize("host", ["bad host!", "[::1]"])
def test_main_with_an_unusable_host_exits_2_naming_it(host):
    process = ServerProcess(_env(SERVER_HOST=host))
    try:
        assert process.proc.wait(TIMEOUT) == 2
        process.reader.join(TIMEOUT)
    finally:
        process.kill()
    message = "server.host (SERVER_HOST) is not an address of this machine"
    assert f'level=ERROR msg="configuration error" error="{message}"' in process.stderr


# The test above, in this process: a child started with -S has no site-packages,
# so coverage (README, "Tests") cannot measure it.


@pytest.mark.parametrize(
    "host", ["bad host!", "[::1]", "192.0.2.1"], ids=["not-a-name", "bracketed", "test-net"]
)
def test_make_server_with_a_host_not_of_this_machine_is_a_settings_error(host):
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host=host, port=0)
    with pytest.raises(
        server.SettingsError,
        match=r"^server\.host \(SERVER_HOST\) is not an address of this machine$",
    ):
        server.make_server(hello_world, settings)


HELLO_SCRIPT = """
import sys; sys.path.insert(0, sys.argv[1]); import server
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!\\n"]
server.configure_logging()
server.serve(app, server.Settings(api_key="k", api_secret="a-runner-test-secret-of-32-chars-or-more", host="127.0.0.1", port=0, idle_timeout=1))
"""


def test_serve_runs_any_wsgi_app_in_its_own_process():
    process = ServerProcess({}, [sys.executable, "-I", "-S", "-c", HELLO_SCRIPT, str(ROOT)])
    try:
        port = process.port()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(build("GET", "/hello?name=x", [HOST, ("Connection", "close")]))
            data = read_eof(sock)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + HELLO_BODY)
        assert wait_for(lambda: _access_line(process.stderr, "127.0.0.1", "GET", "/hello", 200))
        code, seconds = process.stop()
        assert code == 0 and seconds < 2.0
    finally:
        process.kill()
    assert process.stderr.endswith(" level=INFO msg=stopped\n")
    _check_process_log(process.stderr)


IMPORT_SCRIPT = """
import json, sys; sys.path.insert(0, sys.argv[1])
runner = ("socketserver", "http.server")
import server
before = [name for name in runner if name in sys.modules]
settings = server.Settings(api_key="k", api_secret="a-runner-test-secret-of-32-chars-or-more", host="127.0.0.1", port=0)
server.make_server(lambda environ, start_response: [], settings).server_close()
print(json.dumps([before, [name for name in runner if name in sys.modules]]))
"""


def test_import_server_loads_neither_socketserver_nor_http_server():
    # gunicorn and embedders import server for its app: the runner's modules come with make_server() only.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_SCRIPT, str(ROOT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], ["socketserver", "http.server"]]


# --------------------------------------------------------------------------
# Routing as sent, the access line's facts, serve() from any thread


def request_lines(caplog) -> list:
    return [record.fields for record in log_records(caplog) if record.getMessage() == "request"]


@pytest.mark.parametrize("path", ["//token", "///token", "//healthz"])
def test_a_path_is_routed_as_sent(live, caplog, path):
    # http.server's parse_request would make "//token" "/token": a proxy rule keyed on the
    # raw path could then be bypassed.
    with live.connect() as sock:
        sock.sendall(
            build("POST", path, [HOST, ("Content-Type", "application/json")], token_body())
        )
        response, _ = read_response(sock)
    assert (response.status, response.json()) == (404, {"errorMessage": "Not found"})
    assert wait_for(lambda: any(fields["path"] == path for fields in request_lines(caplog)))


def test_the_access_line_says_who_got_a_token_and_why_a_request_was_refused(live, caplog):
    with live.connect() as sock:
        sock.sendall(token_request("alice", "room-7"))
        response, rest = read_response(sock)
        assert response.status == 200
        sock.sendall(build("POST", "/webhook", [HOST, ("Authorization", "not-a-token")], b"{}"))
        response, _ = read_response(sock, rest)
        assert response.status == 401
    assert wait_for(lambda: len(request_lines(caplog)) == 2)
    token_line, webhook_line = request_lines(caplog)
    assert {key: token_line[key] for key in ("path", "status", "room", "identity")} == {
        "path": "/token",
        "status": 200,
        "room": "room-7",
        "identity": "alice",
    }
    assert {key: webhook_line[key] for key in ("path", "status", "reason")} == {
        "path": "/webhook",
        "status": 401,
        "reason": "token must have three dot-separated segments",
    }
    assert "room" not in webhook_line


def test_the_runner_s_own_refusal_gives_its_reason_in_the_access_line(live, caplog):
    with live.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n")
        response, _ = read_response(sock)
    assert response.status == 400
    assert wait_for(lambda: request_lines(caplog))
    assert request_lines(caplog)[0]["reason"] == "Repeated header field"


def test_access_log_off_writes_no_request_line_and_still_warns(start_server, caplog):
    running = start_server(access_log=False, allowed_origins=frozenset(["*"]))
    with running.connect() as sock:
        sock.sendall(token_request())
        response, _ = read_response(sock)
        assert response.status == 200
    running.drain_and_join(grace=2)
    messages = [record.getMessage() for record in log_records(caplog)]
    assert "request" not in messages
    assert messages[-1] == "stopped"


def test_serve_from_another_thread_serves_until_its_stop_event_is_set(caplog):
    before = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    thread = run_serve_in_thread(settings, stop)
    port = listening_port(caplog)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(HEALTHZ)
        response, _ = read_response(sock)
        assert response.status == 200
    # Signals reach only the main thread: serve() from another one installs no handler.
    assert signal.getsignal(signal.SIGTERM) is before
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    messages = [r.getMessage() for r in log_records(caplog)]
    assert "stopping: finishing requests in flight" in messages and messages[-1] == "stopped"


def test_serve_without_credentials_says_development_mode_and_listens_on_loopback(caplog):
    stop = threading.Event()
    settings = server.Settings(api_key="devkey", api_secret="secret", port=0)
    thread = run_serve_in_thread(settings, stop)
    listening_port(caplog)
    stop.set()
    thread.join(TIMEOUT)
    listening = next(r for r in log_records(caplog) if r.getMessage() == "listening")
    assert listening.fields["host"] == "127.0.0.1"
    warnings = [r.getMessage() for r in log_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("DEVELOPMENT MODE: ")
    assert "Listening on loopback only" in warnings[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(
    not hasattr(__import__("resource"), "prlimit"), reason="needs resource.prlimit (Linux)"
)
def test_out_of_file_descriptors_the_acceptor_waits_instead_of_spinning():
    import resource

    process = ServerProcess(
        _env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SERVER_IDLE_TIMEOUT="30")
    )
    silent: list = []
    try:
        port = process.port()
        resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (40, 40))
        for _ in range(70):
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        assert wait_for(lambda: "out of file descriptors" in process.stderr)
        before = cpu_seconds(process.proc.pid)
        time.sleep(2)
        used = cpu_seconds(process.proc.pid) - before
        # Spinning on accept() took a whole core: 2 s of CPU in these 2 s.
        assert used < 0.5, used
        assert process.stderr.count("out of file descriptors") == 1, process.stderr
        for sock in silent:
            sock.close()
        silent.clear()
        # It recovers by itself once descriptors free up.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(HEALTHZ)
            response, _ = read_response(sock)
            assert response.status == 200
        assert process.stop()[0] == 0
    finally:
        for sock in silent:
            sock.close()
        process.kill()
    assert (
        'level=WARNING msg="out of file descriptors: new connections wait until some close"'
        in process.stderr
    )


class ShortOfDescriptors:
    """A listening socket whose accept() fails `failures` times with `error` (EMFILE: out of descriptors)."""

    def __init__(self, sock: socket.socket, failures: int, error: int = errno.EMFILE) -> None:
        self.sock = sock
        self.failures = failures
        self.error = error
        self.tries = 0

    def accept(self):
        self.tries += 1
        if self.tries <= self.failures:
            raise OSError(self.error, os.strerror(self.error))
        return self.sock.accept()

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def test_out_of_descriptors_the_acceptor_waits_between_tries_and_says_so_once(live, caplog):
    short = ShortOfDescriptors(live.server.socket, failures=3)
    live.server.socket = short
    started = time.monotonic()
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        response, _ = read_response(sock)
    assert response.status == 200
    # Three failed tries, each followed by a wait for a connection to end, or 0.1 s.
    assert short.tries == 4 and time.monotonic() - started >= 3 * server.MAKE_ROOM_AFTER
    warnings = [r.getMessage() for r in log_records(caplog) if r.levelno == logging.WARNING]
    assert warnings == ["out of file descriptors: new connections wait until some close"]


def test_another_accept_error_is_tried_again_at_once_without_a_warning(live, caplog):
    # ECONNABORTED: a client gave up while queued. socketserver's own handling, untouched.
    short = ShortOfDescriptors(live.server.socket, failures=1, error=errno.ECONNABORTED)
    live.server.socket = short
    with live.connect() as sock:
        sock.sendall(HEALTHZ)
        assert read_response(sock)[0].status == 200
    assert short.tries == 2
    assert not [r for r in log_records(caplog) if r.levelno >= logging.WARNING]


def test_a_request_taken_off_the_socket_is_not_closed_to_make_room(start_server):
    # The acceptor decides under connections_lock; the connection's thread must not take the
    # request off the socket while the connection still counts as idle.
    live = start_server(max_connections=1, idle_timeout=2.0, request_timeout=2.0)
    with live.connect() as sock:
        assert wait_for(lambda: live.idle_connections() == 1)
        time.sleep(server.MAKE_ROOM_AFTER + 0.05)  # idle long enough to be closed for room
        with live.server.connections_lock:
            sock.sendall(HEALTHZ)
            time.sleep(0.1)  # the connection's thread takes what it can before it needs the lock
            closed = live.server.make_room()
        response, _ = read_response(sock)
    assert (closed, response.status) == (False, 200)


def test_a_repeated_field_reaches_the_app_as_one_comma_separated_value(live):
    # RFC 9110 §5.3: a field sent on several lines means its values joined by commas.
    spy = SpyApp(live.server.app)
    live.server.app = spy
    headers = [
        HOST,
        ("X-Forwarded-For", "203.0.113.1"),
        ("Accept", "a/b"),
        ("x-forwarded-for", "10.0.0.2"),
    ]
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz", headers))
        assert read_response(sock)[0].status == 200
    (environ,) = spy.environs
    assert environ["HTTP_X_FORWARDED_FOR"] == "203.0.113.1, 10.0.0.2"
    assert environ["HTTP_ACCEPT"] == "a/b"


@pytest.mark.parametrize(
    "version,connection,closed",
    [
        ("HTTP/1.1", "keep-alive, close", True),
        ("HTTP/1.1", "Upgrade,Close", True),
        ("HTTP/1.1", "keep-alive, upgrade", False),
        ("HTTP/1.0", "te, keep-alive", False),
        ("HTTP/1.0", "te", True),
    ],
    ids=[
        "close-listed-second",
        "close-without-space",
        "no-close",
        "keep-alive-listed-second",
        "1.0-default",
    ],
)
def test_connection_options_are_read_as_a_list(live, version, connection, closed):
    with live.connect() as sock:
        sock.sendall(build("GET", "/healthz", [HOST, ("Connection", connection)], version=version))
        response, rest = read_response(sock)
        assert response.status == 200
        expected = ["close"] if closed else [] if version == "HTTP/1.1" else ["keep-alive"]
        assert response.values("connection") == expected
        if closed:
            expect_closed(sock, rest)
        else:
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0].status == 200


def test_a_client_trickling_faster_than_a_read_wait_still_gets_408_at_the_deadline(live):
    # Past the deadline, reads take what has arrived for LATE_READS_SECONDS and no longer: a
    # byte every 2 ms must not keep the request going.
    with live.connect() as sock:
        data, elapsed = _trickle(
            sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ", b"a", every=0.002, limit=4.0
        )
        assert elapsed <= 1.0 + 0.8, elapsed
        response, _ = read_response(sock, data)
        assert (response.status, response.json()) == (408, {"errorMessage": "Request timed out"})


def test_only_a_few_blank_bytes_are_skipped_before_a_request(live):
    with live.connect() as sock:
        sock.sendall(b"\r\n" + HEALTHZ)
        response, rest = read_response(sock)
        assert response.status == 200
        # A flood of empty lines is no request: a malformed request line, not an endless wait.
        sock.sendall(b"\r\n" * 50 + HEALTHZ)
        response, rest = read_response(sock, rest)
        assert (response.status, response.json()) == (
            400,
            {"errorMessage": "Malformed request line"},
        )
        expect_closed(sock, rest)


def test_a_target_that_is_not_a_path_is_not_written_to_the_access_line(live, caplog):
    with live.connect() as sock:
        sock.sendall(
            b"GET http://user:secret-password@example.com/healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        response, _ = read_response(sock)
    assert response.status == 400
    assert wait_for(lambda: request_lines(caplog))
    assert request_lines(caplog)[0]["path"] == "-"
    assert "secret-password" not in caplog.text
