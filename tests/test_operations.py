"""GET /metrics (Prometheus text format) and the JSON-lines log format."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import urllib.request

import pytest

import server
from livekit_auth import AccessToken
from test_app import FIXED_NOW, app_for, call, post_json
from test_runner import ServerProcess, _env

PREFIX = "livekit_token_server_"


def metrics_text(app) -> str:
    response = call(app, "GET", "/metrics", content_type=None)
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    return response.body.decode("utf-8")


def samples(text: str) -> dict:
    """{'name{labels}': value} for every sample line."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def signed_webhook(app, body: bytes, authorization_time: float = FIXED_NOW):
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = AccessToken(app.settings.api_key, app.settings.api_secret).with_sha256(digest).to_jwt(now=authorization_time)
    return call(app, "POST", "/webhook", body, content_type="application/webhook+json", headers={"Authorization": token})


def test_metrics_count_tokens_refusals_and_webhooks():
    app = app_for(rate_per_minute=60, rate_burst=4)
    assert post_json(app, {"roomName": "r", "participantName": "a"}).status == 200
    assert post_json(app, {"roomName": "r", "participantName": "b"}).status == 200
    assert post_json(app, {"room_name": "r", "participant_identity": "c"}).status == 201
    assert post_json(app, {"roomName": "r"}).status == 400
    assert post_json(app, {"roomName": "r", "participantName": "d"}).status == 429
    event = b'{"event":"room_started","id":"EV_1","room":{"name":"r"}}'
    assert signed_webhook(app, event).status == 200
    assert signed_webhook(app, event).status == 200  # a repeat: not handled again
    assert call(app, "POST", "/webhook", event, headers={"Authorization": "not-a-token"}).status == 401

    found = samples(metrics_text(app))
    assert found[PREFIX + 'tokens_issued_total{shape="openvidu"}'] == 2
    assert found[PREFIX + 'tokens_issued_total{shape="standard"}'] == 1
    assert found[PREFIX + 'token_refusals_total{status="400"}'] == 1
    assert found[PREFIX + 'token_refusals_total{status="429"}'] == 1
    assert found[PREFIX + 'webhooks_total{event="room_started",outcome="accepted"}'] == 1
    assert found[PREFIX + 'webhooks_total{event="room_started",outcome="duplicate"}'] == 1
    # An unverified request's event name is never a label: anyone could choose it.
    assert found[PREFIX + 'webhooks_total{event="",outcome="401"}'] == 1
    assert found[PREFIX + 'request_duration_seconds_count{route="/token"}'] == 5
    assert found[PREFIX + 'request_duration_seconds_count{route="/webhook"}'] == 3


def test_histogram_buckets_are_cumulative_and_end_at_the_count():
    app = app_for()
    for _ in range(3):
        call(app, "GET", "/healthz", content_type=None)
    call(app, "GET", "/nope", content_type=None)
    text = metrics_text(app)
    for route in ("/healthz", "other"):
        buckets = [
            float(value)
            for le, value in re.findall(rf'request_duration_seconds_bucket{{route="{route}",le="([^"]+)"}} (\S+)', text)
        ]
        assert len(buckets) == len(server.Metrics.BUCKETS) + 1
        assert buckets == sorted(buckets)
        count = samples(text)[f'{PREFIX}request_duration_seconds_count{{route="{route}"}}']
        assert buckets[-1] == count == (3 if route == "/healthz" else 1)


def test_metrics_text_declares_every_family_once():
    text = metrics_text(app_for())
    for family, kind in (
        ("tokens_issued_total", "counter"),
        ("token_refusals_total", "counter"),
        ("webhooks_total", "counter"),
        ("request_duration_seconds", "histogram"),
    ):
        assert text.count(f"# TYPE {PREFIX}{family} {kind}\n") == 1
    assert text.endswith("\n")


def test_metrics_can_be_switched_off():
    app = app_for(metrics=False)
    assert call(app, "GET", "/metrics", content_type=None).status == 404
    assert call(app, "OPTIONS", "/metrics", content_type=None).status == 404


def test_label_values_are_escaped():
    assert server._labels((("event", 'a"b\\c\nd'),)) == '{event="a\\"b\\\\c\\nd"}'
    assert server._labels(()) == ""


def test_json_formatter_writes_one_object_with_the_fields():
    record = logging.LogRecord("livekit_token_server", logging.INFO, __file__, 1, "webhook %s", ("x",), None)
    record.fields = {"event": "room_started", "room": 'a "quoted"\nroom'}
    line = server._JSONFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "INFO" and parsed["message"] == "webhook x"
    assert parsed["event"] == "room_started" and parsed["room"] == 'a "quoted"\nroom'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])


def test_log_format_must_be_plain_or_json():
    with pytest.raises(server.SettingsError, match=r"server\.log_format \(SERVER_LOG_FORMAT\)"):
        server.load_settings({"SERVER_LOG_FORMAT": "xml"})


def test_json_log_format_end_to_end():
    process = ServerProcess(_env(SERVER_LOG_FORMAT="json"))
    try:
        port = process.port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"request_duration_seconds_count" in response.read()
        code, _ = process.stop()
    finally:
        process.kill()
    assert code == 0
    records = [json.loads(line) for line in process.lines]
    assert {record["level"] for record in records} <= {"INFO", "WARNING"}
    assert records[0]["message"].startswith("DEVELOPMENT MODE")
    access = [record for record in records if record.get("path") == "/healthz"]
    assert len(access) == 1
    assert access[0]["method"] == "GET" and access[0]["status"] == 200 and access[0]["client"] == "127.0.0.1"
    assert isinstance(access[0]["duration_ms"], float)


# --------------------------------------------------------------------------
# Found in review: each pins a fix


def test_an_unsigned_webhook_gets_401_before_its_body_is_read():
    from support_wsgi import UnreadableInput

    app = app_for()
    response = call(
        app, "POST", "/webhook", b"x" * 100, headers={"Authorization": "not-a-token"}, wsgi_input=UnreadableInput()
    )
    assert response.status == 401


def test_a_torn_last_line_in_the_event_file_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event":"room_started","id":"EV_0","room":{"na')  # a crash mid-write
    app = app_for(event_file=str(path))
    assert signed_webhook(app, b'{"event":"room_finished","id":"EV_1"}').status == 200
    assert path.read_bytes().splitlines()[-1] == b'{"event":"room_finished","id":"EV_1"}'


def test_log_lines_past_the_limit_are_counted_not_queued(capfd):
    lines = server.StderrLines()
    lines.MAX_LINES = 3
    for number in range(5):
        lines.write(f"line {number}")
    lines.flush()
    assert capfd.readouterr().err == "line 0\nline 1\nline 2\n2 log lines dropped: standard error did not keep up\n"


def test_application_is_built_once(monkeypatch):
    monkeypatch.setenv("LIVEKIT_API_KEY", "APIkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-of-more-than-32-characters!!")
    monkeypatch.delitem(vars(server), "application", raising=False)
    first = server.application
    assert server.application is first
    monkeypatch.delitem(vars(server), "application")
