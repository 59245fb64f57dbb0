"""CORS in a real browser: headless Chromium calls /token from a page of another origin.

A small page is served from http://127.0.0.1:<page port>; three token servers
listen on 127.0.0.1 at ports of their own, so each is another origin (RFC 6454:
scheme, host and port). The servers differ only in `allowed_origins`:

- `any`: the default `*`;
- `listed`: the page's origin alone, with a bearer secret required;
- `other`: only http://localhost:<page port>, the same port under another host
  name, which is not the page's origin although both are loopback.

Chromium loads the page once (`--dump-dom`, no driver); the page's script makes
each call with fetch() and writes what it could read into the DOM, which the
tests parse. A POST with `Content-Type: application/json` is not a "simple"
request, so the browser must send a preflight OPTIONS first; each server
records what it received, so the tests check the preflight from the server's
side as well as the outcome the page saw.

Chromium is Debian's `chromium` package. Without it the tests are skipped
locally and fail under CI=true, where `.ci/run` installs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import livekit_auth
import server

KEY = "testkey"
SECRET = "a-test-secret-of-at-least-32-chars!!"
BEARER = "a-client-secret-of-at-least-32-chars"
NOW = 1_750_000_000  # the app's clock: tokens are minted and verified at this instant
BROWSER_TIMEOUT = 30.0  # seconds for the whole Chromium run; it normally takes 1-3
OPENVIDU_REQUEST = {"roomName": "Test Room", "participantName": "Participant42"}
REQUIRED_MESSAGE = "roomName and participantName are required"

# As the machine notes give them: without the background-networking flags
# Chromium tries to reach Google's hosts at every start. A fresh profile per
# run, so no preflight cache or other state carries over between runs.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # --dump-dom alone prints the DOM at the load event, before any fetch has
    # answered. With a virtual-time budget it prints once the page is idle:
    # virtual time stands still while a network fetch is pending and the page
    # sets no timers, so the budget is never what ends the run.
    "--virtual-time-budget=10000",
)

# The page runs CASES one after another and writes {"done": true, "results":
# {case: outcome}} into <pre id="results">. An outcome is {"status", "body"}
# when the script could read the answer, or {"error": <exception name>}.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>token client</title></head>
<body><pre id="results">pending</pre>
<script>
const CASES = %s;
(async () => {
  const results = {};
  for (const c of CASES) {
    try {
      const response = await fetch(c.url, {method: c.method, mode: "cors", headers: c.headers, body: c.body});
      results[c.name] = {status: response.status, body: await response.json()};
    } catch (err) {
      results[c.name] = {error: err.name};
    }
  }
  document.getElementById("results").textContent = JSON.stringify({done: true, results});
})();
</script></body></html>
"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = "no chromium or chromium-browser on PATH (Debian: apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}; .ci/run installs it")
    pytest.skip(reason)


class Recorder:
    """The real app, noting each request it answers: method, path, CORS request headers, answer headers."""

    def __init__(self, app: server.App) -> None:
        self.app = app
        self.requests: list = []

    def __call__(self, environ, start_response):
        seen = {
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "origin": environ.get("HTTP_ORIGIN"),
            "request_method": environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"),
            "request_headers": environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"),
        }
        self.requests.append(seen)

        def record(status, headers, exc_info=None):
            seen["status"] = int(status[:3])
            seen["headers"] = {name.lower(): value for name, value in headers}
            return start_response(status, headers, exc_info)

        # The runner answers malformed HTTP itself (JSON refusals): those never reach here.
        return self.app(environ, record)


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Serves the client page at / and nothing else."""

    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        body = self.server.page.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


@dataclasses.dataclass
class BrowserRun:
    page_origin: str
    results: dict  # case name -> what the page could read
    requests: dict  # server name -> what that server received, in order
    seconds: float  # the Chromium run, start to exit


def run_chromium(chromium: str, url: str) -> tuple:
    """(stdout, stderr, seconds) of one --dump-dom run, killed with its children after BROWSER_TIMEOUT."""
    with tempfile.TemporaryDirectory(
        prefix="chromium-profile-", ignore_cleanup_errors=True
    ) as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
        started = time.monotonic()
        # A session of its own, so a hung run is killed with its renderer and helpers.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(
                f"Chromium did not finish in {BROWSER_TIMEOUT} s; DOM so far: {stdout[-2000:]!r}"
            )
        seconds = time.monotonic() - started
    assert process.returncode == 0, f"Chromium exited with {process.returncode}: {stderr[-2000:]}"
    return stdout, stderr, seconds


@pytest.fixture(scope="module")
def browser_run():
    chromium = find_chromium()
    with contextlib.ExitStack() as stack:
        pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
        pages.daemon_threads = True
        stack.callback(pages.server_close)
        threading.Thread(target=pages.serve_forever, name="page server", daemon=True).start()
        stack.callback(pages.shutdown)
        page_port = pages.server_address[1]
        page_origin = f"http://127.0.0.1:{page_port}"

        recorders = {}
        urls = {}
        configs = {
            "any": {},
            "listed": {
                "allowed_origins": frozenset({page_origin}),
                "auth_secrets": frozenset({BEARER}),
            },
            "other": {"allowed_origins": frozenset({f"http://localhost:{page_port}"})},
        }
        for name, overrides in configs.items():
            settings = server.Settings(
                api_key=KEY,
                api_secret=SECRET,
                host="127.0.0.1",
                port=0,
                idle_timeout=1.0,
                request_timeout=5.0,
                **overrides,
            )
            recorders[name] = Recorder(server.make_app(settings, clock=lambda: NOW))
            # The runner serves any WSGI callable; its access lines go to the logger, not captured here.
            srv = server.make_server(recorders[name], settings)
            thread = threading.Thread(
                target=srv.serve_forever, args=(0.05,), name=f"token server {name}", daemon=True
            )
            thread.start()
            stack.callback(thread.join, 5.0)
            stack.callback(srv.drain, 2.0)
            host, port = srv.server_address[:2]
            urls[name] = f"http://{host}:{port}"

        json_headers = {"Content-Type": "application/json"}
        bearer = {"Authorization": f"Bearer {BEARER}", **json_headers}
        token_body, empty_body = json.dumps(OPENVIDU_REQUEST), "{}"
        cases = [
            ("any_token", "any", "/token", "POST", json_headers, token_body),
            ("any_error", "any", "/token", "POST", json_headers, empty_body),
            ("listed_token", "listed", "/token", "POST", bearer, token_body),
            ("listed_error", "listed", "/token", "POST", bearer, empty_body),
            ("other_token", "other", "/token", "POST", json_headers, token_body),
            # A simple request: sent without a preflight, answered 200, and still unreadable.
            ("other_healthz", "other", "/healthz", "GET", {}, None),
        ]
        script_cases = [
            {
                "name": case,
                "url": urls[name] + path,
                "method": method,
                "headers": headers,
                "body": body,
            }
            for case, name, path, method, headers, body in cases
        ]
        # "<" escaped, so no string in the data can close the <script> element.
        pages.page = PAGE % json.dumps(script_cases).replace("<", "\\u003c")

        stdout, stderr, seconds = run_chromium(chromium, page_origin + "/")
        match = re.search(r'<pre id="results">(.*?)</pre>', stdout, re.S)
        assert match, (
            f"no results element in the DOM Chromium printed: {stdout[-2000:]!r}\n{stderr[-2000:]}"
        )
        found = html.unescape(match[1])
        assert found != "pending", (
            f"Chromium printed the DOM before the page's fetches finished\n{stderr[-2000:]}"
        )
        outcome = json.loads(found)
        assert outcome["done"] is True and set(outcome["results"]) == {case for case, *_ in cases}
        yield BrowserRun(
            page_origin, outcome["results"], {n: r.requests for n, r in recorders.items()}, seconds
        )


def verified_identity(token: str) -> tuple:
    claims = livekit_auth.TokenVerifier(KEY, SECRET, clock=lambda: NOW).verify(token)
    return claims.identity, claims.video.room, claims.video.room_join


def allow_origin(seen: dict):
    return seen["headers"].get("access-control-allow-origin")


@pytest.mark.parametrize("name", ["any", "listed"])
def test_token_through_preflight(browser_run, name):
    """The page reads the token; the server saw the preflight from the page's origin, then the POST."""
    outcome = browser_run.results[f"{name}_token"]
    assert outcome["status"] == 200, outcome
    assert list(outcome["body"]) == ["token"]
    assert verified_identity(outcome["body"]["token"]) == ("Participant42", "Test Room", True)

    requests = browser_run.requests[name]
    preflight, post = requests[0], requests[1]
    assert (preflight["method"], preflight["path"], preflight["status"]) == (
        "OPTIONS",
        "/token",
        204,
    )
    assert preflight["origin"] == browser_run.page_origin
    assert preflight["request_method"] == "POST"
    sent_headers = set(preflight["request_headers"].split(","))
    assert sent_headers == (
        {"authorization", "content-type"} if name == "listed" else {"content-type"}
    )
    assert (post["method"], post["path"], post["status"]) == ("POST", "/token", 200)
    assert post["origin"] == browser_run.page_origin
    if name == "any":
        assert allow_origin(preflight) == allow_origin(post) == "*"
        assert "vary" not in post["headers"]
    else:
        # The exact origin echoed, with Vary: Origin for caches.
        assert allow_origin(preflight) == allow_origin(post) == browser_run.page_origin
        assert post["headers"]["vary"] == "Origin"
    # A successful fetch never asks for or gets credentials.
    assert "access-control-allow-credentials" not in preflight["headers"]
    assert "access-control-allow-credentials" not in post["headers"]


@pytest.mark.parametrize("name", ["any", "listed"])
def test_error_message_readable(browser_run, name):
    """A 400 carries CORS headers too, so the page can read its errorMessage."""
    outcome = browser_run.results[f"{name}_error"]
    assert outcome == {"status": 400, "body": {"errorMessage": REQUIRED_MESSAGE}}
    posts = [seen for seen in browser_run.requests[name] if seen["method"] == "POST"]
    assert [seen["status"] for seen in posts] == [200, 400]


def test_other_origin_cannot_post(browser_run):
    """Preflight answered without Access-Control-Allow-Origin: fetch rejects and the POST is never sent."""
    assert browser_run.results["other_token"] == {"error": "TypeError"}
    requests = browser_run.requests["other"]
    # The browser did reach this server (so the rejection is CORS, not a refused port) ...
    preflight = requests[0]
    assert (preflight["method"], preflight["path"], preflight["status"]) == (
        "OPTIONS",
        "/token",
        204,
    )
    assert preflight["origin"] == browser_run.page_origin
    assert allow_origin(preflight) is None
    assert preflight["headers"]["vary"] == "Origin"
    # ... and stopped at the preflight.
    assert not [seen for seen in requests if seen["method"] == "POST"]


def test_other_origin_cannot_read(browser_run):
    """A simple GET needs no preflight: the server answers 200, and the page still cannot read it."""
    assert browser_run.results["other_healthz"] == {"error": "TypeError"}
    gets = [seen for seen in browser_run.requests["other"] if seen["method"] == "GET"]
    assert len(gets) == 1
    assert (gets[0]["path"], gets[0]["status"], gets[0]["origin"]) == (
        "/healthz",
        200,
        browser_run.page_origin,
    )
    assert allow_origin(gets[0]) is None
