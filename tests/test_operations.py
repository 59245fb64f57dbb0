"""Running it: the logfmt log, no /metrics, signals, and docs/operations.md's log line and snippet.

The log is the stdlib logging module (logger "livekit_token_server") with
server.LogfmtFormatter: one `key=value` line per record, the record's data in
record.fields. There is no /metrics and no log format setting. A child
process (`python3 -E -S server.py`) shows the lines as an operator sees them,
and that SIGTERM, SIGINT and SIGHUP each drain and exit 0. The last section
reads docs/operations.md: its log line must be the one the server writes, and
its library snippet must run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import server
from livekit_auth import AccessToken, WebhookEvent
from support_http import TIMEOUT, LoggedProcess
from support_wsgi import UnreadableInput, environ_for, run_app

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
FIXED_NOW = 1735689600
API_KEY = "APIoperations"
API_SECRET = "operations-secret-that-must-never-leak-0123"
# time=2025-01-01T00:00:00.000Z: UTC, milliseconds.
TIME = r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
LISTENING = re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)")


def app_for(**overrides) -> server.App:
    fields = dict(api_key=API_KEY, api_secret=API_SECRET)
    fields.update(overrides)
    return server.make_app(server.Settings(**fields), clock=lambda: FIXED_NOW)


def call(app, method: str, path: str, body: bytes = b"", headers: dict = None, wsgi_input=None):
    environ = environ_for(method, path, wsgi_input or io.BytesIO(body))
    if method == "POST":
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/json"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return run_app(app, environ)


def signed_webhook(app, body: bytes):
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = AccessToken(API_KEY, API_SECRET).with_sha256(digest).to_jwt(now=FIXED_NOW)
    return call(app, "POST", "/webhook", body, headers={"Authorization": token})


def record(message: str, level: int = logging.INFO, **fields) -> logging.LogRecord:
    made = logging.LogRecord("livekit_token_server", level, __file__, 1, message, (), None)
    made.fields = fields
    return made


# --------------------------------------------------------------------------
# /metrics is gone


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_metrics_is_an_unknown_path(method):
    response = call(app_for(), method, "/metrics")
    assert response.status == 404
    assert method == "HEAD" or response.json() == {"errorMessage": "Not found"}
    assert "/metrics" not in server.ROUTES
    assert not hasattr(server, "Metrics")


@pytest.mark.parametrize("key", ["metrics", "log_format"])
def test_a_config_that_still_sets_a_removed_key_stops_the_server(tmp_path, key):
    path = tmp_path / "config.ini"
    path.write_text(f"[server]\nport = 6080\n{key} = true\n", encoding="utf-8")
    with pytest.raises(server.SettingsError, match=rf"line 3: unknown setting server\.{key}$"):
        server.load_settings({}, str(path))


def test_removed_environment_variables_are_not_settings_and_stop_the_server():
    assert {env for _, _, env in server.SETTING_SOURCES.values()}.isdisjoint(
        {"SERVER_METRICS", "SERVER_LOG_FORMAT"}
    )
    # Set, they would be quietly ignored: an operator who still sets one is told instead.
    for name in ("SERVER_METRICS", "SERVER_LOG_FORMAT"):
        with pytest.raises(server.SettingsError, match=f"^{name} is no longer a setting"):
            server.load_settings({name: "true"})
    # The environment holds much besides settings: a variable that is not close to a setting's
    # name is never an error.
    assert server.load_settings(
        {"SERVER_NAME": "x", "TOKEN_FOO_BAR_BAZ": "1"}
    ) == server.load_settings({})


# --------------------------------------------------------------------------
# LogfmtFormatter


def test_a_record_is_one_line_of_time_level_msg_then_its_fields():
    line = server.LogfmtFormatter().format(
        record(
            "request", client="127.0.0.1", method="POST", path="/token", status=200, duration_ms=0.4
        )
    )
    assert re.fullmatch(
        TIME
        + r" level=INFO msg=request client=127\.0\.0\.1 method=POST path=/token status=200 duration_ms=0\.4",
        line,
    ), line


QUOTED = [
    pytest.param("room 1", '"room 1"', id="space"),
    pytest.param('a "quoted" room', '"a \\"quoted\\" room"', id="quotes"),
    pytest.param(
        "x\nlevel=ERROR msg=forged", '"x\\nlevel=ERROR msg=forged"', id="newline-forging-a-line"
    ),
    pytest.param("x room=other", '"x room=other"', id="space-forging-a-field"),
    pytest.param("a=b", '"a=b"', id="equals"),
    pytest.param("", '""', id="empty"),
    pytest.param("caf\u00e9", '"caf\\u00e9"', id="non-ascii"),
    pytest.param("\u202eevil", '"\\u202eevil"', id="bidi-override"),
    pytest.param("EV_1:a/b@c.d+e-f", "EV_1:a/b@c.d+e-f", id="plain-word"),
]


@pytest.mark.parametrize("value, written", QUOTED)
def test_a_value_that_is_not_a_plain_word_is_json_quoted(value, written):
    line = server.LogfmtFormatter().format(record("webhook event", room=value))
    assert line.endswith(' msg="webhook event" room=' + written), line
    assert "\n" not in line and line.isascii()


def test_a_traceback_is_one_quoted_field():
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord(
            "livekit_token_server", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = server.LogfmtFormatter().format(made)
    expected = r' traceback="Traceback \(most recent call last\):\\n.*ValueError: boom"$'
    assert "\n" not in line and re.search(expected, line), line


def test_configure_logging_adds_one_handler_once(monkeypatch):
    logger = logging.getLogger("livekit_token_server")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    stream = io.StringIO()
    server.configure_logging(stream)
    server.configure_logging(io.StringIO())  # changes nothing
    assert len(logger.handlers) == 1 and logger.level == logging.INFO
    logger.info("listening", extra={"fields": {"host": "127.0.0.1", "port": 6080}})
    logger.debug("not written")
    assert re.fullmatch(
        TIME + r" level=INFO msg=listening host=127\.0\.0\.1 port=6080\n", stream.getvalue()
    )


# --------------------------------------------------------------------------
# The log as an operator sees it, and the signals that stop the server


def start(**env: str) -> LoggedProcess:
    """`python3 -E -S server.py` with only `env` (and PATH): no credentials means development mode."""
    return LoggedProcess(
        [sys.executable, "-E", "-S", "server.py"],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
    )


def get(port: int, path: str) -> int:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT
        ) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_development_mode_on_loopback_logs_logfmt_and_each_signal_drains(signum):
    # No SERVER_HOST and no credentials: development mode, on 127.0.0.1 by default.
    process = start(SERVER_PORT="0")
    try:
        port = process.port(LISTENING)
        assert get(port, "/healthz") == 200
        assert get(port, "/metrics") == 404
        code = process.stop(signum)
    finally:
        process.kill()
    assert code == 0, process.output
    lines = process.output.splitlines()
    assert all(re.match(TIME + r" level=(INFO|WARNING) msg=", line) for line in lines), lines
    assert re.match(
        TIME + r' level=WARNING msg="DEVELOPMENT MODE: .*Listening on loopback only', lines[0]
    ), lines[0]
    assert LISTENING.search(lines[1]), lines[1]
    # A connection's thread logs its request after answering, so the lines of two requests,
    # and of a request and the signal, may come in either order; "stopped" comes last.
    access = [line for line in lines if " msg=request " in line]
    assert sorted(
        re.sub(r"duration_ms=[0-9.]+", "duration_ms=N", line.split(" ", 1)[1]) for line in access
    ) == [
        "level=INFO msg=request client=127.0.0.1 method=GET path=/healthz status=200 duration_ms=N",
        'level=INFO msg=request client=127.0.0.1 method=GET path=/metrics status=404 duration_ms=N reason="Not found"',
    ]
    stopping = [line for line in lines if 'msg="stopping: finishing requests in flight"' in line]
    assert len(stopping) == 1 and stopping[0].endswith(f" signal={signum.name}"), lines
    assert lines[-1].endswith("level=INFO msg=stopped"), lines
    assert len(lines) == 2 + len(access) + 2, lines
    assert "secret" not in process.output.replace("LIVEKIT_API_SECRET", "")


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param(
            {"TOKEN_AUTH_SECRETS": ","},
            "TOKEN_AUTH_SECRETS is set but lists nothing; remove it to get the default",
            id="auth-secrets",
        ),
        pytest.param({"TOKEN_ROOMS": " "}, "TOKEN_ROOMS is set but lists nothing", id="rooms"),
        pytest.param(
            {"CORS_ALLOWED_ORIGINS": ""},
            "CORS_ALLOWED_ORIGINS is set but lists nothing",
            id="origins",
        ),
        pytest.param(
            {"TOKEN_CAN_PUBLISH_SOURCES": ", ,"},
            "TOKEN_CAN_PUBLISH_SOURCES is set but lists nothing",
            id="sources",
        ),
        pytest.param(
            {"LIVEKIT_API_KEY": "APIkey"},
            "livekit.api_key (LIVEKIT_API_KEY) is set but livekit.api_secret (LIVEKIT_API_SECRET) is not",
            id="key-alone",
        ),
    ],
)
def test_a_list_set_but_empty_or_half_the_credentials_exits_2_naming_the_setting(env, message):
    # The message names where the value came from: the variable here, section.key from config.ini.
    process = start(SERVER_PORT="0", **env)
    try:
        code = process.proc.wait(TIMEOUT)
        process.reader.join(TIMEOUT)
    finally:
        process.kill()
    assert code == 2
    (line,) = process.output.splitlines()
    error = re.fullmatch(TIME + r' level=ERROR msg="configuration error" error="(.*)"', line)
    assert error and error[1].startswith(message), line


# --------------------------------------------------------------------------
# Found in review: each pins a fix


def test_an_unsigned_webhook_gets_401_before_its_body_is_read():
    response = call(
        app_for(),
        "POST",
        "/webhook",
        b"x" * 100,
        headers={"Authorization": "not-a-token"},
        wsgi_input=UnreadableInput(),
    )
    assert response.status == 401


def test_a_torn_last_line_in_the_event_file_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event":"room_started","id":"EV_0","room":{"na')  # a crash mid-write
    app = app_for(event_file=str(path))
    assert signed_webhook(app, b'{"event":"room_finished","id":"EV_1"}').status == 200
    assert path.read_bytes().splitlines()[-1] == b'{"event":"room_finished","id":"EV_1"}'


def test_application_is_built_once(monkeypatch):
    monkeypatch.setenv("LIVEKIT_API_KEY", "APIkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-of-more-than-32-characters!!")
    monkeypatch.delitem(vars(server), "application", raising=False)
    first = server.application
    assert server.application is first
    monkeypatch.delitem(vars(server), "application")


# --------------------------------------------------------------------------
# docs/operations.md says what the code does


def test_the_log_line_in_the_docs_is_the_one_the_server_writes():
    text = " ".join(DOC.split())
    shown = re.search(r"\(`(time=\.\.\. level=INFO msg=request [^`]+)`\)", text)[1]
    written = server.LogfmtFormatter().format(
        record(
            "request", client="127.0.0.1", method="POST", path="/token", status=200, duration_ms=0.4
        )
    )
    assert shown.split(" ", 1)[1] == written.split(" ", 1)[1]


def test_the_library_snippet_runs_with_the_sdk():
    pytest.importorskip("livekit.api")
    snippet = re.search(r"```python\n(.*?)```", DOC, re.S)[1]
    namespace: dict = {}
    exec(compile(snippet, "docs/operations.md", "exec"), namespace)  # its asserts run here
    body = json.dumps(
        {"event": "room_started", "id": "EV_doc", "room": {"name": "my-room", "sid": "RM_x"}}
    ).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    authorization = AccessToken(namespace["KEY"], namespace["SECRET"]).with_sha256(digest).to_jwt()
    message = namespace["on_webhook"](body, authorization)
    assert (message.event, message.id, message.room.name) == ("room_started", "EV_doc", "my-room")
    receiver = namespace["WebhookReceiver"](
        namespace["TokenVerifier"](namespace["KEY"], namespace["SECRET"])
    )
    event = receiver.receive(body, authorization)
    assert isinstance(event, WebhookEvent) and (event.event, event.room.sid) == (
        "room_started",
        "RM_x",
    )


def test_ci_runs_the_readmes_test_command_and_coverage_command_as_written():
    root = Path(__file__).resolve().parents[1]
    readme, ci = (
        (root / "README.md").read_text(encoding="utf-8"),
        (root / ".ci" / "run").read_text(encoding="utf-8"),
    )
    commands = re.findall(r"```sh\n(.*?)\n *```", readme, re.S)
    test_command = commands[1]  # the second of the two commands the README starts with
    assert test_command.startswith("python3 -m venv .venv") and "pytest" in test_command
    coverage_command = next(command.strip() for command in commands if "coverage run" in command)
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert test_command in ci_lines and coverage_command in ci_lines
    assert ci_lines.index(test_command) < ci_lines.index(coverage_command)
