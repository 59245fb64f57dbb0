"""The container image, built from the Dockerfile and run by a real engine (Podman).

The Dockerfile's base, python:3.12-slim, is not pulled: a Debian bookworm
minbase with python3 (mmdebstrap, from the Debian mirror alone) stands in for
it through `podman build --from`, once per test session. On that image: the
container refuses to start without credentials, serves /token through a port
published on 127.0.0.1 only, runs as a user that cannot change its own code,
passes its HEALTHCHECK (and fails it when nothing answers), and on `podman
stop` finishes the request in flight and exits 0.

The engine tests are skipped, with the reason, where podman, runc or mmdebstrap
is missing or podman cannot run a container; .ci/run installs all three.
Not checked here: the real base image, and the health check's timer (Podman
schedules it through systemd).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

import livekit_auth
import server
from support_http import TIMEOUT, build, http_request, read_response, wait_for

ROOT = Path(__file__).resolve().parents[1]
KEY = "containerkey"
# Secrets of 32 characters or more.
SECRET = "a-container-secret-of-32-chars-or-more"
BEARER = "a-bearer-secret-for-the-container-of-32-chars"
TOKEN_REQUEST = json.dumps({"roomName": "r", "participantName": "p"}).encode()

# What the server logs as it refuses to start without credentials: exactly one
# line, whose error is the message of the setting that is missing (see MISSING_CREDENTIALS).
REFUSAL = re.compile(r'time=\S+ level=ERROR msg="configuration error" error="(.*)"')

# `podman run -e` without real credentials, and the exact error the refusal names.
# Whatever is not given stays as the image's ENV sets it: empty.
MISSING_CREDENTIALS = [
    pytest.param({}, "livekit.api_key (LIVEKIT_API_KEY) must not be empty", id="neither"),
    pytest.param(
        {"LIVEKIT_API_KEY": KEY},
        "livekit.api_secret (LIVEKIT_API_SECRET) must not be empty",
        id="key-only",
    ),
    pytest.param(
        {"LIVEKIT_API_SECRET": SECRET},
        "livekit.api_key (LIVEKIT_API_KEY) must not be empty",
        id="secret-only",
    ),
]

# The server's lines once it listens, and once `podman stop`'s SIGTERM has reached it.
LISTENING = "level=INFO msg=listening host=0.0.0.0 port=6080"
DRAINING = 'level=INFO msg="stopping: finishing requests in flight" signal=SIGTERM'

# runc and cgroupfs: no systemd or crun needed on the test machine.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# Podman's default open-file limit (1048576) can be above the hard limit the
# machine allows, which runc then fails to set: stay well below.
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
BASE_SUITE = "bookworm"
BUILD_TIMEOUT = 300.0  # the base from the Debian mirror: about 30 s
ENGINE_TIMEOUT = 30.0  # any other podman command, and a container's start


def podman(*arguments: str, timeout: float = ENGINE_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PODMAN, *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checked(result: subprocess.CompletedProcess) -> str:
    """The command's output, once it has exited 0."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout.strip()


def output_tail(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


# --------------------------------------------------------------------------
# The Dockerfile's content, where an engine run shows nothing


def instructions(text: str) -> list:
    """(INSTRUCTION, arguments) for each Dockerfile instruction, in order.

    As Docker reads it: a line ending in a backslash continues on the next one,
    and lines starting with # are comments, also inside a continuation.
    """
    result = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if not pending and not line.strip():
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


def copied_paths() -> list:
    """The sources of every COPY, as paths relative to the build context."""
    sources = []
    for name, arguments in DOCKERFILE:
        if name != "COPY":
            continue
        parts = json.loads(arguments) if arguments.startswith("[") else arguments.split()
        assert not any(part.startswith("--") for part in parts), arguments
        sources += [part.rstrip("/") for part in parts[:-1]]
    return sources


def test_the_build_context_holds_only_the_server_and_the_library():
    assert copied_paths() == ["server.py", "livekit_auth"]
    # ADD can fetch URLs and unpack archives.
    assert not any(name == "ADD" for name, _ in DOCKERFILE)
    # .dockerignore sends the build nothing else: everything is excluded,
    # then exactly the copied paths come back.
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert rules[0] == "*"
    assert [rule[1:] for rule in rules if rule.startswith("!")] == copied_paths()


def test_the_image_starts_from_official_python_and_runs_the_server_without_python_variables():
    # The engine tests build on a stand-in base (--from): the real one is checked here.
    assert re.fullmatch(r"python:3\.[0-9]+(\.[0-9]+)?-slim\S*", only("FROM")), only("FROM")
    assert only("EXPOSE") == str(server.Settings.port)
    # Exec form, so that python3 is PID 1 and gets the stop signal itself.
    command = json.loads(only("CMD"))
    assert command[0] == "python3"
    assert command[-2:] == ["-m", "server"]
    # -E: no PYTHON* variable (PYTHONPATH...) can load other code; -S: no site-packages.
    assert {"-E", "-S"} <= set(command)


# --------------------------------------------------------------------------
# The image, built and run


def skip_unless_podman_runs() -> None:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install podman runc mmdebstrap)")
    info = podman("info")
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {output_tail(info)}")


def import_base(workdir: Path, name: str) -> None:
    """A Debian minbase with python3, from the Debian mirror, as the image `name`."""
    tarball = workdir / "base.tar"
    command = ["mmdebstrap", "--variant=minbase", "--include=python3", BASE_SUITE, str(tarball)]
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    checked(podman("import", str(tarball), name, timeout=BUILD_TIMEOUT))
    tarball.unlink()  # the image holds it now


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """The project's Dockerfile built on the stand-in base; both images are removed afterwards."""
    skip_unless_podman_runs()
    name = f"localhost/livekit-token-server-test-{uuid.uuid4().hex[:12]}"
    base = f"{name}-base"
    try:
        import_base(tmp_path_factory.mktemp("container"), base)
        trial = podman("run", "--rm", "--network=none", *ULIMITS, base, "python3", "-c", "")
        if trial.returncode != 0:
            pytest.skip(f"podman cannot run a container here: {output_tail(trial)}")
        # --format docker: the OCI format has no HEALTHCHECK. The build needs no network.
        build_options = ["--format=docker", "--network=none", "--layers=false"]
        checked(podman("build", *build_options, "--from", base, "-t", name, str(ROOT)))
        yield name
    finally:
        podman("rmi", "--force", name, base)


def logs(container: str) -> str:
    """What the server in `container` has written (it logs to stderr alone)."""
    result = podman("logs", container)
    return result.stdout + result.stderr


def wait_for_exit(container: str) -> int:
    return int(checked(podman("wait", container)))


class Served:
    """A container of the image, serving with credentials, its port published on 127.0.0.1."""

    def __init__(self, image: str) -> None:
        environment = {
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
            "TOKEN_AUTH_SECRETS": BEARER,
        }
        settings = [f"--env={name}={value}" for name, value in environment.items()]
        # An empty host port: Podman picks a free one.
        publish = "--publish=127.0.0.1::6080"
        self.id = checked(podman("run", "--detach", *ULIMITS, publish, *settings, image))
        self.port = None

    def wait_until_listening(self) -> None:
        assert wait_for(self.has_started, ENGINE_TIMEOUT), "no start"
        assert LISTENING in logs(self.id), logs(self.id)
        published = checked(podman("port", self.id)).splitlines()
        # Loopback only, never every address.
        (line,) = published
        match = re.fullmatch(r"6080/tcp -> 127\.0\.0\.1:([0-9]+)", line)
        assert match, published
        self.port = int(match[1])

    def has_started(self) -> bool:
        state = checked(podman("inspect", "--format={{.State.Status}}", self.id))
        return state != "running" or LISTENING in logs(self.id)

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return podman("exec", self.id, *command)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)


def remove(container: str) -> None:
    podman("rm", "--force", "--time=0", container)


@pytest.fixture
def served(image) -> Served:
    container = Served(image)
    try:
        container.wait_until_listening()
        yield container
    finally:
        remove(container.id)


def request_token(port: int, authorization: str | None = None) -> tuple:
    """POST /token in the OpenVidu tutorials' shape: (status, JSON body)."""
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    status, _, body = http_request(port, "POST", "/token", TOKEN_REQUEST, headers)
    return status, json.loads(body)


def claims_of(answer: dict) -> tuple:
    """(identity, room, roomJoin) of the token in a 200 answer, verified with the credentials."""
    assert list(answer) == ["token"], answer
    claims = livekit_auth.TokenVerifier(KEY, SECRET).verify(answer["token"])
    return claims.identity, claims.video.room, claims.video.room_join


@pytest.mark.parametrize("variables, message", MISSING_CREDENTIALS)
def test_without_credentials_the_container_exits_2_naming_the_setting(image, variables, message):
    # Outside a container, no credentials means development mode on LiveKit's public
    # key; in the image, listening on 0.0.0.0, it must mean no server at all.
    settings = [f"--env={name}={value}" for name, value in variables.items()]
    container = checked(podman("run", "--detach", "--network=none", *ULIMITS, *settings, image))
    try:
        code = wait_for_exit(container)
        output = logs(container)
    finally:
        remove(container)
    assert code == 2, output
    (line,) = output.splitlines()
    refusal = REFUSAL.fullmatch(line)
    assert refusal, line
    assert refusal[1] == message


def test_the_container_serves_tokens_to_a_bearer_through_the_published_port(served):
    status, answer = request_token(served.port, f"Bearer {BEARER}")
    assert status == 200, answer
    assert claims_of(answer) == ("p", "r", True)
    # TOKEN_AUTH_SECRETS from `podman run -e` is in force: no bearer, no token.
    status, answer = request_token(served.port)
    assert (status, answer) == (401, {"errorMessage": "A valid bearer token is required"})
    status, answer = request_token(served.port, f"Bearer {BEARER[:-1]}")
    assert status == 401, answer


# Run in the container, as its user: tries to write each path named, and says how it went.
WRITE_PROBE = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "a").close()
    except PermissionError:
        print("denied", path)
    else:
        print("written", path)
"""


def test_the_server_runs_as_a_user_that_cannot_change_its_code(served):
    uid = checked(served.exec("id", "-u"))
    assert uid.isdigit() and uid != "0", uid
    # The server itself (PID 1), not only what `podman exec` starts: real, effective, saved, fs.
    status = checked(served.exec("cat", "/proc/1/status"))
    (uids,) = re.findall(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert uids.split() == [uid] * 4, uids
    # The code, exactly the project's, its compiled bytecode (what the server runs),
    # and new files beside them.
    listed = checked(served.exec("find", "/app", "-name", "*.py", "-o", "-name", "*.pyc"))
    code = sorted(listed.splitlines())
    library = [f"/app/livekit_auth/{path.name}" for path in (ROOT / "livekit_auth").glob("*.py")]
    assert [path for path in code if path.endswith(".py")] == sorted([*library, "/app/server.py"])
    assert any(path.startswith("/app/__pycache__/server.") for path in code), code
    new = ["/app/planted.py", "/app/__pycache__/planted.pyc", "/app/livekit_auth/planted.py"]
    # Where the image means its user to write (WEBHOOK_EVENT_FILE): written, so the
    # refusals above are the code's permissions, not a read-only container.
    state = "/var/lib/livekit-token-server/events.jsonl"
    probe = checked(served.exec("python3", "-c", WRITE_PROBE, *code, *new, state))
    pairs = [line.split(" ", 1) for line in probe.splitlines()]
    verdicts = {path: verdict for verdict, path in pairs}
    assert verdicts == {**{path: "denied" for path in code + new}, state: "written"}


def test_the_health_check_passes_while_the_server_answers(served):
    check = podman("healthcheck", "run", served.id)
    assert check.returncode == 0, (check.stdout, check.stderr)
    health = checked(podman("inspect", "--format={{.State.Health.Status}}", served.id))
    assert health == "healthy"
    # The check asked this server.
    assert "path=/healthz status=200" in logs(served.id)


def test_the_health_check_fails_when_nothing_answers(image):
    # The image's HEALTHCHECK in a container whose command serves nothing.
    idle = ["--network=none", *ULIMITS, image, "sleep", "300"]
    container = checked(podman("run", "--detach", *idle))
    try:
        check = podman("healthcheck", "run", container)
    finally:
        remove(container)
    assert (check.returncode, check.stdout.strip()) == (1, "unhealthy"), check.stderr


def test_stop_finishes_the_request_in_flight_and_the_container_exits_0(served):
    head = [("Host", "127.0.0.1"), ("Content-Type", "application/json")]
    head += [("Authorization", f"Bearer {BEARER}"), ("Content-Length", str(len(TOKEN_REQUEST)))]
    with served.connect() as sock:
        # One whole request first: once it is answered, the server holds this connection.
        sock.sendall(build("POST", "/token", head, TOKEN_REQUEST))
        first, rest = read_response(sock)
        assert (first.status, rest) == (200, b"")
        # The next one's head and half its body are sent when the stop comes.
        half = len(TOKEN_REQUEST) // 2
        sock.sendall(build("POST", "/token", head, TOKEN_REQUEST[:half]))
        stop = subprocess.Popen(
            [*PODMAN, "stop", served.id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_for(lambda: DRAINING in logs(served.id), ENGINE_TIMEOUT), logs(served.id)
            sock.sendall(TOKEN_REQUEST[half:])
            answer, rest = read_response(sock)
        finally:
            _, stop_errors = stop.communicate(timeout=ENGINE_TIMEOUT)
    assert (answer.status, rest) == (200, b""), answer.body
    assert claims_of(answer.json()) == ("p", "r", True)
    assert stop.returncode == 0, stop_errors
    # 0 from the server's own exit: a kill after the stop timeout would give 137.
    assert wait_for_exit(served.id) == 0
