"""Test helpers: the official SDK on a frozen clock, comparable claim views, input mutators,
and webhook Authorization values as LiveKit signs them; and what several test modules share:
the app called directly on a clock the tests step, and the server's log guard and answer
checks over loopback sockets.

The SDK (livekit-api, with PyJWT) is imported here and in tests only, never by
livekit_auth.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import io
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import types
from pathlib import Path
from typing import Optional

import jwt.api_jwt
import pytest
from google.protobuf.json_format import MessageToDict
from livekit import api
from livekit.api import access_token as sdk_access_token

import livekit_auth as la
import server
import support_http
from server import Settings, make_app
from support_http import LoggedProcess, build, wait_for
from support_wsgi import Response, environ_for, run_app
from vectors import body_sha256


def freeze_sdk_clock(monkeypatch, now: float) -> None:
    """Run the SDK at `now` instead of the system clock, both where it mints and where it checks.

    The SDK mints nbf/exp from datetime.datetime.now() in livekit.api.access_token;
    PyJWT checks exp/nbf/iat against datetime.now() in jwt.api_jwt. Pinning both
    lets one `now` drive the SDK and our `now=` argument alike, to the second
    and at the leeway edges. If either library stops reading the clock there,
    the tests that run the SDK on the 2025 golden vectors fail loudly (expired).
    """

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromtimestamp(now, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", FrozenDatetime)
    monkeypatch.setattr(
        sdk_access_token,
        "datetime",
        types.SimpleNamespace(
            datetime=FrozenDatetime, timezone=datetime.timezone, timedelta=datetime.timedelta
        ),
    )


def webhook_authorization(
    key: str, secret: str, body: bytes, *, now: Optional[float] = None, ttl: Optional[int] = None
) -> str:
    """An Authorization value as LiveKit sends it with a webhook: a JWT whose sha256 claim is the body's hash.

    `now` None mints at the real clock; `ttl` (seconds) None keeps AccessToken's default lifetime.
    """
    token = la.AccessToken(key, secret).with_sha256(body_sha256(body))
    if ttl is not None:
        token = token.with_ttl(datetime.timedelta(seconds=ttl))
    return token.to_jwt(now=now)


def sdk_view(claims: api.Claims) -> dict:
    """What the SDK's verifier read from a token, in a shape comparable with our_view."""
    return {
        "identity": claims.identity,
        "name": claims.name,
        "kind": claims.kind,
        "metadata": claims.metadata,
        # The SDK always returns grants: its defaults when the claim is absent.
        "video": dataclasses.asdict(claims.video),
        "sip": dataclasses.asdict(claims.sip),
        "attributes": claims.attributes,
        "sha256": claims.sha256,
        "room_preset": claims.room_preset or "",
        "room_config": None if claims.room_config is None else MessageToDict(claims.room_config),
    }


def our_view(claims: la.Claims) -> dict:
    """What our verifier read from a token, absent grants shown as the defaults (as the SDK does)."""
    return {
        "identity": claims.identity,
        "name": claims.name,
        "kind": claims.kind,
        "metadata": claims.metadata,
        "video": dataclasses.asdict(claims.video or la.VideoGrants()),
        "sip": dataclasses.asdict(claims.sip or la.SIPGrants()),
        "attributes": claims.attributes,
        "sha256": claims.sha256,
        "room_preset": claims.room_preset,
        "room_config": None if claims.room_config is None else claims.room_config.to_dict(),
    }


# Characters a mutation may write: the base64url alphabet, the separators and
# base64 relatives, whitespace, control, non-ASCII and a lone surrogate.
_CHARS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ".=+/ \t\n\x00\x7f\u00e9\u2019\U0001f600\ud800"
)


def mutate_text(rng: random.Random, text: str, huge: int) -> object:
    """One random edit of a token or header; sometimes not a str at all."""
    kind = rng.randrange(12)
    i = rng.randrange(len(text) + 1)
    if kind == 0:  # replace one character
        return text[:i] + rng.choice(_CHARS) + text[i + 1 :]
    if kind == 1:  # delete a run
        return text[:i] + text[i + rng.randint(1, 8) :]
    if kind == 2:  # insert characters
        return text[:i] + "".join(rng.choice(_CHARS) for _ in range(rng.randint(1, 4))) + text[i:]
    if kind == 3:  # truncate
        return text[:i]
    if kind == 4:  # duplicate, drop or swap whole segments
        parts = text.split(".")
        j = rng.randrange(len(parts))
        action = rng.randrange(3)
        if action == 0:
            parts.insert(j, parts[j])
        elif action == 1:
            del parts[j]
        else:
            k = rng.randrange(len(parts))
            parts[j], parts[k] = parts[k], parts[j]
        return ".".join(parts)
    if kind == 5:  # stray dots
        return text[:i] + "." * rng.randint(1, 3) + text[i:]
    if kind == 6:  # huge: around the length limit and far past it
        return text + rng.choice("A.=\u00e9") * rng.choice((huge - len(text), huge, 4 * huge))
    if kind == 7:  # flip the case of a run (base64url is case-sensitive)
        j = i + rng.randint(1, 6)
        return text[:i] + text[i:j].swapcase() + text[j:]
    if kind == 8:  # padding, which canonical base64url never has
        return text + "=" * rng.randint(1, 3)
    if kind == 9:  # surrounding whitespace
        return rng.choice((" ", "\n", "\t", "\r\n")) + text + rng.choice(("", " ", "\n"))
    if kind == 10:  # not a str
        return rng.choice(
            (
                None,
                text.encode("utf-8", "surrogatepass"),
                bytearray(b"x.y.z"),
                0,
                1.5,
                [text],
                {"t": text},
            )
        )
    return text  # unchanged: the valid input still verifies


# Bytes a JSON mutation may insert: syntax, number edge cases, escapes, non-UTF-8.
_JSON_SNIPPETS = (
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b'"',
    b"\\",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-0",
    b"9" * 5000,
    b"true",
    b"null",
    b'"\\ud800"',
    b'"\\udc00"',
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\x00",
    b" ",
    b"[" * 3000,
)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One random edit of JSON text: byte flips, deletions, or JSON-significant snippets."""
    kind = rng.randrange(4)
    i = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if kind == 1:
        return data[:i] + data[i + rng.randint(1, 8) :]
    if kind == 2:
        return data[:i] + rng.choice(_JSON_SNIPPETS) + data[i:]
    return data[:i]


# Values a claim may be replaced with: every JSON type, and the near misses.
JSON_VALUES = (
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63,
    10**30,
    1.5,
    1e300,
    "",
    "x",
    "1735689600",
    "\ud800",
    [],
    ["camera"],
    [1],
    {},
    {"a": 1},
    {"a": "b"},
)


def mutate_claims(rng: random.Random, claims: dict, names: tuple) -> dict:
    """Replace, drop or add one claim (or one field of a grant) with a random JSON value."""
    claims = dict(claims)
    name = rng.choice(names)
    action = rng.randrange(4)
    if action == 0:
        claims.pop(name, None)
    elif action == 1 and isinstance(claims.get(name), dict) and claims[name]:
        inner = dict(claims[name])
        inner[rng.choice(list(inner))] = rng.choice(JSON_VALUES)
        claims[name] = inner
    else:
        claims[name] = rng.choice(JSON_VALUES)
    return claims


# What a command a test starts needs in its environment to be measured by the coverage
# command (pyproject.toml, [tool.coverage.run]); empty in a plain run.
COVERAGE_ENV = {name: value for name, value in os.environ.items() if name.startswith("COVERAGE_")}


# --------------------------------------------------------------------------
# The app called directly, under wsgiref's validator, on a clock the tests step
# (test_app.py, test_token_policy.py, test_webhook_delivery.py, test_settings.py)

FIXED_NOW = 1735689600  # 2025-01-01T00:00:00Z, the vectors' clock
API_KEY = "APItestkey"
API_SECRET = "test-secret-that-must-never-leak-0123456789"
AUTH_1 = "s1-bearer-secret-for-the-backend-0123456789"
AUTH_2 = "s2-next-bearer-secret-for-rotation-abcdefgh"
VECTORS = json.loads(
    (Path(__file__).resolve().parent / "livekit-vectors.json").read_text(encoding="utf-8")
)
VECTOR = {vector["name"]: vector for vector in VECTORS["vectors"]}


class Clock:
    """Unix seconds that move only when a test steps them."""

    def __init__(self, now: float = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def settings(**overrides) -> Settings:
    # The rate limit is off unless a test is about it.
    values = dict(api_key=API_KEY, api_secret=API_SECRET, rate_per_minute=0)
    values.update(overrides)
    return Settings(**values)


def app_for(clock=lambda: FIXED_NOW, on_event=None, **overrides):
    return make_app(settings(**overrides), clock=clock, on_event=on_event)


def call(
    app,
    method: str = "POST",
    path: str = "/token",
    body: bytes = b"",
    *,
    headers: dict = None,
    remote_addr: str = "192.0.2.1",
    content_type: str = "application/json",
    content_length: str = None,
    wsgi_input=None,
) -> Response:
    """One request from `remote_addr`, under wsgiref's validator."""
    environ = environ_for(method, path, io.BytesIO(body) if wsgi_input is None else wsgi_input)
    environ.update(
        {
            "REMOTE_ADDR": remote_addr,
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        }
    )
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    response = run_app(app, environ)
    # No answer ever carries a secret of the server's.
    for secret in [app.settings.api_secret, *app.settings.auth_secrets]:
        assert secret.encode() not in response.body
        assert not any(secret in value for _, value in response.headers)
    return response


def error(message: str) -> dict:
    return {"errorMessage": message}


def verify_ours(token: str, now: float = FIXED_NOW) -> la.Claims:
    return la.TokenVerifier(API_KEY, API_SECRET).verify(token, now=now)


def event(event_id: str = "EV_1", room: str = "room-1", kind: str = "participant_joined") -> dict:
    value = {"event": kind, "room": {"sid": "RM_1", "name": room}, "createdAt": "1735689600"}
    if event_id is not None:
        value["id"] = event_id
    return value


def signed(
    body: bytes, *, key: str = API_KEY, secret: str = API_SECRET, now: float = FIXED_NOW
) -> str:
    """An Authorization value as LiveKit sends it: a JWT with the body's sha256, 5 minutes."""
    return webhook_authorization(key, secret, body, now=now, ttl=300)


def record(events: list):
    """An on_event handler that keeps each event's JSON object; it checks that the handler gets a WebhookEvent."""

    def on_event(value) -> None:
        assert type(value) is la.WebhookEvent
        events.append(value.to_dict())

    return on_event


def deliver(
    app, value: dict, *, key: str = API_KEY, secret: str = API_SECRET, path: str = "/webhook"
) -> Response:
    """POST an event, signed at the app's current time."""
    body = json.dumps(value, separators=(",", ":")).encode()
    authorization = signed(body, key=key, secret=secret, now=app.policy.clock())
    return call(
        app,
        "POST",
        path,
        body,
        content_type="application/webhook+json",
        headers={"Authorization": authorization},
    )


OK = (200, {"status": "ok"})


def dedupe_app(clock, events, **overrides):
    return app_for(clock=clock, on_event=record(events), **overrides)


# --------------------------------------------------------------------------
# The server over loopback sockets, and server.py as a command (test_runner.py,
# test_logging_and_main.py, test_settings.py)

ROOT = Path(__file__).resolve().parents[1]
KEY = "testkey"
SECRET = "a-test-secret-of-at-least-32-chars!!"
# Three base64url segments of 10+ characters: a JWT, or near enough to be one.
JWT_RE = re.compile(r"[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")
# server.py's access line on standard error (LogfmtFormatter).
STAMP = r"time=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
# time=2025-01-01T00:00:00.000Z: UTC, milliseconds.
TIME = r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
HOST = ("Host", "test")
HEALTHZ = build("GET", "/healthz", [HOST])


def read_response(sock: socket.socket, pending: bytes = b"", *, head: bool = False) -> tuple:
    """(Response, bytes received past it), checked by check_answer. Fails on EOF before a whole answer."""
    response, rest = support_http.read_response(sock, pending, head=head)
    check_answer(response)
    return response, rest


def check_answer(response: support_http.Response) -> None:
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


@pytest.fixture
def thread_crashes(monkeypatch) -> list:
    """Exceptions that escaped a thread (they would print a traceback to stderr)."""
    crashes: list = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args))
    return crashes


def log_records(caplog) -> list:
    """The server logger's records of the whole test: setup, call and teardown."""
    # caplog.records holds only the current phase: read the records of all three.
    return [
        record
        for when in ("setup", "call", "teardown")
        for record in caplog.get_records(when)
        if record.name == "livekit_token_server"
    ]


@pytest.fixture
def guard(caplog, thread_crashes):
    """Capture the server's log for the test; afterwards no secret, JWT or traceback in it."""
    caplog.set_level(logging.INFO, logger="livekit_token_server")
    yield caplog
    # Torn down after start_server, so the server threads are done.
    records = log_records(caplog)
    formatter = (
        server.LogfmtFormatter()
    )  # as server.py writes them: the fields are where the data is
    text = "\n".join(formatter.format(record) for record in records)
    assert SECRET not in text
    assert "Traceback" not in text
    assert not JWT_RE.search(text), JWT_RE.search(text)
    assert all(record.exc_info is None for record in records)
    assert thread_crashes == [], [(c.exc_type, c.exc_value) for c in thread_crashes]


def run_serve_in_thread(settings: server.Settings, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve,
        args=(server.make_app(settings), settings),
        kwargs={"grace": 2, "stop": stop},
        daemon=True,
    )
    thread.start()
    return thread


def listening_port(caplog) -> int:
    assert wait_for(lambda: any(r.getMessage() == "listening" for r in log_records(caplog)))
    return next(r.fields["port"] for r in log_records(caplog) if r.getMessage() == "listening")


def _env(**values: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": "0",
    }
    env.update(values)
    return env


def _check_process_log(text: str) -> None:
    assert "Traceback" not in text
    assert SECRET not in text
    assert not JWT_RE.search(text), text
    for line in text.splitlines():  # every line is one logfmt record
        assert re.match(STAMP + r" level=(INFO|WARNING|ERROR) msg=", line), line


def start(**env: str) -> LoggedProcess:
    """`python3 -E -S server.py` with only `env` (and PATH): no credentials means development mode."""
    return LoggedProcess(
        [sys.executable, "-E", "-S", "server.py"],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )
