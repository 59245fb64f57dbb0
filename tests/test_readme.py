"""The README's commands, run in bash as a newcomer pastes them.

- The first command, `python3 server.py`, in this checkout with no setting in the
  environment: development mode on 127.0.0.1:6080. Every README block that talks to
  `localhost:6080` then runs against it unchanged: both /token shapes, the one-liner that
  reads a token's claims, and the signed webhook. Skipped when that port is taken.
- "Production setup": its five lines, with SERVER_PORT=0 added to the environment (the one
  change, so that the test never needs a fixed free port); then the same with the lines of
  "Locking it down further" put before its last line, `python3 server.py`.
- CI (`.ci/run`) runs the README's test command and its coverage command as written.

The embedding examples and their install step run in tests/test_embedding.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import COVERAGE_ENV
from livekit_auth import TokenVerifier
from support_http import TIMEOUT, http_request, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEV_LISTENING = re.compile(r"level=INFO msg=listening host=127\.0\.0\.1 port=6080$", re.MULTILINE)
LISTENING = re.compile(r"level=INFO msg=listening host=([0-9.]+) port=([0-9]+)$", re.MULTILINE)
# What the production setup's fourth line prints.
PRINTED = re.compile(
    r"^LiveKit Server's keys: (\S+): (\S+); your backend's bearer secret: (\S+)$", re.MULTILINE
)
TOKEN_REQUEST = json.dumps({"roomName": "Test Room", "participantName": "Participant42"}).encode()


def section(title: str) -> str:
    """The README's text under the heading `title` (any level), up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n", README, re.MULTILINE)
    assert match, f"README.md has no heading {title!r}"
    end = re.search(r"^#+ ", README[match.end() :], re.MULTILINE)
    return README[match.end() : match.end() + end.start() if end else len(README)]


def sh_blocks(text: str) -> list:
    return re.findall(r"^ *```sh\n(.*?)\n *```", text, re.MULTILINE | re.DOTALL)


def plain_environment(**settings: str) -> dict:
    """A shell's environment with no setting of this server in it: what a newcomer starts from."""
    kept = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYENV_ROOT", "PYENV_VERSION")
    environment = {name: os.environ[name] for name in kept if name in os.environ}
    return {**environment, **COVERAGE_ENV, **settings}


class Shell:
    """`bash -c script` in a session of its own, its output (stdout and stderr) read as it comes."""

    def __init__(self, script: str, env: dict) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern) -> re.Match:
        wait_for(lambda: pattern.search(self.output) is not None or self.proc.poll() is not None)
        match = pattern.search(self.output)
        assert match, self.output
        return match

    def stop(self, signum: int) -> None:
        """Send `signum` to the shell and the server it started; wait for both to end."""
        # bash runs the script's last command in its own process; should it not, the server
        # gets the signal all the same, as a terminal's Ctrl-C reaches the whole job.
        os.killpg(self.proc.pid, signum)
        self.proc.wait(TIMEOUT + 10)
        self.reader.join(TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        self.proc.stdout.close()


@contextlib.contextmanager
def shell(script: str, env: dict):
    process = Shell(script, env)
    try:
        yield process
    finally:
        process.kill()


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------
# The first command, and every block that asks the development server


def development_blocks() -> list:
    return [block for block in sh_blocks(README) if "localhost:6080" in block]


def run_block(block: str) -> object:
    """What the block prints, as JSON; it must succeed."""
    result = subprocess.run(
        ["bash", "-c", block],
        cwd=ROOT,
        env=plain_environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, (block, result.stderr)
    return json.loads(result.stdout)


def shown_claims() -> dict:
    """The claims the README shows the one-liner printing."""
    text = section("Run it and get a token")
    return json.loads(re.search(r"```json\n(.*?)```", text, re.DOTALL)[1])


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="the README's requests are curl commands; no curl here"
)
def test_the_first_command_serves_every_request_the_readme_makes_in_development_mode():
    first = sh_blocks(README)[0]
    assert first == "python3 server.py"
    if not port_is_free(6080):
        pytest.skip("127.0.0.1:6080 is in use, and the README's requests name that port")
    with shell(first, plain_environment()) as server:
        server.wait_for(DEV_LISTENING)
        answers = [run_block(block) for block in development_blocks()]
        server.stop(signal.SIGINT)  # Ctrl-C, as the README says
    assert server.proc.returncode == 0, server.output
    assert "level=INFO msg=stopped" in server.output
    assert "DEVELOPMENT MODE" in server.output

    verifier = TokenVerifier("devkey", "secret")
    by_shape = {}
    for answer in answers:
        shape = "claims" if "sub" in answer else ",".join(sorted(answer))
        by_shape.setdefault(shape, []).append(answer)
    assert set(by_shape) == {"token", "participant_token,server_url", "claims", "status"}, answers

    for answer in by_shape["token"]:
        claims = verifier.verify(answer["token"])
        assert (claims.identity, claims.video.room, claims.video.room_join) == (
            "Participant42",
            "Test Room",
            True,
        )
    for answer in by_shape["participant_token,server_url"]:
        assert answer["server_url"] == "ws://localhost:7880"
        claims = verifier.verify(answer["participant_token"])
        assert (claims.identity, claims.name, claims.video.room) == ("alice", "Alice", "Test Room")
    for answer in by_shape["status"]:
        assert answer == {"status": "ok"}
    assert re.search(
        r"path=/webhook status=200 duration_ms=[0-9.]+ event=room_started id=EV_1 "
        r'room="Test Room"',
        server.output,
    ), server.output

    # The one-liner prints the claims as they are, and as the README shows them.
    [decoded] = by_shape["claims"]
    assert (decoded["sub"], decoded["iss"], decoded["video"]["room"]) == (
        "Participant42",
        "devkey",
        "Test Room",
    )
    assert decoded["exp"] - decoded["nbf"] == 900  # TOKEN_TTL's default
    shown = shown_claims()
    assert list(shown) == list(decoded) and shown["video"] == decoded["video"]
    assert shown["exp"] - shown["nbf"] == decoded["exp"] - decoded["nbf"]


# --------------------------------------------------------------------------
# Production setup


def production_setup() -> str:
    [block] = sh_blocks(section("Production setup"))
    return block


def test_the_production_setup_refuses_nothing_makes_real_secrets_and_closes_token():
    block = production_setup()
    assert block.splitlines()[-1] == "python3 server.py" and len(block.splitlines()) == 5
    with shell(block, plain_environment(SERVER_PORT="0")) as server:
        host, port = server.wait_for(LISTENING).groups()
        key, secret, bearer = server.wait_for(PRINTED).groups()
        assert host == "0.0.0.0"
        headers = {"Content-Type": "application/json"}
        refused = http_request(int(port), "POST", "/token", TOKEN_REQUEST, headers)
        answered = http_request(
            int(port),
            "POST",
            "/token",
            TOKEN_REQUEST,
            {**headers, "Authorization": f"Bearer {bearer}"},
        )
        server.stop(signal.SIGTERM)
    assert refused[0] == 401 and refused[1]["www-authenticate"] == 'Bearer realm="token"'
    assert answered[0] == 200, answered
    # Signed with the pair the setup printed, for LiveKit Server to be given.
    claims = TokenVerifier(key, secret).verify(json.loads(answered[2])["token"])
    assert (claims.identity, claims.video.room) == ("Participant42", "Test Room")
    assert len(secret) >= 32 and len(bearer) >= 32 and secret != bearer
    log = server.output.replace(PRINTED.search(server.output)[0], "")
    # Nothing refused or warned about, and the secrets stay out of the log.
    assert "level=WARNING" not in log and "level=ERROR" not in log, log
    assert secret not in log and bearer not in log
    assert "level=INFO msg=stopped" in log


def test_the_production_setup_locked_down_further_enforces_each_control():
    *setup, start = production_setup().splitlines()
    [further] = sh_blocks(section("Locking it down further"))
    script = "\n".join([*setup, further, start])
    with shell(script, plain_environment(SERVER_PORT="0")) as server:
        host, port = server.wait_for(LISTENING).groups()
        _, secret, bearer = server.wait_for(PRINTED).groups()
        port = int(port)
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {bearer}",
            "Origin": "https://app.example.com",
        }

        def ask(room: str) -> tuple:
            body = json.dumps({"room_name": room, "participant_identity": "alice"}).encode()
            return http_request(port, "POST", "/token", body, headers)

        standup, support, elsewhere = ask("team-standup"), ask("support-42"), ask("elsewhere")
        # TOKEN_RATE_BURST=10: three asked already, so the eleventh request is one too many
        # (or the twelfth, should the bucket have refilled by one in the meantime).
        statuses = [ask("team-standup")[0] for _ in range(10)]
        server.stop(signal.SIGTERM)
    assert host == "127.0.0.1"
    assert (standup[0], support[0], elsewhere[0]) == (201, 201, 403)
    assert standup[1]["access-control-allow-origin"] == "https://app.example.com"
    answer = json.loads(standup[2])
    assert answer["server_url"] == "wss://livekit.example.com"
    grants = TokenVerifier("token-server", secret).verify(answer["participant_token"]).video
    assert (grants.room, tuple(grants.can_publish_sources)) == (
        "team-standup",
        ("camera", "microphone"),
    )
    assert statuses[:7] == [201] * 7 and 429 in statuses[7:], statuses
    log = server.output.replace(PRINTED.search(server.output)[0], "")
    assert "level=WARNING" not in log and "level=ERROR" not in log, log


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
