"""Benchmark the token server against the stdlib floor, on loopback, with wrk.

    python3 bench/run.py                   # 2 interleaved rounds, 5 s per run, about 4 minutes
    python3 bench/run.py --quick           # smoke run: 1 round, 1 s per run
    python3 bench/run.py --rounds 4
    python3 bench/run.py --baseline HEAD   # also REV's server.py, in the same rounds
    python3 bench/run.py --frameworks      # also FastAPI (uvicorn) and Express, if installed

Starts server.py (with its access log and with SERVER_ACCESS_LOG=false) and
bench/floor.py on free 127.0.0.1 ports, drives them with wrk, and prints
Markdown tables of the runs, of CPU per request and of ratios, plus cold
start, memory and in-process lines. Standard library only; livekit-api, when
importable, is timed in-process next to livekit_auth. The --frameworks targets
(each with its access log and without) need their own bench-only dependencies
(bench/README.md). Needs wrk (apt-get install wrk) and Linux /proc.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import importlib.metadata
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path
from typing import Callable, Optional

# Write nothing outside bench/: no __pycache__ in livekit_auth/ from this process.
sys.dont_write_bytecode = True
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livekit_auth import AccessToken, TokenVerifier, VideoGrants, WebhookReceiver  # noqa: E402

# Not the dev key: the server must run as deployed, with a 32+ character secret.
API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

# Settings that differ from the shipped defaults, and why. Everything else is as
# shipped. Only settings that both the event-loop server (1b1b459) and the
# http.server rebuild read: the baseline runs with the very same environment.
SERVER_SETTINGS = {
    "LIVEKIT_API_KEY": API_KEY,
    "LIVEKIT_API_SECRET": API_SECRET,
    "SERVER_HOST": "127.0.0.1",  # loopback only
    # One client asking thousands of times a second would get 429s from the
    # default limit (300 a minute): keep the limiter running, but never refusing.
    "TOKEN_RATE_PER_MINUTE": "1000000",
    "TOKEN_RATE_BURST": "1000000",
    # wrk sends the same signed event again and again; with deduplication on,
    # all but the first would take the short "already seen" path.
    "WEBHOOK_DEDUPE_SECONDS": "0",
}

# The --frameworks targets: their app files, and their bench-only dependencies.
FRAMEWORKS = REPO / "bench" / "frameworks"
FRAMEWORKS_PYTHON = REPO / "bench" / ".venv-frameworks" / "bin" / "python"
FASTAPI_INSTALL = (
    "python3 -m venv bench/.venv-frameworks && "
    "bench/.venv-frameworks/bin/pip install -r bench/frameworks/requirements.txt"
)
EXPRESS_INSTALL = "npm ci --prefix bench/frameworks"

TOKEN_BODY = b'{"roomName":"Test Room","participantName":"Participant42"}'
# A participant_joined event as LiveKit sends it (protobuf JSON, int64 as strings).
WEBHOOK_BODY = (
    b'{"event":"participant_joined","room":{"sid":"RM_hycBMAjmt6Ub","name":"Test Room",'
    b'"emptyTimeout":300,"departureTimeout":20,"creationTime":"1700000000",'
    b'"creationTimeMs":"1700000000123","turnPassword":"","enabledCodecs":[{"mime":"audio/opus"},'
    b'{"mime":"video/VP8"}],"numParticipants":1},"participant":{"sid":"PA_Ldp8b4tLuQDY",'
    b'"identity":"Participant42","state":"ACTIVE","joinedAt":"1700000001",'
    b'"joinedAtMs":"1700000001456","name":"Participant42","version":2,"permission":'
    b'{"canSubscribe":true,"canPublish":true,"canPublishData":true},"region":"local"},'
    b'"id":"EV_3QBTeMBYbTgT","createdAt":"1700000001"}'
)

# (label, connections, send "Connection: close")
LOADS = (
    ("1 conn", 1, False),
    ("8 conns", 8, False),
    ("64 conns", 64, False),
    ("8 conns, close", 8, True),
)
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0  # the server drains for up to 10 s on SIGTERM
PAUSE = 0.3  # between wrk runs, so closed connections and their threads are gone


# --------------------------------------------------------------------------
# Processes


@dataclasses.dataclass
class Service:
    """A process under test: how to start it, and what it serves."""

    name: str  # "server", "server-nolog", "baseline", "floor", "fastapi", "express-nolog", ...
    argv: Callable[[int], list]  # port -> command line
    cwd: Path
    env: dict
    log: Optional[Path]  # its stdout and stderr, appended; None: discarded
    what: str  # for the report: what runs
    access_log: bool = True  # writes a line per request (to `log`)
    webhook: bool = True  # serves POST /webhook
    signed: bool = True  # its tokens are JWTs signed with the bench key (the floor's are not)
    port_env: str = ""  # takes its port from this environment variable (server.py: SERVER_PORT)


def free_port() -> int:
    # Bind port 0 and let go: the kernel will not hand it out again right away.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(service: Service, procs: list) -> tuple:
    """Start `service` on a free port; (process, port). The process joins `procs`, to be stopped."""
    port = free_port()
    env = dict(service.env, **{service.port_env: str(port)}) if service.port_env else service.env
    log = open(service.log, "ab") if service.log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            service.argv(port),
            cwd=service.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        if service.log:
            log.close()  # the child has its own copy
    procs.append(proc)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(port: int, path: str, body: bytes, headers: dict) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int) -> float:
    """Poll POST /token until a 200; return time.perf_counter() at that moment."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{shlex.join(map(str, proc.args))} exited with status {proc.returncode} before answering"
            )
        try:
            status, _ = post(port, "/token", TOKEN_BODY, {"Content-Type": "application/json"})
            if status == 200:
                return time.perf_counter()
        except OSError:
            pass  # not listening yet
        time.sleep(0.002)
    raise RuntimeError(
        f"{shlex.join(map(str, proc.args))} did not answer 200 within {READY_TIMEOUT:.0f} s"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (proc(5): fields 14 and 15, after the ')' of comm)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


# --------------------------------------------------------------------------
# The baseline and the frameworks


def materialize(rev: str, dest: Path) -> str:
    """REV's server.py and livekit_auth/ into `dest` (git archive, nothing else touched); '<sha> <subject>'."""
    git = ["git", "-C", str(REPO)]
    found = subprocess.run(
        git + ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit of this repository")
    sha = found.stdout.strip()
    archive = subprocess.run(
        git + ["archive", "--format=tar", sha, "server.py", "livekit_auth"], capture_output=True
    )
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {rev}: {archive.stderr.decode(errors='replace').strip()}")
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python before 3.11.4; our own repository's archive
            tar.extractall(dest)
    subject = subprocess.run(
        git + ["log", "-1", "--format=%s", sha], capture_output=True, text=True
    ).stdout.strip()
    return f"{sha[:12]}, “{subject[:50]}{'…' if len(subject) > 50 else ''}”"


# Imports what the FastAPI app needs; prints the versions, and which of uvloop and httptools are there.
_FASTAPI_PROBE = """
import importlib.metadata, importlib.util, json
import fastapi, uvicorn, livekit.api
names = ["fastapi", "uvicorn", "livekit-api"] + [n for n in ("uvloop", "httptools") if importlib.util.find_spec(n)]
print(json.dumps({name: importlib.metadata.version(name) for name in names}))
"""


def fastapi_services(base_env: dict, tmp: Path) -> tuple:
    """([Service], a note): FastAPI on uvicorn, one worker, with uvloop and httptools when
    installed; "fastapi" with uvicorn's access log (on by default), "fastapi-nolog" without."""
    if not FRAMEWORKS_PYTHON.exists():
        return [], f"FastAPI skipped: no bench/.venv-frameworks; install with `{FASTAPI_INSTALL}`"
    # No bytecode written: the app's own is compiled at each start (a few ms);
    # the packages' was compiled by pip at install time.
    env = dict(
        base_env,
        PYTHONDONTWRITEBYTECODE="1",
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
    )
    probe = subprocess.run(
        [str(FRAMEWORKS_PYTHON), "-c", _FASTAPI_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        error = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (
            [],
            f"FastAPI skipped: bench/.venv-frameworks lacks a package ({error}); install with `{FASTAPI_INSTALL}`",
        )
    versions = json.loads(probe.stdout)
    options = ["--workers", "1"]
    options += ["--loop", "uvloop"] if "uvloop" in versions else ["--loop", "asyncio"]
    options += ["--http", "httptools"] if "httptools" in versions else ["--http", "h11"]
    argv = [
        str(FRAMEWORKS_PYTHON),
        "-m",
        "uvicorn",
        "fastapi_app:app",
        "--app-dir",
        str(FRAMEWORKS),
        "--host",
        "127.0.0.1",
    ]
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    what = (
        f"`uvicorn fastapi_app:app --port PORT {' '.join(options)}` (bench/frameworks/fastapi_app.py, "
        f"async def, a pydantic model for the body; {listed})"
    )
    logged = Service(
        "fastapi",
        lambda port: argv + ["--port", str(port)] + options,
        REPO,
        env,
        tmp / "fastapi.log",
        f"{what}, uvicorn's access log on, as by default, on stdout",
    )
    unlogged = Service(
        "fastapi-nolog",
        lambda port: argv + ["--port", str(port)] + options + ["--no-access-log"],
        REPO,
        env,
        tmp / "fastapi-nolog.log",
        "the same with `--no-access-log`",
        access_log=False,
    )
    return [logged, unlogged], ""


def express_services(base_env: dict, tmp: Path) -> tuple:
    """([Service], a note): Express with livekit-server-sdk, one node process;
    "express" with morgan("combined") on stdout, "express-nolog" without, as Express comes."""
    node = shutil.which("node")
    if node is None:
        return [], "Express skipped: node is not installed"
    versions = {}
    for package in ("express", "livekit-server-sdk", "morgan"):
        manifest = FRAMEWORKS / "node_modules" / package / "package.json"
        if not manifest.exists():
            return (
                [],
                f"Express skipped: bench/frameworks/node_modules lacks {package}; install with `{EXPRESS_INSTALL}`",
            )
        versions[package] = json.loads(manifest.read_text())["version"]
    node_version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    # NODE_ENV=production, as Express's own guide asks of a deployment.
    env = dict(
        base_env, NODE_ENV="production", LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET
    )
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    app = str(FRAMEWORKS / "express_app.js")
    logged = Service(
        "express",
        lambda port: [node, app, str(port), "--access-log"],
        REPO,
        env,
        tmp / "express.log",
        f"`node bench/frameworks/express_app.js PORT --access-log` (Node {node_version}, {listed}, "
        'NODE_ENV=production; morgan("combined") on stdout)',
    )
    unlogged = Service(
        "express-nolog",
        lambda port: [node, app, str(port)],
        REPO,
        env,
        tmp / "express-nolog.log",
        "the same without `--access-log`: no access log, as Express has none by default",
        access_log=False,
    )
    return [logged, unlogged], ""


# --------------------------------------------------------------------------
# Access logs

# One pattern a line, the first that matches; the status is group 1.
_STATUS_PATTERNS = (
    # The event-loop server's plain lines: "... INFO 127.0.0.1 POST /token 200 0.4ms".
    re.compile(rb" [A-Z]+ \S+ ([0-9]{3}) [0-9.]+ms$"),
    # logfmt-style lines: "time=... level=INFO msg=request client=... method=POST path=/token status=200 duration_ms=0.4".
    re.compile(rb'(?:^|\s)status="?([0-9]{3})\b'),
    # uvicorn's: 'INFO:     127.0.0.1:39250 - "POST /token HTTP/1.1" 200 OK'.
    re.compile(rb'HTTP/[0-9.]+" ([0-9]{3})\b'),
)
_ERROR_LINE = re.compile(rb" ERROR |(?:^|\s)level=\"?ERROR\b|^ERROR:")
_DROPPED = re.compile(rb"^([0-9]+) log lines dropped")


def read_log(data: bytes) -> dict:
    """Lines, lines at ERROR level, dropped lines reported, and a Counter of answers by status."""
    statuses: collections.Counter = collections.Counter()
    errors = dropped = 0
    lines = data.splitlines()
    for line in lines:
        if _ERROR_LINE.search(line):
            errors += 1
        dropped_here = _DROPPED.match(line)
        if dropped_here:
            dropped += int(dropped_here.group(1))
            continue
        for pattern in _STATUS_PATTERNS:
            found = pattern.search(line)
            if found:
                statuses[found.group(1).decode()] += 1
                break
    return {"lines": len(lines), "errors": errors, "dropped": dropped, "statuses": statuses}


def describe_log(summary: dict, access_log: bool) -> str:
    not_200 = ", ".join(
        f"{n:,} × {s}" for s, n in sorted(summary["statuses"].items()) if s != "200"
    )
    text = (
        f"{summary['lines']:,} lines, {summary['statuses']['200']:,} answers 200, {summary['errors']} at ERROR level; "
        f"answers other than 200: {not_200 or 'none'}"
    )
    if summary["dropped"]:
        text += f"; {summary['dropped']:,} lines dropped by the server"
    if access_log and summary["lines"] and not summary["statuses"]:
        text += "; NO ACCESS LINE RECOGNISED: a log format read_log() does not know"
    if not access_log and summary["statuses"]["200"]:
        text += "; ACCESS LINES FROM A TARGET MEANT TO RUN WITHOUT THEM: the setting had no effect"
    return text


# --------------------------------------------------------------------------
# wrk


def lua_script(path: Path, content_type: str, body: bytes, authorization: str = "") -> str:
    # Long brackets take the body as is; it must not contain their closing.
    text = body.decode("ascii")
    assert "]==]" not in text
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [==[{text}]==]",
        f'wrk.headers["Content-Type"] = "{content_type}"',
    ]
    if authorization:
        lines.append(f'wrk.headers["Authorization"] = "{authorization}"')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(wrk: str, url: str, script: str, conns: int, close: bool, duration: int) -> dict:
    argv = [
        wrk,
        "-t",
        str(min(conns, 2)),
        "-c",
        str(conns),
        "-d",
        f"{duration}s",
        "--latency",
        "-s",
        script,
    ]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    try:
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50, p99 = (
            float(value) * _UNITS[unit]
            for value, unit in (
                re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
                for q in (50, 99)
            )
        )
    except AttributeError:
        raise RuntimeError(f"cannot parse wrk output for {url}:\n{out}") from None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "rate": rate,
        "p50": p50,
        "p99": p99,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


# --------------------------------------------------------------------------
# In-process


def per_call_us(cases: dict, repeat: int) -> dict:
    """Microseconds per call for each function: the median of `repeat` timeit
    repeats of about 0.2 s each, taken in turn so that noise hits all alike."""
    timers = {name: timeit.Timer(fn) for name, fn in cases.items()}
    numbers = {name: timer.autorange()[0] for name, timer in timers.items()}
    times: dict = {name: [] for name in cases}
    for _ in range(repeat):
        for name, timer in timers.items():
            times[name].append(timer.timeit(numbers[name]) / numbers[name] * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def in_process(authorization: str, repeat: int) -> tuple:
    """({(kind, library): µs per call}, a note or ""), ours and livekit-api's when importable."""
    room, identity = "Test Room", "Participant42"
    ours = WebhookReceiver(TokenVerifier(API_KEY, API_SECRET))
    cases = {
        ("token", "livekit_auth"): lambda: (
            AccessToken(API_KEY, API_SECRET)
            .with_identity(identity)
            .with_grants(VideoGrants(room_join=True, room=room))
            .to_jwt()
        ),
        ("webhook", "livekit_auth"): lambda: ours.receive(WEBHOOK_BODY, authorization),
    }
    try:
        from livekit import api as sdk
    except ImportError:
        return per_call_us(cases, repeat), "livekit-api is not importable: livekit_auth only"
    name = "livekit-api " + importlib.metadata.version("livekit-api")
    theirs = sdk.WebhookReceiver(sdk.TokenVerifier(API_KEY, API_SECRET))
    body_text = WEBHOOK_BODY.decode("utf-8")  # the SDK's receive takes str
    theirs.receive(body_text, authorization)  # raises if the SDK does not accept our webhook
    cases[("token", name)] = lambda: (
        sdk.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_grants(sdk.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    cases[("webhook", name)] = lambda: theirs.receive(body_text, authorization)
    return per_call_us(cases, repeat), ""


# --------------------------------------------------------------------------
# Report


def spread(values: list, fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    if len(values) == 1:
        return fmt.format(mid)
    return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def table(results: dict, targets: list) -> list:
    lines = [
        "| target | load | req/s | p50 ms | p99 ms | non-2xx | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        for load, _, _ in LOADS:
            runs = results[target, load]
            errors = sum(run["socket_errors"] for run in runs)
            non2xx = str(sum(run["non2xx"] for run in runs)) + (
                f" ({errors} socket errors)" if errors else ""
            )
            lines.append(
                f"| {target} | {load} | {spread([r['rate'] for r in runs], '{:,.0f}')} "
                f"| {spread([r['p50'] for r in runs], '{:.2f}')} | {spread([r['p99'] for r in runs], '{:.2f}')} "
                f"| {non2xx} | {spread([r['cpu_ms'] for r in runs], '{:.3f}')} |"
            )
    return lines


# --------------------------------------------------------------------------


def cold_starts(services: list, procs: list, python: str, env: dict, count: int) -> dict:
    """Milliseconds from process start to the first 200 on POST /token, `count`
    times each, in turn, after one warm-up each (which also fills the bytecode
    cache). "python3 -c pass" to exit is timed alongside, as the interpreter's share."""
    times: dict = {"interpreter": [], **{service.name: [] for service in services}}
    for attempt in range(count + 1):
        started = time.perf_counter()
        subprocess.run([python, "-c", "pass"], env=env, check=True, timeout=READY_TIMEOUT)
        if attempt:
            times["interpreter"].append((time.perf_counter() - started) * 1000)
        for service in services:
            started = time.perf_counter()
            proc, port = start(service, procs)
            ready = wait_ready(proc, port)
            stop(proc)
            if attempt:
                times[service.name].append((ready - started) * 1000)
    return times


def hs256_claims(token: str) -> dict:
    """The claims of a JWT signed HS256 with the bench secret; raises if it is not.

    Checked here with hmac, not with livekit_auth: the bench does not lean on the code it measures."""

    def decode(segment: str) -> bytes:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))

    header, payload, signature = token.split(".")
    expected = hmac.new(
        API_SECRET.encode(), f"{header}.{payload}".encode("ascii"), hashlib.sha256
    ).digest()
    if json.loads(decode(header)).get("alg") != "HS256" or not hmac.compare_digest(
        decode(signature), expected
    ):
        raise RuntimeError(f"not an HS256 token signed with the bench secret: {token[:80]}…")
    claims = json.loads(decode(payload))
    if claims.get("iss") != API_KEY or not claims.get("video", {}).get("roomJoin"):
        raise RuntimeError(f"token claims not from the bench key or without roomJoin: {claims}")
    return claims


def check_answers(service: Service, port: int, authorization: str) -> None:
    """Fail before timing anything if a target does not answer 200: a benchmark of 401s says nothing."""
    status, data = post(port, "/token", TOKEN_BODY, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"{service.name} answered POST /token with {status}: {data[:200]!r}")
    token = json.loads(data)["token"]
    if service.signed:
        claims = hs256_claims(token)
        if (
            claims.get("sub") != "Participant42"
            or claims.get("video", {}).get("room") != "Test Room"
        ):
            raise RuntimeError(
                f"{service.name}'s token is not for Participant42 in Test Room: {claims}"
            )
    if service.webhook:
        headers = {"Content-Type": "application/webhook+json", "Authorization": authorization}
        status, data = post(port, "/webhook", WEBHOOK_BODY, headers)
        if status != 200:
            raise RuntimeError(
                f"{service.name} answered POST /webhook with {status}: {data[:200]!r}"
            )
        # A webhook without a valid signature must be refused, or the 200 above proves nothing.
        headers["Authorization"] = authorization[:-4] + (
            "AAAA" if not authorization.endswith("AAAA") else "BBBB"
        )
        status, _ = post(port, "/webhook", WEBHOOK_BODY, headers)
        if status < 400:
            raise RuntimeError(f"{service.name} answered a badly signed webhook with {status}")


def load_rounds(wrk: str, targets: list, rounds: int, duration: int) -> dict:
    """{(target, load): [one wrk result per round]}, with the target's CPU ms per request."""
    results: dict = {}
    for round_number in range(rounds):
        # Alternate the order, so that no target always runs first.
        order = targets if round_number % 2 == 0 else targets[::-1]
        for load, conns, close in LOADS:
            for name, proc, url, script in order:
                before = cpu_seconds(proc.pid)
                run = run_wrk(wrk, url, script, conns, close, duration)
                run["cpu_ms"] = (cpu_seconds(proc.pid) - before) * 1000 / max(run["requests"], 1)
                results.setdefault((name, load), []).append(run)
                print(
                    f"round {round_number + 1}/{rounds}  {name:18} {load:15} {run['rate']:8,.0f} req/s",
                    file=sys.stderr,
                )
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited during the run")
                time.sleep(PAUSE)
    return results


def ratio(results: dict, numerator: str, denominator: str, load: str) -> float:
    """Req/s of `numerator` over `denominator` at `load`, the median across rounds."""
    # Runs side by side in the same round share the machine's mood: their
    # ratio is steadier than either number on a noisy machine.
    pairs = zip(results[numerator, load], results[denominator, load])
    return statistics.median(a["rate"] / b["rate"] for a, b in pairs)


def ratios(results: dict, numerator: str, denominator: str) -> str:
    return "; ".join(
        f"{load} {ratio(results, numerator, denominator, load):.2f}" for load, _, _ in LOADS
    )


# The comparison with the frameworks: (ours, theirs), each logged or not.
PEER_PAIRS = (
    ("server", "express"),
    ("server", "fastapi"),
    ("server", "express-nolog"),
    ("server", "fastapi-nolog"),
    ("server-nolog", "express-nolog"),
    ("server-nolog", "fastapi-nolog"),
)
# (path, load) columns of that comparison.
PEER_COLUMNS = (
    ("/token", "1 conn"),
    ("/token", "8 conns"),
    ("/token", "64 conns"),
    ("/webhook", "8 conns"),
)


def peer_table(results: dict, names: set) -> list:
    """Markdown: this server's req/s over each framework's, logged and not, where both ran."""
    header = " | ".join(f"{path} {load}" for path, load in PEER_COLUMNS)
    lines = [f"| req/s ratio | {header} |", "|---|" + "---:|" * len(PEER_COLUMNS)]
    for ours, theirs in PEER_PAIRS:
        if theirs not in names:
            continue
        cells = [
            f"{ratio(results, f'{ours} {path}', f'{theirs} {path}', load):.2f}"
            for path, load in PEER_COLUMNS
        ]
        lines.append(f"| {ours} ÷ {theirs} | {' | '.join(cells)} |")
    return lines


def cpu_table(results: dict, names: list) -> list:
    """Markdown: CPU ms per /token request at 1 and 8 connections, for every target."""
    loads = ("1 conn", "8 conns")
    lines = ["| /token, CPU ms/req | " + " | ".join(loads) + " |", "|---|" + "---:|" * len(loads)]
    for name in names:
        cells = [
            spread([run["cpu_ms"] for run in results[f"{name} /token", load]], "{:.3f}")
            for load in loads
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark server.py against the stdlib floor with wrk."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per wrk run, 1 round")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run REV's server.py (and its livekit_auth/), from git, as 'baseline', in the same rounds",
    )
    parser.add_argument(
        "--frameworks",
        action="store_true",
        help="also FastAPI on uvicorn and Express, where their bench-only dependencies are installed",
    )
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 2
    if not 1 <= rounds <= 20:
        parser.error("--rounds takes 1 to 20")
    duration = 1 if args.quick else 5
    starts = 3 if args.quick else 5
    repeat = 3 if args.quick else 7

    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "wrk is not installed: apt-get install wrk (Debian, Ubuntu), then run again.",
            file=sys.stderr,
        )
        return 2
    if not os.path.exists("/proc/self/stat"):
        print(
            "this benchmark reads /proc for CPU time and memory: run it on Linux.", file=sys.stderr
        )
        return 2
    # SIGTERM should stop the children too, through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)

    # The real interpreter, not a venv wrapper or a pyenv shim, which add
    # their own start-up time to the cold start.
    python = getattr(sys, "_base_executable", "") or sys.executable
    load_before = Path("/proc/loadavg").read_text().split()[0]

    with tempfile.TemporaryDirectory(prefix="lk-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # A clean environment: nothing from ours leaks into the targets'
        # settings. Bytecode goes to the temp dir, not to __pycache__ in the repo.
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
        server_env = dict(env, **SERVER_SETTINGS)
        server_what = "`python3 server.py` (the working tree)"
        services = [
            Service(
                "server",
                lambda port: [python, "server.py"],
                REPO,
                server_env,
                tmp / "server.log",
                server_what,
                port_env="SERVER_PORT",
            ),
            Service(
                "server-nolog",
                lambda port: [python, "server.py"],
                REPO,
                dict(server_env, SERVER_ACCESS_LOG="false"),
                tmp / "server-nolog.log",
                "the same with `SERVER_ACCESS_LOG=false`: no line per request",
                port_env="SERVER_PORT",
                access_log=False,
            ),
            Service(
                "floor",
                lambda port: [python, "bench/floor.py", str(port)],
                REPO,
                env,
                None,
                "`python3 bench/floor.py PORT`, no logging",
                webhook=False,
                signed=False,
                access_log=False,
            ),
        ]
        notes = []
        if args.baseline:
            baseline_dir = tmp / "baseline"
            described = materialize(args.baseline, baseline_dir)
            services.append(
                Service(
                    "baseline",
                    lambda port: [python, "server.py"],
                    baseline_dir,
                    server_env,
                    tmp / "baseline.log",
                    f"`python3 server.py` with server.py and livekit_auth/ of {args.baseline} = {described}, "
                    "from `git archive` into a temporary directory",
                    port_env="SERVER_PORT",
                )
            )
        if args.frameworks:
            for found, note in (fastapi_services(env, tmp), express_services(env, tmp)):
                services += found
                if note:
                    notes.append(note)
                    print(note, file=sys.stderr)
        by_name = {service.name: service for service in services}
        # Load targets, in the order of a round: each server's /token next to the floor's, then webhooks.
        order = ["server", "server-nolog", "baseline", "floor"]
        order += ["fastapi", "fastapi-nolog", "express", "express-nolog"]
        paths = [("/token", name) for name in order if name in by_name]
        paths += [("/webhook", name) for name in order if name in by_name and by_name[name].webhook]

        runs = len(LOADS) * len(paths) * rounds
        # About 1 s a cold start: uvicorn takes 1.5 s, a Python server 0.1 s and 0.5 s to stop.
        estimate = (
            runs * (duration + PAUSE + 0.1)
            + len(services) * (starts + 1) * 1.0
            + 4 * (0.5 + 0.25 * repeat)
        )
        print(
            f"about {estimate:.0f} s: {runs} wrk runs of {duration} s, cold starts, in-process timing",
            file=sys.stderr,
        )

        # A webhook signed as LiveKit signs it, valid for the whole run.
        ttl = datetime.timedelta(seconds=3600 + runs * (duration + 5))
        digest = base64.b64encode(hashlib.sha256(WEBHOOK_BODY).digest()).decode("ascii")
        authorization = AccessToken(API_KEY, API_SECRET).with_sha256(digest).with_ttl(ttl).to_jwt()
        scripts = {
            "/token": lua_script(tmp / "token.lua", "application/json", TOKEN_BODY),
            "/webhook": lua_script(
                tmp / "webhook.lua", "application/webhook+json", WEBHOOK_BODY, authorization
            ),
        }

        procs: list = []
        try:
            cold = cold_starts(services, procs, python, env, starts)
            running = {service.name: start(service, procs) for service in services}
            for service in services:
                wait_ready(*running[service.name])
            for service in services:
                check_answers(service, running[service.name][1], authorization)
            idle = {name: memory_mib(proc.pid, "VmRSS") for name, (proc, _) in running.items()}
            targets = [
                (
                    f"{name} {path}",
                    running[name][0],
                    f"http://127.0.0.1:{running[name][1]}{path}",
                    scripts[path],
                )
                for path, name in paths
            ]
            results = load_rounds(wrk, targets, rounds, duration)
            loaded = {
                name: (memory_mib(proc.pid, "VmRSS"), memory_mib(proc.pid, "VmHWM"))
                for name, (proc, _) in running.items()
            }
        except BaseException:
            # The logs go with the temp dir: show their ends first.
            for service in services:
                if service.log and service.log.exists():
                    sys.stderr.write(f"--- {service.name}'s log, its end:\n")
                    sys.stderr.write(service.log.read_text(errors="replace")[-2000:])
            raise
        finally:
            for proc in procs:
                stop(proc)
        logs = {
            service.name: read_log(service.log.read_bytes()) for service in services if service.log
        }

    print("in-process timing", file=sys.stderr)
    micro, micro_note = in_process(authorization, repeat)

    interpreter = "python3" if sys.executable == python else os.path.relpath(sys.executable, REPO)
    command = shlex.join(
        [interpreter, os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]]
    )
    wrk_version = subprocess.run(
        [wrk, "-v"], capture_output=True, text=True, timeout=10
    ).stdout.split(" [")[0]
    names = [service.name for service in services]
    out = [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"Python {platform.python_version()}, nproc {os.cpu_count()}, {wrk_version}; "
        f"load average {load_before} when the run began.",
        f"Command, from the repo root: `{command}`. {rounds} interleaved round(s), {duration} s per run, "
        "median (min–max) across rounds. wrk and every target share the same cores, on loopback; "
        "one target at a time is under load.",
        "",
        *table(results, [target[0] for target in targets]),
        "",
        "CPU the target process used (utime + stime, all threads) per request wrk completed, "
        "median (min–max) across rounds:",
        "",
        *cpu_table(results, [name for path, name in paths if path == "/token"]),
        "",
        "Req/s ratios, from runs side by side in the same round and load (median across rounds):",
    ]
    for name in ("server", "server-nolog"):
        out.append(
            f"- {name} /token over floor /token: {ratios(results, f'{name} /token', 'floor /token')}."
        )
    if "baseline" in by_name:
        for path in ("/token", "/webhook"):
            out.append(
                f"- server {path} over baseline {path} (new / old): {ratios(results, f'server {path}', f'baseline {path}')}."
            )
    if set(by_name) & {"fastapi", "express"}:
        out += [
            "",
            "This server's req/s over each framework's, median across rounds: with a line per request "
            "(server as shipped, fastapi with uvicorn's default access log, express with morgan) "
            "and without (-nolog):",
            "",
            *peer_table(results, set(by_name)),
        ]
    out += [
        "",
        f"- Cold start, process start to first 200 on POST /token, median (min–max) of {starts}: "
        + ", ".join(f"{name} {spread(cold[name], '{:.0f}')} ms" for name in names)
        + f" (interpreter alone, `python3 -c pass`: {spread(cold['interpreter'], '{:.0f}')} ms).",
        "- RSS, idle after start / after load (peak), MiB: "
        + "; ".join(
            f"{name} {idle[name]:.1f} / {loaded[name][0]:.1f} ({loaded[name][1]:.1f})"
            for name in names
        )
        + ".",
    ]
    for kind in ("token", "webhook"):
        timings = ", ".join(
            f"{library} {us:.1f} µs" for (k, library), us in micro.items() if k == kind
        )
        out.append(f"- In-process, per {kind} (median of {repeat} timeit repeats): {timings}.")
    if micro_note:
        out.append(f"- {micro_note}.")
    out.append(
        f"- {'Server and baseline run' if 'baseline' in by_name else 'Server runs'} under {python} "
        f"with {'the same ' if 'baseline' in by_name else ''}settings: key {API_KEY!r}, "
        f"{len(API_SECRET)}-character secret, rate limit raised to 1,000,000 a minute (burst as many) so it "
        "never refuses, webhook dedupe off so each event takes the full path; access log on as shipped "
        "(server-nolog: SERVER_ACCESS_LOG=false). Every target but the floor writes its stdout and stderr "
        "to a file of its own in a temporary directory, access lines included; answers counted by status "
        "from the logs that have access lines "
        "(one 401 per target with a webhook: the check that a badly signed one is refused). "
        + (
            "The frameworks sign with the same key and secret. "
            if set(by_name) & {"fastapi", "express"}
            else ""
        )
        + f"Webhook: a signed participant_joined event of {len(WEBHOOK_BODY)} bytes; "
        "livekit-api's receive also parses it into a protobuf WebhookEvent."
    )
    for service in services:
        log_text = (
            f" Log: {describe_log(logs[service.name], service.access_log)}."
            if service.name in logs
            else ""
        )
        out.append(f"- {service.name}: {service.what}.{log_text}")
    for note in notes:
        out.append(f"- {note}.")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
