"""Logging and main() (server.py, section 6): the logfmt log, its writer thread, the command's
exit codes, and server:application.

The log is the stdlib logging module (logger "livekit_token_server") with
server.LogfmtFormatter: one `key=value` line per record, the record's data in
record.fields. While serve() runs, the logger's handlers write on a log writer
thread, behind a queue, so a log stream that blocks holds up no request. A child
process (`python3 -E -S server.py`) shows the lines as an operator sees them,
and the exit codes of main(). The tests that run the server end with the `guard`
fixture's checks on the log (helpers.py): no secret, no JWT, no traceback, and no
exception escaping a server thread.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import helpers
import server
from helpers import (
    HEALTHZ,
    KEY,
    SECRET,
    TIME,
    _check_process_log,
    _env,
    listening_port,
    log_records,
    read_response,
    run_serve_in_thread,
    start,
)
from support_http import TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
LISTENING = re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)")
# The log guard (helpers.py): each test marked with it ends with its checks.
thread_crashes, guard = helpers.thread_crashes, helpers.guard


def record(message: str, level: int = logging.INFO, **fields) -> logging.LogRecord:
    made = logging.LogRecord("livekit_token_server", level, __file__, 1, message, (), None)
    made.fields = fields
    return made


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


def test_the_log_line_in_the_docs_is_the_one_the_server_writes():
    text = " ".join(DOC.split())
    shown = re.search(r"\(`(time=\.\.\. level=INFO msg=request [^`]+)`\)", text)[1]
    written = server.LogfmtFormatter().format(
        record(
            "request", client="127.0.0.1", method="POST", path="/token", status=200, duration_ms=0.4
        )
    )
    assert shown.split(" ", 1)[1] == written.split(" ", 1)[1]


# --------------------------------------------------------------------------
# The log as an operator sees it, and the signals that stop the server


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


# --------------------------------------------------------------------------
# The log writer: while serve() runs, no log write holds up a request


class BlockedStream:
    """A log stream whose writes wait until released: a pipe nobody reads."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.text = ""

    def write(self, text: str) -> None:
        self.released.wait(TIMEOUT)
        self.text += text

    def flush(self) -> None:
        pass


@pytest.mark.usefixtures("guard")
def test_a_blocked_log_stream_holds_up_no_request_and_dropped_lines_are_counted(
    monkeypatch, caplog
):
    monkeypatch.setattr(server, "MAX_QUEUED_RECORDS", 20)
    stream = BlockedStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(server.LogfmtFormatter())
    monkeypatch.setattr(server.log, "handlers", [handler])
    stop = threading.Event()
    settings = server.Settings(
        api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0, max_connections=4
    )
    thread = run_serve_in_thread(settings, stop)
    # caplog reads the records from the root logger, as they are made: not through the queue.
    port = listening_port(caplog)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        rest = b""
        for _ in range(100):
            sock.sendall(HEALTHZ)
            response, rest = read_response(sock, rest)
            assert response.status == 200
    stream.released.set()
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    lines = stream.text.splitlines()
    # One line each time writing resumes, with how many were dropped since the last.
    dropped = [line for line in lines if 'msg="log lines dropped"' in line]
    count = sum(int(re.search(r"dropped=([0-9]+)$", line)[1]) for line in dropped)
    written = [line for line in lines if line not in dropped]
    # Every record is written or counted: the listening line, 100 requests, and the drain's two.
    assert count > 0 and count + len(written) == 1 + 100 + 2, (count, lines)
    assert lines[0].endswith(f"msg=listening host=127.0.0.1 port={port}")
    assert server.log.handlers == [handler] and handler.stream is stream


class RecordingStream:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


class GatedQueue(queue.SimpleQueue):
    """The log writer's queue, held shut until `opened` is set: then every record is waiting."""

    opened = threading.Event()

    def empty(self) -> bool:
        self.opened.wait(TIMEOUT)
        return super().empty()


@pytest.mark.usefixtures("guard")
def test_while_records_keep_coming_the_log_writer_writes_every_max_gathered_records(
    monkeypatch,
):
    # The queue never empties while these records are handled: what has gathered is still
    # written every MAX_GATHERED_RECORDS, so the buffer and the delay stay bounded.
    monkeypatch.setattr(server.queue, "SimpleQueue", GatedQueue)
    GatedQueue.opened.clear()
    stream = RecordingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(server.LogfmtFormatter())
    monkeypatch.setattr(server.log, "handlers", [handler])
    with server._log_writer(grace=2):
        for number in range(2 * server.MAX_GATHERED_RECORDS + 500):
            server.log.info("record", extra={"fields": {"n": number}})
        GatedQueue.opened.set()
    lines = [write.count("\n") for write in stream.writes]
    assert lines == [server.MAX_GATHERED_RECORDS, server.MAX_GATHERED_RECORDS, 500]
    assert "".join(stream.writes).splitlines()[-1].endswith("msg=record n=2499")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect_when_listening(port: int) -> socket.socket:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the server did not listen in time"
            time.sleep(0.02)


@pytest.mark.usefixtures("guard")
def test_standard_error_on_a_pipe_nobody_reads_holds_up_no_request():
    # A log write that blocked the thread that made it would allow about 590 answers, then none.
    port = free_port()
    read_end, write_end = os.pipe()
    env = _env(LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SERVER_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-E", "-S", "server.py"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    try:
        with connect_when_listening(port) as sock:
            rest = b""
            for _ in range(2000):
                sock.sendall(HEALTHZ)
                response, rest = read_response(sock, rest)
                assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        os.close(read_end)
    lines = b"".join(chunks).decode().splitlines()
    # Nothing lost: the queue held what the pipe could not take yet.
    assert sum(" msg=request " in line for line in lines) == 2000
    assert lines[-1].endswith("level=INFO msg=stopped")


@pytest.mark.usefixtures("guard")
def test_serve_leaves_logging_alone_when_the_logger_has_no_handler_of_its_own(monkeypatch, caplog):
    monkeypatch.setattr(server.log, "handlers", [])
    stop = threading.Event()
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    thread = run_serve_in_thread(settings, stop)
    listening_port(caplog)
    assert server.log.handlers == []
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.usefixtures("guard")
def test_a_handler_other_than_a_plain_stream_gets_each_record_on_the_log_writer(
    monkeypatch, tmp_path, caplog
):
    path = tmp_path / "server.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(server.LogfmtFormatter())
    monkeypatch.setattr(server.log, "handlers", [handler])
    stop = threading.Event()
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    thread = run_serve_in_thread(settings, stop)
    port = listening_port(caplog)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(HEALTHZ)
        assert read_response(sock)[0].status == 200
    stop.set()
    thread.join(TIMEOUT)
    handler.close()
    lines = path.read_text().splitlines()
    assert lines[0].endswith(f"msg=listening host=127.0.0.1 port={port}")
    assert any(" msg=request " in line and "path=/healthz status=200" in line for line in lines)
    assert lines[-1].endswith("level=INFO msg=stopped")


@pytest.mark.usefixtures("guard")
def test_a_log_stream_that_never_drains_does_not_keep_serve_from_returning(monkeypatch, caplog):
    stream = BlockedStream()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(server.log, "handlers", [handler])
    stop = threading.Event()
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    thread = threading.Thread(
        target=server.serve,
        args=(server.make_app(settings), settings),
        kwargs={"grace": 0.3, "stop": stop},
        daemon=True,
    )
    thread.start()
    listening_port(caplog)
    stop.set()
    # The drain's grace bounds the wait for the log writer too: serve() returns.
    thread.join(TIMEOUT / 2)
    assert not thread.is_alive()
    # The handler writes to its own stream again, not to the writer's buffer.
    assert handler.stream is stream
    stream.released.set()


@pytest.mark.usefixtures("guard")
def test_two_servers_at_once_share_the_log_writer_and_leave_the_handlers_as_they_were(
    monkeypatch, caplog
):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(server.LogfmtFormatter())
    monkeypatch.setattr(server.log, "handlers", [handler])
    stops = [threading.Event(), threading.Event()]
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    first = run_serve_in_thread(settings, stops[0])
    assert wait_for(lambda: isinstance(server.log.handlers[0], server._RecordQueue))
    second = run_serve_in_thread(settings, stops[1])
    assert wait_for(
        lambda: len([r for r in log_records(caplog) if r.getMessage() == "listening"]) == 2
    )
    stops[0].set()
    first.join(TIMEOUT)
    stops[1].set()
    second.join(TIMEOUT)
    assert server.log.handlers == [handler] and handler.stream is stream
    server.log.info("after both")
    assert stream.getvalue().endswith('msg="after both"\n')


@pytest.mark.usefixtures("guard")
def test_handlers_replaced_while_serving_are_left_as_they_are(monkeypatch, caplog):
    # serve() puts the logger's handlers back only if they are still its own queue.
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(server.log, "handlers", [handler])
    stop = threading.Event()
    settings = server.Settings(api_key=KEY, api_secret=SECRET, host="127.0.0.1", port=0)
    thread = run_serve_in_thread(settings, stop)
    listening_port(caplog)
    other = logging.StreamHandler(io.StringIO())
    server.log.handlers = [other]
    stop.set()
    thread.join(TIMEOUT)
    assert server.log.handlers == [other]


# --------------------------------------------------------------------------
# main(): exit 2 on a configuration error, 1 when it cannot listen


@pytest.mark.usefixtures("guard")
@pytest.mark.parametrize(
    "env, named",
    [
        pytest.param({"LIVEKIT_API_KEY": KEY}, "LIVEKIT_API_SECRET", id="key-without-secret"),
        pytest.param({"LIVEKIT_API_SECRET": SECRET}, "LIVEKIT_API_KEY", id="secret-without-key"),
        pytest.param({"SERVER_PORT": "+80"}, "SERVER_PORT", id="port-plus"),
        pytest.param({"SERVER_PORT": "70000"}, "SERVER_PORT", id="port-out-of-range"),
        pytest.param(
            {"SERVER_MAX_CONNECTIONS": "0"}, "SERVER_MAX_CONNECTIONS", id="no-connections"
        ),
        pytest.param(
            {"SERVER_TRUSTED_PROXIES": "proxy.local"},
            "SERVER_TRUSTED_PROXIES",
            id="proxy-not-an-ip",
        ),
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
    assert re.search(
        rf'level=ERROR msg="configuration error" error="[^"\n]*\b{named}\b[^"\n]*"$', stderr, re.M
    ), stderr
    assert "msg=listening" not in stderr
    _check_process_log(stderr)


@pytest.mark.usefixtures("guard")
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
    assert re.search(
        rf'level=ERROR msg="cannot listen" port={port} error="Address already in use"$',
        stderr,
        re.M,
    )
    assert "msg=listening" not in stderr
    _check_process_log(stderr)


# The test above, in this process: a child started with -S has no site-packages,
# so coverage (README, "Tests") cannot measure it.


@pytest.mark.usefixtures("guard")
def test_main_port_in_use_returns_1(monkeypatch, capsys):
    monkeypatch.setattr(
        server.log, "handlers", []
    )  # configure_logging() then writes to the captured stderr
    monkeypatch.setattr(server.log, "level", logging.NOTSET)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for name, value in _env(
            SERVER_PORT=str(port), LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET
        ).items():
            monkeypatch.setenv(name, value)
        assert server.main([]) == 1
    stderr = capsys.readouterr().err
    assert re.search(
        rf'level=ERROR msg="cannot listen" port={port} error="Address already in use"$',
        stderr,
        re.M,
    )
    assert "msg=listening" not in stderr


# --------------------------------------------------------------------------
# server:application


def test_application_is_built_once(monkeypatch):
    monkeypatch.setenv("LIVEKIT_API_KEY", "APIkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-of-more-than-32-characters!!")
    monkeypatch.delitem(vars(server), "application", raising=False)
    first = server.application
    assert server.application is first
    monkeypatch.delitem(vars(server), "application")
