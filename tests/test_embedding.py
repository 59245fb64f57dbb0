"""The README's "Embedding it in your own code" examples, run as pasted.

Each ```python block of that section whose first line is `# <file>.py` is
written to that file in a temporary directory and run the way the README says:
`python3 myserver.py` (its handler sees a signed webhook, SIGTERM drains it),
`gunicorn myserver:app`, and `mysite.py` under the built-in runner with the
token server mounted at /livekit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from livekit_auth import AccessToken
from helpers import COVERAGE_ENV
from support_http import LoggedProcess, http_request

ROOT = Path(__file__).resolve().parents[1]
KEY, SECRET = "embedkey", "an-embedding-test-secret-of-32-chars!"
ENV = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0"}
SERVE_LISTENING = re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)")
GUNICORN_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:([0-9]+)")
# Under `coverage run` (README, "Tests"), the variables that make a child Python measure
# itself; the examples otherwise get only ENV. Empty in a plain run.


def readme_examples() -> dict:
    """{file name: code} for each example of the embedding section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Embedding it in your own code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {re.match(r"# (\S+\.py)\n", block)[1]: block for block in blocks if re.match(r"# \S+\.py\n", block)}


@pytest.fixture
def examples(tmp_path) -> Path:
    for name, code in readme_examples().items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    return tmp_path


def environment(directory: Path) -> dict:
    # The examples import `server` as an installed module would be: from PYTHONPATH.
    return {**ENV, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **COVERAGE_ENV}


def signed_webhook(event: dict) -> tuple:
    body = json.dumps(event).encode("utf-8")
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return body, {"Authorization": AccessToken(KEY, SECRET).with_sha256(digest).to_jwt(),
                  "Content-Type": "application/webhook+json"}


JOINED = {"event": "participant_joined", "id": "EV_embed_1", "room": {"name": "Test Room"},
          "participant": {"identity": "alice"}}


@contextlib.contextmanager
def running(argv: list, directory: Path, listening: re.Pattern):
    """The example's process, serving (its port given); then SIGTERM, which must drain it to exit 0."""
    process = LoggedProcess(argv, cwd=directory, env=environment(directory), stderr_to_stdout=True)
    try:
        yield process, process.port(listening)
        assert process.stop(signal.SIGTERM) == 0, process.output
    finally:
        process.kill()


def post_token(port: int, path: str = "/token") -> tuple:
    request = json.dumps({"roomName": "Test Room", "participantName": "bob"}).encode()
    return http_request(port, "POST", path, request, {"Content-Type": "application/json"})


def test_the_section_has_the_examples_the_tests_run():
    assert set(readme_examples()) == {"myserver.py", "mysite.py"}


def test_myserver_runs_the_handler_on_a_webhook_and_drains_on_sigterm(examples):
    with running([sys.executable, "myserver.py"], examples, SERVE_LISTENING) as (process, port):
        status, _, body = http_request(port, "POST", "/webhook", *signed_webhook(JOINED))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert post_token(port)[0] == 200
    assert "alice joined Test Room\n" in process.output
    assert 'msg="webhook event" event=participant_joined id=EV_embed_1 room="Test Room" participant=alice' in process.output
    assert "signal=SIGTERM" in process.output and SECRET not in process.output


def test_myserver_logs_a_failing_handler_with_its_traceback_and_answers_500(examples):
    code = (examples / "myserver.py").read_text(encoding="utf-8")
    (examples / "myserver.py").write_text(code.replace(
        'if event.event == "participant_joined":', 'if event.event == "participant_joined":\n        raise '
        'RuntimeError("the handler\'s own bug")\n    if False:'), encoding="utf-8")
    with running([sys.executable, "myserver.py"], examples, SERVE_LISTENING) as (process, port):
        status, _, body = http_request(port, "POST", "/webhook", *signed_webhook(JOINED))
        assert (status, json.loads(body)) == (500, {"errorMessage": "Webhook handler failed"})
    line = next(line for line in process.lines if 'msg="webhook handler failed"' in line)
    assert "id=EV_embed_1" in line and "RuntimeError: the handler's own bug" in line and "Traceback" in line


GUNICORN = shutil.which("gunicorn", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(GUNICORN is None, reason="no gunicorn beside this Python")
def test_myserver_app_under_gunicorn(examples):
    with running([GUNICORN, "-w", "1", "-b", "127.0.0.1:0", "myserver:app"], examples, GUNICORN_LISTENING) as (
            process, port):
        status, _, body = http_request(port, "POST", "/webhook", *signed_webhook(JOINED))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert "alice joined Test Room" in process.output
    assert 'msg="webhook event" event=participant_joined' in process.output


def test_mysite_mounts_the_token_server_under_livekit(examples):
    # As the README says: server.serve(mysite.site, server.load_settings(os.environ)).
    script = "import os, mysite, server; server.configure_logging(); " \
             "server.serve(mysite.site, server.load_settings(os.environ))"
    with running([sys.executable, "-c", script], examples, SERVE_LISTENING) as (_, port):
        status, _, body = post_token(port, "/livekit/token")
        assert status == 200 and set(json.loads(body)) == {"token"}
        assert http_request(port, "POST", "/livekit/webhook", *signed_webhook(JOINED))[0] == 200
        assert http_request(port, "GET", "/about")[::2] == (200, b"the rest of your site\n")
        # Outside the prefix, the token server is not there: the rest of the site answers.
        assert post_token(port)[2] == b"the rest of your site\n"
