"""Benchmark the token server against the stdlib floor, on loopback, with wrk.

    python3 bench/run.py                 # 2 interleaved rounds, 5 s per run, about 2.5 minutes
    python3 bench/run.py --quick         # smoke run: 1 round, 1 s per run
    python3 bench/run.py --rounds 4

Starts server.py and bench/floor.py on free 127.0.0.1 ports, drives them with
wrk, and prints one Markdown table plus cold start, memory and in-process
lines. Standard library only; livekit-api, when importable, is timed in-process
next to livekit_auth. Needs wrk (apt-get install wrk) and Linux /proc.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import hashlib
import http.client
import importlib.metadata
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
import tempfile
import time
import timeit
from pathlib import Path

# Write nothing outside bench/: no __pycache__ in livekit_auth/ from this process.
sys.dont_write_bytecode = True
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from livekit_auth import AccessToken, TokenVerifier, VideoGrants, WebhookReceiver  # noqa: E402

# Not the dev key: the server must run as deployed, with a 32+ character secret.
API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

# Settings that differ from the shipped defaults, and why. Everything else is as shipped.
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


def free_port() -> int:
    # Bind port 0 and let go: the kernel will not hand it out again right away.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv: list, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


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
            raise RuntimeError(f"{proc.args} exited with status {proc.returncode} before answering")
        try:
            status, _ = post(port, "/token", TOKEN_BODY, {"Content-Type": "application/json"})
            if status == 200:
                return time.perf_counter()
        except OSError:
            pass  # not listening yet
        time.sleep(0.002)
    raise RuntimeError(f"{proc.args} did not answer 200 within {READY_TIMEOUT:.0f} s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, after the ')' of comm)."""
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
    argv = [wrk, "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{duration}s", "--latency", "-s", script]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    try:
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50, p99 = (
            float(value) * _UNITS[unit]
            for value, unit in (re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups() for q in (50, 99))
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
        ("token", "livekit_auth"): lambda: AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_grants(VideoGrants(room_join=True, room=room))
        .to_jwt(),
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
    cases[("token", name)] = (
        lambda: sdk.AccessToken(API_KEY, API_SECRET)
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
            non2xx = str(sum(run["non2xx"] for run in runs)) + (f" ({errors} socket errors)" if errors else "")
            lines.append(
                f"| {target} | {load} | {spread([r['rate'] for r in runs], '{:,.0f}')} "
                f"| {spread([r['p50'] for r in runs], '{:.2f}')} | {spread([r['p99'] for r in runs], '{:.2f}')} "
                f"| {non2xx} | {spread([r['cpu_ms'] for r in runs], '{:.3f}')} |"
            )
    return lines


# --------------------------------------------------------------------------


def cold_starts(launchers: dict, python: str, env: dict, count: int) -> dict:
    """Milliseconds from process start to the first 200 on POST /token, `count`
    times each, in turn, after one warm-up each (which also fills the bytecode
    cache). "python3 -c pass" to exit is timed alongside, as the interpreter's share."""
    times: dict = {"interpreter": [], **{name: [] for name in launchers}}
    for attempt in range(count + 1):
        started = time.perf_counter()
        subprocess.run([python, "-c", "pass"], env=env, check=True, timeout=READY_TIMEOUT)
        if attempt:
            times["interpreter"].append((time.perf_counter() - started) * 1000)
        for name, launch in launchers.items():
            started = time.perf_counter()
            proc, port = launch()
            ready = wait_ready(proc, port)
            stop(proc)
            if attempt:
                times[name].append((ready - started) * 1000)
    return times


def check_answers(port: int, authorization: str) -> None:
    """Fail before timing anything if the server does not answer 200: a benchmark of 401s says nothing."""
    status, data = post(port, "/token", TOKEN_BODY, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"server answered POST /token with {status}: {data[:200]!r}")
    TokenVerifier(API_KEY, API_SECRET).verify(json.loads(data)["token"])
    headers = {"Content-Type": "application/webhook+json", "Authorization": authorization}
    status, data = post(port, "/webhook", WEBHOOK_BODY, headers)
    if status != 200:
        raise RuntimeError(f"server answered POST /webhook with {status}: {data[:200]!r}")


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
                print(f"round {round_number + 1}/{rounds}  {name:16} {load:15} {run['rate']:8,.0f} req/s", file=sys.stderr)
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited during the run")
                time.sleep(PAUSE)
    return results


def ratios(results: dict) -> str:
    # Runs side by side in the same round share the machine's mood: their
    # ratio is steadier than either number on a noisy machine.
    parts = []
    for load, _, _ in LOADS:
        pairs = zip(results["server /token", load], results["floor /token", load])
        parts.append(f"{load} {statistics.median(s['rate'] / f['rate'] for s, f in pairs):.2f}")
    return "; ".join(parts)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark server.py against the stdlib floor with wrk.")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per wrk run, 1 round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 2
    if not 1 <= rounds <= 20:
        parser.error("--rounds takes 1 to 20")
    duration = 1 if args.quick else 5
    starts = 3 if args.quick else 5
    repeat = 3 if args.quick else 7

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install wrk (Debian, Ubuntu), then run again.", file=sys.stderr)
        return 2
    if not os.path.exists("/proc/self/stat"):
        print("this benchmark reads /proc for CPU time and memory: run it on Linux.", file=sys.stderr)
        return 2
    # SIGTERM should stop the children too, through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)

    # The real interpreter, not a venv wrapper or a pyenv shim, which add
    # their own start-up time to the cold start.
    python = getattr(sys, "_base_executable", "") or sys.executable
    runs = len(LOADS) * 3 * rounds
    estimate = runs * (duration + PAUSE + 0.1) + 3 * (starts + 1) * 0.1 + 4 * (0.5 + 0.25 * repeat)
    print(f"about {estimate:.0f} s: {runs} wrk runs of {duration} s, cold starts, in-process timing", file=sys.stderr)
    load_before = Path("/proc/loadavg").read_text().split()[0]

    with tempfile.TemporaryDirectory(prefix="lk-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # A clean environment: nothing from ours leaks into the server's
        # settings. Bytecode goes to the temp dir, not to __pycache__ in the repo.
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
        server_env = dict(env, **SERVER_SETTINGS)
        server_log_path = tmp / "server.log"

        # A webhook signed as LiveKit signs it, valid for the whole run.
        ttl = datetime.timedelta(seconds=3600 + runs * (duration + 5))
        digest = base64.b64encode(hashlib.sha256(WEBHOOK_BODY).digest()).decode("ascii")
        authorization = AccessToken(API_KEY, API_SECRET).with_sha256(digest).with_ttl(ttl).to_jwt()
        token_script = lua_script(tmp / "token.lua", "application/json", TOKEN_BODY)
        webhook_script = lua_script(tmp / "webhook.lua", "application/webhook+json", WEBHOOK_BODY, authorization)

        procs: list = []
        with open(server_log_path, "ab") as server_log:

            def launch_server() -> tuple:
                port = free_port()
                procs.append(start([python, "server.py"], dict(server_env, SERVER_PORT=str(port)), server_log))
                return procs[-1], port

            def launch_floor() -> tuple:
                port = free_port()
                procs.append(start([python, "bench/floor.py", str(port)], env, subprocess.DEVNULL))
                return procs[-1], port

            try:
                cold = cold_starts({"server": launch_server, "floor": launch_floor}, python, env, starts)
                server, server_port = launch_server()
                floor, floor_port = launch_floor()
                wait_ready(server, server_port)
                wait_ready(floor, floor_port)
                check_answers(server_port, authorization)
                idle = {"server": memory_mib(server.pid, "VmRSS"), "floor": memory_mib(floor.pid, "VmRSS")}
                targets = [
                    ("server /token", server, f"http://127.0.0.1:{server_port}/token", token_script),
                    ("floor /token", floor, f"http://127.0.0.1:{floor_port}/token", token_script),
                    ("server /webhook", server, f"http://127.0.0.1:{server_port}/webhook", webhook_script),
                ]
                results = load_rounds(wrk, targets, rounds, duration)
                loaded = {
                    name: (memory_mib(proc.pid, "VmRSS"), memory_mib(proc.pid, "VmHWM"))
                    for name, proc in (("server", server), ("floor", floor))
                }
            except BaseException:
                # The server's log goes with the temp dir: show its end first.
                sys.stderr.write(server_log_path.read_text(errors="replace")[-2000:])
                raise
            finally:
                for proc in procs:
                    stop(proc)
        log_text = server_log_path.read_bytes()
    log_lines, errors = log_text.count(b"\n"), log_text.count(b" ERROR ")
    # Access lines end "<method> <path> <status> <duration>ms": every answer that was not a 200.
    statuses = re.findall(rb" [A-Z]+ \S+ ([0-9]{3}) [0-9.]+ms$", log_text, re.M)
    not_200 = ", ".join(f"{n} × {s.decode()}" for s, n in sorted(collections.Counter(statuses).items()) if s != b"200")

    print("in-process timing", file=sys.stderr)
    micro, micro_note = in_process(authorization, repeat)

    interpreter = "python3" if sys.executable == python else os.path.relpath(sys.executable, REPO)
    command = shlex.join([interpreter, os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]])
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10).stdout.split(" [")[0]
    out = [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"Python {platform.python_version()}, nproc {os.cpu_count()}, {wrk_version}; "
        f"load average {load_before} when the run began.",
        f"Command, from the repo root: `{command}`. {rounds} interleaved round(s), {duration} s per run, "
        "median (min–max) across rounds. wrk, the server and the floor share the same cores, on loopback.",
        "",
        *table(results, [target[0] for target in targets]),
        "",
        f"- Server /token req/s over the floor's, same round and load (median): {ratios(results)}.",
        f"- Cold start, process start to first 200 on POST /token, median (min–max) of {starts}: "
        f"server {spread(cold['server'], '{:.0f}')} ms, floor {spread(cold['floor'], '{:.0f}')} ms "
        f"(interpreter alone, `python3 -c pass`: {spread(cold['interpreter'], '{:.0f}')} ms).",
        f"- RSS: server {idle['server']:.1f} MiB idle, {loaded['server'][0]:.1f} MiB after load "
        f"(peak {loaded['server'][1]:.1f}); floor {idle['floor']:.1f} MiB idle, "
        f"{loaded['floor'][0]:.1f} MiB after load (peak {loaded['floor'][1]:.1f}).",
    ]
    for kind in ("token", "webhook"):
        timings = ", ".join(f"{library} {us:.1f} µs" for (k, library), us in micro.items() if k == kind)
        out.append(f"- In-process, per {kind} (median of {repeat} timeit repeats): {timings}.")
    if micro_note:
        out.append(f"- {micro_note}.")
    out.append(
        f"- Server: `python3 server.py` ({python}), key {API_KEY!r}, {len(API_SECRET)}-character secret, "
        "rate limit raised to 1,000,000 a minute (burst as many) so it never refuses, webhook dedupe off "
        "so each event takes the full path; "
        f"access log on as shipped, stderr to a temporary file ({log_lines:,} lines, "
        f"{errors} at ERROR level; answers other than 200: {not_200 or 'none'}). "
        "Floor: `bench/floor.py`, no logging. "
        f"Webhook: a signed participant_joined event of {len(WEBHOOK_BODY)} bytes; "
        "livekit-api's receive also parses it into a protobuf WebhookEvent."
    )
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
