"""`server:application` under real WSGI servers: gunicorn (pre-fork) and waitress (threads).

Each host runs as its own process from the project root, configured by the
environment alone, as the README shows; requests go over loopback sockets.
Both must give the same answers as the built-in runner: both /token shapes,
a signed /webhook, /healthz, a CORS preflight, and a 400 with its
errorMessage. gunicorn and waitress are test-only (requirements-test.txt).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

import livekit_auth
from helpers import webhook_authorization
from support_http import TIMEOUT, LoggedProcess, http_request

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's scripts: gunicorn, waitress-serve
KEY = "wsgikey"
SECRET = "a-wsgi-host-secret-of-32-chars-or-more"
LIVEKIT_URL = "wss://livekit.example.test"
ORIGIN = "https://app.example.test"

HOSTS = {
    # -w 2: two worker processes, each building its own app from the environment.
    # No control socket: gunicorn would otherwise create one under $HOME.
    "gunicorn": (
        [
            "gunicorn",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--no-control-socket",
            "--graceful-timeout",
            "3",
            "server:application",
        ],
        re.compile(r"Listening at: http://127\.0\.0\.1:([0-9]+)"),
    ),
    "waitress": (
        ["waitress-serve", "--listen=127.0.0.1:0", "server:application"],
        re.compile(r"Serving on http://127\.0\.0\.1:([0-9]+)"),
    ),
}


class Host(LoggedProcess):
    """A WSGI host serving server:application; its log is stdout and stderr together."""

    def __init__(self, argv: list, env: dict = None) -> None:
        if env is None:
            env = {
                "LIVEKIT_API_KEY": KEY,
                "LIVEKIT_API_SECRET": SECRET,
                "LIVEKIT_URL": LIVEKIT_URL,
                "CORS_ALLOWED_ORIGINS": ORIGIN,
            }
        env = {"PATH": os.environ.get("PATH", ""), **env}
        super().__init__([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=env, stderr_to_stdout=True)

    def wait_ready(self, pattern: re.Pattern) -> int:
        """The port from the host's log, once /healthz answers there.

        Not LoggedProcess.port: one deadline covers both the listening line and
        the first /healthz answer, and an early exit fails at once.
        """
        deadline = time.monotonic() + TIMEOUT
        while not pattern.search(self.output):
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, f"no listening line in time:\n{self.output}"
            time.sleep(0.02)
        port = int(pattern.search(self.output)[1])
        while True:
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    return port
            except OSError:
                pass
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, f"/healthz not answered in time:\n{self.output}"
            time.sleep(0.02)

    def stop(self) -> int:
        # gunicorn stops gracefully on SIGTERM; waitress-serve on SIGINT (Ctrl-C).
        return super().stop(signal.SIGINT if "waitress" in self.proc.args[0] else signal.SIGTERM)


@pytest.fixture(scope="module", params=sorted(HOSTS))
def host(request):
    argv, pattern = HOSTS[request.param]
    if not (BIN / argv[0]).exists():
        pytest.skip(
            f"{argv[0]} is not installed next to {sys.executable} (pip install -r requirements-test.txt)"
        )
    process = Host(argv)
    try:
        port = process.wait_ready(pattern)
        yield port
        assert process.stop() == 0, process.output
    finally:
        process.kill()
    assert "Traceback" not in process.output
    assert SECRET not in process.output


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict = None) -> tuple:
    """(status, headers as a dict of lower-case names, JSON body or None)."""
    status, headers, data = http_request(port, method, path, body, headers)
    return status, headers, json.loads(data) if data else None


def post_json(port: int, path: str, value: dict, headers: dict = None) -> tuple:
    body = json.dumps(value).encode("utf-8")
    return request(
        port, "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
    )


VERIFIER = livekit_auth.TokenVerifier(KEY, SECRET)


def test_healthz(host):
    status, headers, body = request(host, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"


def test_openvidu_token(host):
    status, _, body = post_json(
        host, "/token", {"roomName": "Test Room", "participantName": "Participant42"}
    )
    assert status == 200 and list(body) == ["token"]
    claims = VERIFIER.verify(body["token"])
    assert (claims.identity, claims.video.room, claims.video.room_join) == (
        "Participant42",
        "Test Room",
        True,
    )


def test_standard_token(host):
    request_body = {
        "room_name": "Test Room",
        "participant_identity": "alice",
        "participant_name": "Alice",
    }
    status, _, body = post_json(host, "/token", request_body)
    assert status == 201 and sorted(body) == ["participant_token", "server_url"]
    assert body["server_url"] == LIVEKIT_URL
    claims = VERIFIER.verify(body["participant_token"])
    assert (claims.identity, claims.name, claims.video.room) == ("alice", "Alice", "Test Room")


def test_signed_webhook_is_taken_and_a_changed_body_refused(host):
    event = b'{"event":"room_started","id":"EV_wsgi","room":{"name":"Test Room"}}'
    authorization = webhook_authorization(KEY, SECRET, event)
    headers = {"Content-Type": "application/webhook+json", "Authorization": authorization}
    status, _, body = request(host, "POST", "/webhook", event, headers)
    assert (status, body) == (200, {"status": "ok"})
    status, _, body = request(
        host, "POST", "/webhook", event.replace(b"EV_wsgi", b"EV_wsgj"), headers
    )
    assert status == 401 and list(body) == ["errorMessage"]


def test_preflight_answers_with_the_cors_headers(host):
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, answer, body = request(host, "OPTIONS", "/token", headers=headers)
    assert (status, body) == (204, None)
    assert answer["access-control-allow-origin"] == ORIGIN
    assert answer["vary"] == "Origin"
    assert answer["access-control-allow-methods"] == "POST, OPTIONS"
    assert {"Authorization", "Content-Type"} <= set(
        answer["access-control-allow-headers"].split(", ")
    )
    assert "access-control-allow-credentials" not in answer
    # An origin not listed is not echoed.
    status, answer, _ = request(
        host, "OPTIONS", "/token", headers={**headers, "Origin": "https://evil.example.test"}
    )
    assert status == 204 and "access-control-allow-origin" not in answer


def test_bad_request_is_400_with_its_error_message(host):
    status, headers, body = post_json(host, "/token", {"roomName": ""}, {"Origin": ORIGIN})
    assert (status, body) == (400, {"errorMessage": "roomName and participantName are required"})
    # Errors carry CORS headers too, so a browser can read the message.
    assert headers["access-control-allow-origin"] == ORIGIN


# --------------------------------------------------------------------------
# Development mode under a WSGI server, which alone knows where it listens

GUNICORN = ["gunicorn", "-w", "1", "-b", "127.0.0.1:0", "--no-control-socket", "server:application"]


def gunicorn_with(env: dict) -> Host:
    if not (BIN / "gunicorn").exists():
        pytest.skip(
            "gunicorn is not installed next to this Python (pip install -r requirements-test.txt)"
        )
    return Host(GUNICORN, env)


def test_gunicorn_without_credentials_refuses_to_start():
    process = gunicorn_with({})
    try:
        code = process.proc.wait(TIMEOUT)
    finally:
        process.kill()
    assert code != 0
    assert (
        'level=ERROR msg="configuration error" error="development mode (LiveKit\'s public development key, '
        "used when LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set) under a WSGI server needs "
        'server.allow_dev_mode (SERVER_ALLOW_DEV_MODE)=true"'
    ) in process.output
    assert "Listening on loopback" not in process.output


def test_gunicorn_in_development_mode_when_allowed_says_so_without_claiming_where_it_listens():
    process = gunicorn_with({"SERVER_ALLOW_DEV_MODE": "true"})
    try:
        port = process.wait_ready(HOSTS["gunicorn"][1])
        status, _, body = post_json(port, "/token", {"roomName": "r", "participantName": "p"})
        assert status == 200 and list(body) == ["token"]
        assert process.stop() == 0
    finally:
        process.kill()
    assert (
        "DEVELOPMENT MODE: tokens are signed with LiveKit's public development key, which anyone can sign with; "
        "webhooks are taken only from this machine. Where it listens is the WSGI server's choice: "
        "never expose it."
    ) in process.output
    assert "loopback" not in process.output and "6080" not in process.output
