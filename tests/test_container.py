"""The Dockerfile, checked without Docker: what the image holds is enough to serve.

The Dockerfile is parsed (continuations and comments as Docker reads them);
exactly the paths its COPY lines name are copied into an empty directory, its
compile step runs there, and its CMD runs there with its ENV and configuration
from the environment alone,
as `docker run -e ...` would. Over real loopback sockets: /healthz, /token,
a signed /webhook; the HEALTHCHECK command exits 0 against it and 1 once it
has stopped; SIGTERM (`docker stop`) exits 0. Run without credentials, it
exits 2 naming the missing one: the image never becomes a development-mode
server (LiveKit's public dev key) listening on 0.0.0.0.

Not checked here: that the base image exists and builds (no Docker engine on
the test machine), nor the USER's permissions inside it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import livekit_auth
import server
from helpers import webhook_authorization
from support_http import TIMEOUT, LoggedProcess, http_request

# server.py's line once it listens (logfmt, SERVER_HOST=127.0.0.1, SERVER_PORT=0).
LISTENING = re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)")

ROOT = Path(__file__).resolve().parents[1]
KEY = "containerkey"
SECRET = "a-container-secret-of-32-chars-or-more"


def instructions(text: str) -> list:
    """(INSTRUCTION, arguments) for each Dockerfile instruction, in order.

    As Docker reads it: a line ending in a backslash continues on the next one,
    and lines starting with # are comments, also inside a continuation.
    """
    result, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return result


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def only(keyword: str) -> str:
    values = [arguments for name, arguments in DOCKERFILE if name == keyword]
    assert len(values) == 1, (keyword, values)
    return values[0]


def exec_form(arguments: str) -> list:
    """A JSON-array (exec form) command: shell form would put /bin/sh in between."""
    assert arguments.startswith("["), f"not exec form: {arguments}"
    command = json.loads(arguments)
    assert command and all(type(part) is str for part in command)
    return command


def copied_paths() -> list:
    """The sources of every COPY, as paths relative to the build context."""
    sources = []
    for name, arguments in DOCKERFILE:
        if name == "COPY":
            parts = json.loads(arguments) if arguments.startswith("[") else arguments.split()
            assert not any(part.startswith("--") for part in parts), f"COPY flags not expected: {arguments}"
            sources += [part.rstrip("/") for part in parts[:-1]]
    return sources


def image_env() -> dict:
    """ENV's variables (the KEY=VALUE form, several a line; quotes as a shell reads them, as Docker does)."""
    env = {}
    for name, arguments in DOCKERFILE:
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, equals, value = pair.partition("=")
                assert equals, f"ENV must use KEY=VALUE: {arguments}"
                env[key] = value
    return env


def in_image(command: list) -> list:
    # The image's python3 is the test's Python here: the same code, another build.
    assert command[0] == "python3", command
    return [sys.executable, *command[1:]]


def healthcheck_command() -> list:
    words = only("HEALTHCHECK")
    options = re.match(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)", words, re.S)
    assert options, words
    return exec_form(options[2])


# --------------------------------------------------------------------------
# The Dockerfile's content


def test_the_image_holds_only_the_server_and_the_library():
    assert copied_paths() == ["server.py", "livekit_auth"]
    assert not any(name == "ADD" for name, _ in DOCKERFILE)  # ADD can fetch URLs and unpack archives
    # .dockerignore sends the build nothing else: everything is excluded,
    # then exactly the copied paths come back.
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules[0] == "*"
    assert [rule[1:] for rule in rules if rule.startswith("!")] == copied_paths()


def test_the_image_runs_as_a_non_root_user():
    user = only("USER")
    name, _, group = user.partition(":")
    assert name not in ("", "root", "0"), user
    assert group not in ("root", "0"), user
    # USER is the last word on who runs CMD: nothing after it switches back.
    names = [name for name, _ in DOCKERFILE]
    assert names.index("USER") < names.index("CMD")


def test_the_image_is_configured_by_the_environment_and_listens_on_the_default_port():
    base = only("FROM")
    assert re.fullmatch(r"python:3\.[0-9]+(\.[0-9]+)?-slim\S*", base), base
    assert image_env() == {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # Reachable through a published port: 127.0.0.1 would be unreachable from outside.
        "SERVER_HOST": "0.0.0.0",
        # Present and empty: without real ones from `docker run -e`, the server stops (below).
        "LIVEKIT_API_KEY": "",
        "LIVEKIT_API_SECRET": "",
    }
    settings = server.load_settings({**image_env(), "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    assert (settings.host, settings.dev_mode) == ("0.0.0.0", False)
    assert only("EXPOSE") == str(settings.port)
    command = exec_form(only("CMD"))
    assert command[:1] == ["python3"] and command[-2:] == ["-m", "server"]
    assert {"-E", "-S"} <= set(command)  # no PYTHON* variables, no site-packages
    assert "--config" not in command


# --------------------------------------------------------------------------
# The image's files, run as the image runs them


class Container(LoggedProcess):
    """The Dockerfile's CMD in a directory holding only what COPY copies.

    port() reads the listening line (SERVER_PORT=0); stop() is `docker stop`'s SIGTERM.
    """

    def __init__(self, workdir: Path, env: dict) -> None:
        super().__init__(in_image(exec_form(only("CMD"))), cwd=workdir, env=env)

    stderr = LoggedProcess.output  # server.py logs to stderr alone

    def port(self) -> int:
        return super().port(LISTENING)


def run_env(**variables: str) -> dict:
    """The container's environment: the image's ENV, then `docker run -e` (`variables`)."""
    return {"PATH": os.environ.get("PATH", ""), **image_env(), **variables}


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict = None) -> tuple:
    """(status, JSON body): every answer here has one."""
    status, _, data = http_request(port, method, path, body, headers)
    return status, json.loads(data)


def signed_webhook(body: bytes) -> str:
    return webhook_authorization(KEY, SECRET, body)


def compiled_files(directory: Path) -> dict:
    """Each .pyc under `directory`, with its modification time."""
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in directory.rglob("*.pyc")}


@pytest.fixture
def image_dir(tmp_path) -> Path:
    workdir = tmp_path / "app"
    workdir.mkdir()
    for source in copied_paths():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, workdir / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, workdir / source)
    # The build's compile step, as the image runs it.
    for name, arguments in DOCKERFILE:
        if name == "RUN" and arguments.startswith("python3 -m compileall "):
            subprocess.run(in_image(shlex.split(arguments)), cwd=workdir, check=True, timeout=TIMEOUT)
    return workdir


# `docker run -e` without real credentials: (variables, the setting the exit names)
MISSING_CREDENTIALS = [
    pytest.param({}, "livekit.api_key (LIVEKIT_API_KEY) must not be empty", id="neither"),
    pytest.param({"LIVEKIT_API_KEY": KEY}, "livekit.api_secret (LIVEKIT_API_SECRET) must not", id="key-only"),
    pytest.param({"LIVEKIT_API_SECRET": SECRET}, "livekit.api_key (LIVEKIT_API_KEY) must not be", id="secret-only"),
    pytest.param({"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": ""}, "livekit.api_key (LIVEKIT_API_KEY)", id="empty"),
    pytest.param({"LIVEKIT_API_KEY": "  ", "LIVEKIT_API_SECRET": "\t"}, "livekit.api_key (LIVEKIT_API_KEY)", id="blank"),
]


@pytest.mark.parametrize("variables, message", MISSING_CREDENTIALS)
def test_the_image_without_credentials_exits_2_naming_the_setting(image_dir, variables, message):
    # Issue 12, item 3: outside a container no credentials means development mode
    # (LiveKit's public dev key); in the image, on 0.0.0.0, it must mean no server.
    # SERVER_PORT=0 keeps a regression from taking a real port.
    container = Container(image_dir, run_env(SERVER_PORT="0", **variables))
    try:
        code = container.proc.wait(TIMEOUT)
        container.reader.join(TIMEOUT)
    finally:
        container.kill()
    assert code == 2, container.stderr
    (line,) = container.stderr.splitlines()
    assert re.fullmatch(r'time=\S+ level=ERROR msg="configuration error" error="(.*)"', line), line
    assert message in line
    assert "listening" not in container.stderr and "DEVELOPMENT MODE" not in container.stderr


def test_the_image_files_serve_tokens_webhooks_and_the_health_check(image_dir):
    # As `docker run -e` would set them. SERVER_HOST only keeps this test on
    # loopback; the image itself sets 0.0.0.0.
    env = run_env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SERVER_HOST="127.0.0.1", SERVER_PORT="0")
    built = compiled_files(image_dir)
    assert built  # the build compiled the code
    container = Container(image_dir, env)
    try:
        port = container.port()
        assert request(port, "GET", "/healthz") == (200, {"status": "ok"})

        body = json.dumps({"roomName": "Test Room", "participantName": "Participant42"}).encode()
        status, answer = request(port, "POST", "/token", body, {"Content-Type": "application/json"})
        assert status == 200 and list(answer) == ["token"]
        claims = livekit_auth.TokenVerifier(KEY, SECRET).verify(answer["token"])
        assert (claims.identity, claims.video.room, claims.video.room_join) == ("Participant42", "Test Room", True)

        event = b'{"event":"room_started","id":"EV_container","room":{"name":"Test Room"}}'
        headers = {"Content-Type": "application/webhook+json", "Authorization": signed_webhook(event)}
        assert request(port, "POST", "/webhook", event, headers) == (200, {"status": "ok"})
        # One byte changed: the signature no longer covers the body.
        tampered = event.replace(b"EV_container", b"EV_containes")
        status, _ = request(port, "POST", "/webhook", tampered, headers)
        assert status == 401

        # HEALTHCHECK runs in the container's environment, where SERVER_PORT
        # is what the server listens on.
        check = in_image(healthcheck_command())
        check_env = {"PATH": env["PATH"], **image_env(), "SERVER_PORT": str(port)}
        result = subprocess.run(check, env=check_env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr

        assert container.stop() == 0
        # Stopped: the same check now fails, with exit 1 (Docker's "unhealthy").
        result = subprocess.run(check, env=check_env, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 1, result.stderr
    finally:
        container.kill()
    assert "signal=SIGTERM" in container.stderr and "msg=stopped" in container.stderr
    assert "DEVELOPMENT MODE" not in container.stderr
    assert "Traceback" not in container.stderr and SECRET not in container.stderr
    # -B: the running code wrote no bytecode next to itself; it ran the build's.
    assert compiled_files(image_dir) == built
    assert sorted(str(p.relative_to(image_dir)) for p in image_dir.rglob("*.py")) == sorted(
        ["server.py", *(f"livekit_auth/{p.name}" for p in (ROOT / "livekit_auth").glob("*.py"))]
    )
