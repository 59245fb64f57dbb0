"""The README's "Embedding it in your own code" examples, run as pasted.

Each ```python block of that section whose first line is `# <file>.py` is
written to that file in a temporary directory and run the way the README says:
`python3 myserver.py` (its handler sees a signed webhook, SIGTERM drains it),
`gunicorn myserver:app`, and `mysite.py` under the built-in runner with the
token server mounted at /livekit, its own fact in the access line. Most tests
import `server` from this checkout through PYTHONPATH; two follow each install
step the section gives first, in a folder outside the checkout: `pip install .`
into a fresh venv, and copying server.py and livekit_auth/ beside the program.
The snippet that serves from another thread runs with the program's work (a
request) in place of its comment. The library snippet of docs/operations.md
runs too, beside the SDK.
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
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from livekit_auth import AccessToken, WebhookEvent
from helpers import COVERAGE_ENV
from support_http import LoggedProcess, http_request

ROOT = Path(__file__).resolve().parents[1]
# docs/operations.md: its library snippet runs here too.
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
KEY, SECRET = "embedkey", "an-embedding-test-secret-of-32-chars!"
ENV = {
    "LIVEKIT_API_KEY": KEY,
    "LIVEKIT_API_SECRET": SECRET,
    "SERVER_HOST": "127.0.0.1",
    "SERVER_PORT": "0",
}
SERVE_LISTENING = re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)")
GUNICORN_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:([0-9]+)")
# Under `coverage run` (README, "Tests"), the variables that make a child Python measure
# itself; the examples otherwise get only ENV. Empty in a plain run.


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Embedding it in your own code", 1)[1].split("\n## ", 1)[0]


def python_blocks() -> list:
    # Blocks may be indented under a list item: the indent is taken off each line.
    blocks = re.findall(r"^( *)```python\n(.*?)\n *```", readme_section(), re.M | re.S)
    return [re.sub(rf"^{indent}", "", block, flags=re.M) + "\n" for indent, block in blocks]


def readme_examples() -> dict:
    """{file name: code} for each example of the embedding section."""
    blocks = python_blocks()
    return {
        re.match(r"# (\S+\.py)\n", block)[1]: block
        for block in blocks
        if re.match(r"# \S+\.py\n", block)
    }


def install_steps() -> dict:
    """The section's install commands, by their first word: {"pip": ..., "cp": ...}."""
    blocks = re.findall(r"^ *```sh\n(.*?)\n *```", readme_section(), re.M | re.S)
    return {block.split()[0]: block.strip() for block in blocks}


@pytest.fixture
def examples(tmp_path) -> Path:
    for name, code in readme_examples().items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    return tmp_path


def environment(directory: Path) -> dict:
    # The examples import `server` as an installed module would be: from PYTHONPATH.
    return {
        **ENV,
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        **COVERAGE_ENV,
    }


def installed_environment(path: str) -> dict:
    # `server` from where the install step put it: no PYTHONPATH, and not measured by coverage
    # (a copy outside the checkout is not the source coverage reports on).
    return {**ENV, "PATH": path, "HOME": os.environ.get("HOME", "/"), "PYTHONUNBUFFERED": "1"}


def signed_webhook(event: dict) -> tuple:
    body = json.dumps(event).encode("utf-8")
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return body, {
        "Authorization": AccessToken(KEY, SECRET).with_sha256(digest).to_jwt(),
        "Content-Type": "application/webhook+json",
    }


JOINED = {
    "event": "participant_joined",
    "id": "EV_embed_1",
    "room": {"name": "Test Room"},
    "participant": {"identity": "alice"},
}


@contextlib.contextmanager
def running(argv: list, directory: Path, listening: re.Pattern, env: dict = None):
    """The example's process, serving (its port given); then SIGTERM, which must drain it."""
    env = env or environment(directory)
    process = LoggedProcess(argv, cwd=directory, env=env, stderr_to_stdout=True)
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
    assert re.search(
        r"msg=request client=127\.0\.0\.1 method=POST path=/webhook status=200 duration_ms=[0-9.]+ "
        r'event=participant_joined id=EV_embed_1 room="Test Room"\n',
        process.output,
    ), process.output
    assert "signal=SIGTERM" in process.output and SECRET not in process.output


def test_myserver_logs_a_failing_handler_with_its_traceback_and_answers_500(examples):
    code = (examples / "myserver.py").read_text(encoding="utf-8")
    (examples / "myserver.py").write_text(
        code.replace(
            'if event.event == "participant_joined":',
            'if event.event == "participant_joined":\n        raise '
            'RuntimeError("the handler\'s own bug")\n    if False:',
        ),
        encoding="utf-8",
    )
    with running([sys.executable, "myserver.py"], examples, SERVE_LISTENING) as (process, port):
        status, _, body = http_request(port, "POST", "/webhook", *signed_webhook(JOINED))
        assert (status, json.loads(body)) == (500, {"errorMessage": "Webhook handler failed"})
    line = next(line for line in process.lines if 'msg="webhook handler failed"' in line)
    assert (
        "id=EV_embed_1" in line
        and "RuntimeError: the handler's own bug" in line
        and "Traceback" in line
    )


GUNICORN = shutil.which("gunicorn", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(GUNICORN is None, reason="no gunicorn beside this Python")
def test_myserver_app_under_gunicorn(examples):
    with running(
        [GUNICORN, "-w", "1", "-b", "127.0.0.1:0", "myserver:app"], examples, GUNICORN_LISTENING
    ) as (process, port):
        status, _, body = http_request(port, "POST", "/webhook", *signed_webhook(JOINED))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert "alice joined Test Room" in process.output
    # Under another WSGI server, the app writes the request's line itself.
    assert re.search(
        r"msg=request client=127\.0\.0\.1 method=POST path=/webhook status=200 duration_ms=[0-9.]+ "
        r"event=participant_joined id=EV_embed_1",
        process.output,
    ), process.output


def test_mysite_mounts_the_token_server_under_livekit(examples):
    # As the README says: server.serve(mysite.site, server.load_settings(os.environ)).
    script = (
        "import os, mysite, server; server.configure_logging(); "
        "server.serve(mysite.site, server.load_settings(os.environ))"
    )
    with running([sys.executable, "-c", script], examples, SERVE_LISTENING) as (process, port):
        status, _, body = post_token(port, "/livekit/token")
        assert status == 200 and set(json.loads(body)) == {"token"}
        assert http_request(port, "POST", "/livekit/webhook", *signed_webhook(JOINED))[0] == 200
        assert http_request(port, "GET", "/about")[::2] == (200, b"the rest of your site\n")
        # Outside the prefix, the token server is not there: the rest of the site answers.
        assert post_token(port)[2] == b"the rest of your site\n"
    # What each app put at environ["access_log.fields"] is in its request's one line.
    lines = [line for line in process.lines if " msg=request " in line]
    assert any(
        re.search(r"method=GET path=/about status=200 duration_ms=[0-9.]+ site=rest$", line)
        for line in lines
    ), lines
    assert any(
        re.search(
            r"path=/livekit/token status=200 duration_ms=[0-9.]+ room=\"Test Room\" identity=bob$",
            line,
        )
        for line in lines
    ), lines
    assert len(lines) == 4, lines


# --------------------------------------------------------------------------
# The install step, then the example, in a folder outside the checkout


@pytest.fixture
def checkout_and_myapp(tmp_path) -> tuple:
    """A copy of this checkout (the install steps write build/ and copy from it), and ../myapp."""
    checkout, myapp = tmp_path / "livekit-token-server", tmp_path / "myapp"
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "node_modules",
        "__pycache__",
        "*.pyc",
        "build",
        "dist",
        "*.egg-info",
        ".ruff_cache",
        ".coverage*",
        "config.ini",
    )
    shutil.copytree(ROOT, checkout, ignore=ignore)
    myapp.mkdir()
    (myapp / "myserver.py").write_text(readme_examples()["myserver.py"], encoding="utf-8")
    return checkout, myapp


def run_install_step(command: str, checkout: Path, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": path, "HOME": os.environ.get("HOME", "/")},
    )


def serves_as_documented(myapp: Path, path: str) -> None:
    command = ["python3", "myserver.py"]
    with running(command, myapp, SERVE_LISTENING, installed_environment(path)) as (process, port):
        assert http_request(port, "POST", "/webhook", *signed_webhook(JOINED))[0] == 200
        assert post_token(port)[0] == 200
    assert "alice joined Test Room\n" in process.output


def test_myserver_runs_after_pip_install_of_the_checkout_into_a_fresh_venv(
    checkout_and_myapp, tmp_path
):
    checkout, myapp = checkout_and_myapp
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    path = f"{venv / 'bin'}:/usr/bin:/bin"  # `pip` and `python3` are the venv's
    installed = run_install_step(install_steps()["pip"], checkout, path)
    if (
        installed.returncode != 0
        and "No matching distribution found for setuptools" in installed.stderr
    ):
        pytest.skip(
            "pip cannot fetch setuptools from the package index, so `pip install .` cannot build"
        )
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run(
        ["python3", "-c", "import server; print(server.__file__)"],
        cwd=myapp,
        env=installed_environment(path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(venv)), (where.stdout, where.stderr)
    serves_as_documented(myapp, path)


def test_myserver_runs_from_a_copy_of_server_py_and_livekit_auth_beside_it(checkout_and_myapp):
    checkout, myapp = checkout_and_myapp
    path = os.environ.get("PATH", "/usr/bin:/bin")
    copied = run_install_step(install_steps()["cp"], checkout, path)
    assert copied.returncode == 0, copied.stderr
    assert (myapp / "server.py").is_file() and (myapp / "livekit_auth" / "__init__.py").is_file()
    serves_as_documented(myapp, path)


# --------------------------------------------------------------------------
# Serving from another thread


def threaded_snippet() -> str:
    [snippet] = [block for block in python_blocks() if "threading.Event()" in block]
    return snippet


# The program's work while it serves, in place of the snippet's comment: a request, and a look
# at whether serve() took over SIGTERM (it must not, off the main thread).
WORK = """import http.client, signal, time
for attempt in range(200):
    try:
        port = int(os.environ["SERVER_PORT"])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        print("healthz", connection.getresponse().status, flush=True)
        break
    except OSError:
        time.sleep(0.02)
print("SIGTERM untouched:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_from_another_thread_installs_no_signal_handler_and_stops_when_stop_is_set(examples):
    snippet = threaded_snippet()
    comment = next(line for line in snippet.splitlines() if line.startswith("# "))
    program = (
        "import os\n\nimport server\nfrom myserver import app, settings\n\n"
        + snippet.replace(comment, WORK)
    )
    (examples / "threaded.py").write_text(program, encoding="utf-8")
    env = {**environment(examples), "SERVER_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "threaded.py"],
        cwd=examples,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "healthz 200\nSIGTERM untouched: True\n", (result.stdout, result.stderr)
    assert "msg=stopped" in result.stderr and "path=/healthz status=200" in result.stderr


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
