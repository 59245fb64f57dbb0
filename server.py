"""A LiveKit token server on the Python standard library.

POST /token hands out LiveKit access tokens, in the OpenVidu tutorials' shape
and in LiveKit's standard token-endpoint shape; POST /webhook (and
/livekit/webhook) receives LiveKit webhook events. `application` is a plain
WSGI callable for any WSGI server; `python3 server.py` serves it with the small
runner below, which needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import configparser
import contextlib
import dataclasses
import datetime
import errno
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Callable, Iterable, Mapping, Optional
from urllib.parse import unquote_to_bytes

from livekit_auth import (
    AccessToken,
    LiveKitAuthError,
    MalformedWebhook,
    TokenVerifier,
    VideoGrants,
    WebhookReceiver,
)
from livekit_auth._strict import dumps_compact, loads_object

log = logging.getLogger("livekit_token_server")

# What `livekit-server --dev` and OpenVidu's local deployment use.
DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
DEV_MODE_WARNING = (
    "DEVELOPMENT MODE: LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set, so tokens are signed "
    "with LiveKit's public development key %s. Never expose this server."
)

MAX_TOKEN_BODY_BYTES = 16 * 1024
# LiveKit events carry a room and a participant or track: a few KiB.
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024

# The standard endpoint's fields that a deployment may let clients set.
# room_name and participant_identity are always accepted.
OPTIONAL_CLIENT_FIELDS = (
    "participant_name",
    "participant_metadata",
    "participant_attributes",
    "room_config",
)
STANDARD_FIELDS = frozenset(("room_name", "participant_identity") + OPTIONAL_CLIENT_FIELDS)
OPENVIDU_FIELDS = frozenset(("roomName", "participantName"))


# --------------------------------------------------------------------------
# Settings


class SettingsError(ValueError):
    """A setting is unusable; the message names it."""


# Parsers for setting values: (text, name of the setting) -> value, or SettingsError.


def _text(text: str, name: str) -> str:
    return text


def _words(text: str, name: str) -> frozenset:
    return frozenset(text.replace(",", " ").split())


def _number(text: str, name: str, pattern: str, kind: type):
    # int() and float() also take "+1", "1_0", " 1 ", "inf" and non-ASCII digits.
    if not re.fullmatch(pattern, text):
        raise SettingsError(f"{name} must be a number of at most 9 ASCII digits")
    return kind(text)


def _integer(text: str, name: str) -> int:
    return _number(text, name, r"[0-9]{1,9}", int)


def _seconds(text: str, name: str) -> float:
    return _number(text, name, r"[0-9]{1,9}(\.[0-9]{1,9})?", float)


def _flag(text: str, name: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise SettingsError(f"{name} must be true or false")
    return text.lower() == "true"


def _key_pairs(text: str, name: str) -> tuple:
    pairs = {}
    for word in _words(text, name):
        key, colon, secret = word.partition(":")
        if not colon or not key or not secret or key in pairs:
            raise SettingsError(f"{name} takes distinct key:secret pairs")
        pairs[key] = secret
    return tuple(sorted(pairs.items()))


def _networks(text: str, name: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(word, strict=False) for word in sorted(_words(text, name)))
    except ValueError:
        raise SettingsError(f"{name} takes IP addresses or networks such as 10.0.0.0/8") from None


# Every setting: (section, key, environment variable, Settings field, parser).
_SETTINGS_SOURCES = (
    ("server", "host", "SERVER_HOST", "host", _text),
    ("server", "port", "SERVER_PORT", "port", _integer),
    ("server", "max_connections", "SERVER_MAX_CONNECTIONS", "max_connections", _integer),
    ("server", "idle_timeout", "SERVER_IDLE_TIMEOUT", "idle_timeout", _seconds),
    ("server", "request_timeout", "SERVER_REQUEST_TIMEOUT", "request_timeout", _seconds),
    ("server", "trusted_proxies", "SERVER_TRUSTED_PROXIES", "trusted_proxies", _networks),
    ("server", "metrics", "SERVER_METRICS", "metrics", _flag),
    ("server", "log_format", "SERVER_LOG_FORMAT", "log_format", _text),
    ("livekit", "url", "LIVEKIT_URL", "livekit_url", _text),
    ("livekit", "api_key", "LIVEKIT_API_KEY", "api_key", _text),
    ("livekit", "api_secret", "LIVEKIT_API_SECRET", "api_secret", _text),
    ("tokens", "auth_secrets", "TOKEN_AUTH_SECRETS", "auth_secrets", _words),
    ("tokens", "ttl", "TOKEN_TTL", "token_ttl", _integer),
    ("tokens", "rooms", "TOKEN_ROOMS", "rooms", _words),
    ("tokens", "max_name_length", "TOKEN_MAX_NAME_LENGTH", "max_name_length", _integer),
    ("tokens", "safe_names", "TOKEN_SAFE_NAMES", "safe_names", _flag),
    ("tokens", "client_fields", "TOKEN_CLIENT_FIELDS", "client_fields", _words),
    ("tokens", "can_publish", "TOKEN_CAN_PUBLISH", "can_publish", _flag),
    ("tokens", "can_publish_sources", "TOKEN_CAN_PUBLISH_SOURCES", "can_publish_sources", _words),
    ("tokens", "can_subscribe", "TOKEN_CAN_SUBSCRIBE", "can_subscribe", _flag),
    ("tokens", "can_publish_data", "TOKEN_CAN_PUBLISH_DATA", "can_publish_data", _flag),
    ("tokens", "can_update_own_metadata", "TOKEN_CAN_UPDATE_OWN_METADATA", "can_update_own_metadata", _flag),
    ("tokens", "hidden", "TOKEN_HIDDEN", "hidden", _flag),
    ("tokens", "rate_per_minute", "TOKEN_RATE_PER_MINUTE", "rate_per_minute", _integer),
    ("tokens", "rate_burst", "TOKEN_RATE_BURST", "rate_burst", _integer),
    ("webhook", "api_keys", "WEBHOOK_API_KEYS", "webhook_keys", _key_pairs),
    ("webhook", "dedupe_seconds", "WEBHOOK_DEDUPE_SECONDS", "dedupe_seconds", _integer),
    ("webhook", "event_file", "WEBHOOK_EVENT_FILE", "event_file", _text),
    ("cors", "allowed_origins", "CORS_ALLOWED_ORIGINS", "allowed_origins", _words),
)
_SETTING_NAMES = {field: f"{section}.{key} ({env})" for section, key, env, field, _ in _SETTINGS_SOURCES}

# Inclusive bounds of the numeric settings.
_RANGES = {
    "port": (0, 65535),
    "max_connections": (1, 10000),
    "idle_timeout": (0.001, 3600),
    "request_timeout": (0.001, 3600),
    "token_ttl": (1, 30 * 24 * 3600),
    "max_name_length": (1, 1024),
    "rate_per_minute": (0, 1_000_000),
    "rate_burst": (1, 1_000_000),
    "dedupe_seconds": (0, 7 * 24 * 3600),
}

# LiveKit's TrackSource names, as token grants spell them.
TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the app and the runner need, checked when built. Defaults are the safe ones."""

    api_key: str = dataclasses.field(repr=False)
    api_secret: str = dataclasses.field(repr=False)
    livekit_url: str = "ws://localhost:7880"
    dev_mode: bool = False
    host: str = "0.0.0.0"
    port: int = 6080
    max_connections: int = 64
    idle_timeout: float = 5.0
    request_timeout: float = 10.0
    # Proxies whose X-Forwarded-For names the client, for rate limits (access lines show the peer).
    trusted_proxies: tuple = ()
    # GET /metrics, in Prometheus' text format.
    metrics: bool = True
    # "plain" lines, or "json": one JSON object a line, for log aggregators.
    log_format: str = "plain"
    # Bearer secrets a /token request must present; none: /token is open.
    auth_secrets: frozenset = dataclasses.field(default=frozenset(), repr=False)
    token_ttl: int = 900
    # Room names, or prefixes ending in "*"; "*" alone: any room.
    rooms: frozenset = frozenset(("*",))
    max_name_length: int = 256
    # Room names and identities of ASCII letters, digits and " -_.:@" only.
    safe_names: bool = False
    client_fields: frozenset = frozenset(("participant_name",))
    can_publish: bool = True
    can_publish_sources: frozenset = frozenset()  # empty: any source
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_own_metadata: bool = False
    hidden: bool = False
    # Token requests per client address; 0 turns the limit off.
    rate_per_minute: int = 300
    rate_burst: int = 60
    # Keys that may sign webhooks; none: the API key and secret above.
    webhook_keys: tuple = dataclasses.field(default=(), repr=False)  # (key, secret) pairs
    dedupe_seconds: int = 600
    # Append-only JSON-lines file each accepted event is written to before the 200.
    event_file: str = ""
    allowed_origins: frozenset = frozenset(("*",))

    def __post_init__(self) -> None:
        def fail(field: str, problem: str) -> None:
            raise SettingsError(f"{_SETTING_NAMES[field]} {problem}")

        for field in ("api_key", "api_secret", "host"):
            if not getattr(self, field):
                fail(field, "must not be empty")
        for field, (low, high) in _RANGES.items():
            if not low <= getattr(self, field) <= high:
                fail(field, f"must be from {low} to {high}")
        if not re.fullmatch(r"(wss?|https?)://[^\s/]+(/\S*)?", self.livekit_url):
            fail("livekit_url", "must be a ws://, wss://, http:// or https:// URL")
        if not self.client_fields <= set(OPTIONAL_CLIENT_FIELDS):
            fail("client_fields", "takes only: " + ", ".join(OPTIONAL_CLIENT_FIELDS))
        if not self.can_publish_sources <= set(TRACK_SOURCES):
            fail("can_publish_sources", "takes only: " + ", ".join(TRACK_SOURCES))
        if not self.rooms or any("*" in room[:-1] for room in self.rooms):
            fail("rooms", 'takes room names, or prefixes ending in "*"')
        exact_origins = all(re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", o) for o in self.allowed_origins)
        if not self.allowed_origins or not (self.allowed_origins == {"*"} or exact_origins):
            fail("allowed_origins", "takes * alone, or origins like https://app.example.com")
        if self.log_format not in ("plain", "json"):
            fail("log_format", "must be plain or json")
        if self.event_file and not os.path.isabs(self.event_file):
            fail("event_file", "must be an absolute path")
        if "" in self.auth_secrets:
            fail("auth_secrets", "must not hold an empty secret")
        if not all(key and secret for key, secret in self.webhook_keys):
            fail("webhook_keys", "takes distinct key:secret pairs")


def load_settings(environ: Mapping[str, str], config_path: Optional[str] = None) -> Settings:
    """Build Settings from built-in defaults, then config.ini, then the environment.

    With no API key and no secret anywhere, runs in development mode on
    LiveKit's dev credentials. Raises SettingsError naming the setting at fault.
    """
    values: dict = {}
    if config_path is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(config_path, encoding="utf-8") as file:
                parser.read_file(file)
        except (OSError, UnicodeDecodeError, configparser.Error) as err:
            raise SettingsError(f"cannot read config file {config_path}: {type(err).__name__}") from None
        known = {(section, key) for section, key, *_ in _SETTINGS_SOURCES}
        if parser.defaults():
            names = ", ".join(parser.defaults())
            raise SettingsError(f"{config_path}: [DEFAULT] is not read; put {names} in its own section")
        for section in parser.sections():
            for key in parser[section]:
                if (section, key) not in known:
                    raise SettingsError(f"{config_path}: unknown setting {section}.{key}")
            if section not in {known_section for known_section, _ in known}:
                raise SettingsError(f"{config_path}: unknown section [{section}]")
        for section, key, _, field, _ in _SETTINGS_SOURCES:
            if parser.has_option(section, key):
                values[field] = (f"{section}.{key}", parser[section][key])
    for section, key, env_name, field, _ in _SETTINGS_SOURCES:
        if env_name in environ:
            values[field] = (env_name, environ[env_name])

    parsed = {}
    for _, _, _, field, parse in _SETTINGS_SOURCES:
        if field in values:
            name, text = values[field]
            parsed[field] = parse(text.strip(), name)

    has_key, has_secret = "api_key" in parsed, "api_secret" in parsed
    if not has_key and not has_secret:
        parsed.update(api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, dev_mode=True)
    elif not has_key:
        raise SettingsError("LIVEKIT_API_SECRET is set but LIVEKIT_API_KEY is not (livekit.api_key)")
    elif not has_secret:
        raise SettingsError("LIVEKIT_API_KEY is set but LIVEKIT_API_SECRET is not (livekit.api_secret)")
    return Settings(**parsed)


# --------------------------------------------------------------------------
# The WSGI application

_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    408: "408 Request Timeout",
    411: "411 Length Required",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    429: "429 Too Many Requests",
    431: "431 Request Header Fields Too Large",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
    505: "505 HTTP Version Not Supported",
}

# Path -> methods. OPTIONS (CORS preflight) is answered for every route.
_ROUTES = {
    "/token": ("POST",),
    "/webhook": ("POST",),
    "/livekit/webhook": ("POST",),
    "/healthz": ("GET", "HEAD"),
    "/metrics": ("GET",),
}


class HTTPError(Exception):
    """A 4xx/5xx answer with a fixed, safe message."""

    def __init__(self, status: int, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _json_body(value: object) -> bytes:
    return dumps_compact(value).encode("ascii")


def _read_body(environ: dict, limit: int) -> bytes:
    """The request body, after checking Content-Length against `limit` (413 before reading)."""
    length = environ.get("CONTENT_LENGTH", "")
    if not length:
        raise HTTPError(411, "Content-Length is required")
    if not (length.isascii() and length.isdigit()) or len(length) > 12:
        raise HTTPError(400, "Content-Length must be a decimal number")
    size = int(length)
    if size > limit:
        raise HTTPError(413, f"Request body must be at most {limit} bytes")
    body = environ["wsgi.input"].read(size)
    if len(body) != size:
        raise HTTPError(400, "Request body is shorter than Content-Length")
    return body


def _require_json(environ: dict) -> None:
    media_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPError(415, "Content-Type must be application/json")


def _log_text(value: object) -> str:
    """A value from a request or an event, quoted so it cannot forge a log line."""
    return json.dumps(value if type(value) is str else "")


_EVENT_NAME = re.compile(r"[a-z_]{1,64}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# No "/" or "\\", no "." or ".." (LiveKit puts room names into recording paths), no look-alikes.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_:@-]([A-Za-z0-9 _.:@-]*[A-Za-z0-9_:@-])?")
_SAFE_NAME_ENDS = "(but no space or dot first or last)"


class RateLimiter:
    """A token bucket per client, in bounded memory.

    Each client may make `burst` requests at once, refilled at `per_minute`.
    The least recently seen clients are forgotten first when `max_clients`
    are tracked; a forgotten client starts again with a full bucket.
    """

    def __init__(self, per_minute: int, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self.buckets: collections.OrderedDict = collections.OrderedDict()  # client -> (tokens, time)
        self.lock = threading.Lock()

    def wait_time(self, client: str, now: float) -> float:
        """0 if `client` may go ahead now (and count it), else the seconds until it may."""
        with self.lock:
            tokens, then = self.buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + max(now - then, 0) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
            return wait


class RecentEvents:
    """Webhook event ids accepted within the last `window` seconds, at most `max_ids`."""

    def __init__(self, window: float, max_ids: int = 100_000) -> None:
        self.window = window
        self.max_ids = max_ids
        self.accepted: collections.OrderedDict = collections.OrderedDict()  # id -> time
        self.lock = threading.Lock()

    def seen(self, event_id: str, now: float) -> bool:
        with self.lock:
            accepted_at = self.accepted.get(event_id)
            return accepted_at is not None and accepted_at > now - self.window

    def add(self, event_id: str, now: float) -> None:
        with self.lock:
            self.accepted[event_id] = now
            self.accepted.move_to_end(event_id)
            while self.accepted and (
                len(self.accepted) > self.max_ids or next(iter(self.accepted.values())) <= now - self.window
            ):
                self.accepted.popitem(last=False)


class KeyedLocks:
    """One lock per key (a room), kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.locks: dict = {}  # key -> [lock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, key: str):
        with self.lock:
            entry = self.locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self.lock:
                entry[1] -= 1
                if not entry[1]:
                    del self.locks[key]


class Metrics:
    """Counters and a latency histogram, written in Prometheus' text format (version 0.0.4).

    Every label value comes from a small fixed set (statuses, routes, outcomes)
    or from a verified LiveKit event name, so the series stay few.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict = collections.defaultdict(int)  # (name, labels) -> count
        self.histograms: dict = {}  # route -> [count per bucket..., count, sum]

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] += 1

    def observe(self, route: str, seconds: float) -> None:
        with self.lock:
            # A count per bucket (the last one past the largest bound), then the count and the sum.
            histogram = self.histograms.setdefault(route, [0] * (len(self.BUCKETS) + 3))
            histogram[bisect.bisect_left(self.BUCKETS, seconds)] += 1
            histogram[-2] += 1
            histogram[-1] += seconds

    def text(self) -> str:
        prefix = "livekit_token_server_"
        with self.lock:
            counters = sorted(self.counters.items())
            histograms = sorted((route, list(values)) for route, values in self.histograms.items())
        lines = []
        # Counter families, each with its samples; the histogram's samples follow
        # its HELP and TYPE, which come last in _METRIC_HELP.
        for name, help_text in _METRIC_HELP.items():
            kind = "histogram" if name.endswith("_seconds") else "counter"
            lines += [f"# HELP {prefix}{name} {help_text}", f"# TYPE {prefix}{name} {kind}"]
            for (counted, labels), value in counters:
                if counted == name:
                    lines.append(f"{prefix}{name}{_labels(labels)} {value}")
        name = f"{prefix}request_duration_seconds"
        for route, values in histograms:
            cumulative = 0
            for bound, in_bucket in zip(self.BUCKETS + (math.inf,), values):
                cumulative += in_bucket
                le = "+Inf" if bound == math.inf else repr(bound)
                lines.append(f"{name}_bucket{_labels((('route', route), ('le', le)))} {cumulative}")
            lines.append(f"{name}_count{_labels((('route', route),))} {values[-2]}")
            lines.append(f"{name}_sum{_labels((('route', route),))} {values[-1]!r}")
        return "\n".join(lines) + "\n"


_METRIC_HELP = {
    "tokens_issued_total": "Tokens handed out by POST /token, by request shape.",
    "token_refusals_total": "POST /token requests refused, by status.",
    "webhooks_total": "POST /webhook requests, by event and outcome.",
    "request_duration_seconds": "Time to answer a request in the application, by route.",
}


def _labels(pairs: tuple) -> str:
    # Prometheus text format: label values escape backslash, double quote and newline.
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in pairs) + "}" if pairs else ""


def _event_room(event: dict) -> str:
    """The room an event belongs to, for per-room ordering ("" when none)."""
    for field in ("room", "egressInfo", "ingressInfo"):
        value = event.get(field)
        if type(value) is dict:
            name = value.get("name") if field == "room" else value.get("roomName")
            if type(name) is str:
                return name
    return ""


class Application:
    """The WSGI application. Build it with make_app()."""

    def __init__(
        self,
        settings: Settings,
        on_event: Optional[Callable[[dict], None]],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.clock = clock
        keys = dict(settings.webhook_keys) or {settings.api_key: settings.api_secret}
        self.receiver = WebhookReceiver(TokenVerifier(keys=keys, clock=clock))
        self.ttl = datetime.timedelta(seconds=settings.token_ttl)
        # Compared as digests, so compare_digest sees equal lengths and leaks none.
        self.auth_digests = [hashlib.sha256(secret.encode("utf-8")).digest() for secret in settings.auth_secrets]
        self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst) if settings.rate_per_minute else None
        self.recent_events = RecentEvents(settings.dedupe_seconds)
        self.metrics = Metrics() if settings.metrics else None
        self.count = self.metrics.count if self.metrics is not None else lambda name, **labels: None
        self.room_locks = KeyedLocks()
        self.event_file_lock = threading.Lock()
        # The grants every token carries; room and identity are added per request.
        self.grants = dict(
            room_join=True,
            can_publish=settings.can_publish,
            can_subscribe=settings.can_subscribe,
            can_publish_data=settings.can_publish_data,
            can_publish_sources=tuple(sorted(settings.can_publish_sources)) or None,
            # Left out unless granted, so default tokens match the tutorials' byte for byte.
            can_update_own_metadata=settings.can_update_own_metadata or None,
            hidden=settings.hidden or None,
        )
        # Built once, never changed per request.
        self.any_origin = "*" in settings.allowed_origins
        # On every response; JSON ones add a Content-Type first.
        self.common_headers = [
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        if self.any_origin:
            # No credentials are ever allowed, so "*" is safe and needs no Vary.
            self.common_headers.append(("Access-Control-Allow-Origin", "*"))
        self.common_headers.append(("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate"))
        self.preflight_headers = {
            path: [
                ("Allow", ", ".join(methods + ("OPTIONS",))),
                ("Access-Control-Allow-Methods", ", ".join(methods + ("OPTIONS",))),
                # "*" lets clients send their own headers; Authorization must be
                # named, since the wildcard never covers it (Fetch standard).
                ("Access-Control-Allow-Headers", "Authorization, Content-Type, *"),
                ("Access-Control-Max-Age", "600"),
            ]
            for path, methods in _ROUTES.items()
        }

    def _cors_headers(self, environ: dict) -> list:
        if self.any_origin:
            return []
        origin = environ.get("HTTP_ORIGIN")
        if origin in self.settings.allowed_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return [("Vary", "Origin")]

    def respond(self, environ: dict, start_response: Callable, status: int, value: object = None, extra=()) -> list:
        """A JSON answer (none for a 204), with the common and CORS headers."""
        if status == 204:
            # RFC 9110 §8.6: no Content-Length (and no content to type) in a 204.
            start_response(_STATUS_TEXT[status], self.common_headers + self._cors_headers(environ) + list(extra))
            return []
        return self.send(environ, start_response, status, "application/json", _json_body(value), extra)

    def send(self, environ: dict, start_response: Callable, status: int, content_type: str, body: bytes, extra=()):
        headers = [("Content-Type", content_type)] + self.common_headers + self._cors_headers(environ) + list(extra)
        start_response(_STATUS_TEXT[status], headers + [("Content-Length", str(len(body)))])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def error_response(self, environ: dict, start_response: Callable, status: int, message: str, extra=()) -> list:
        return self.respond(environ, start_response, status, {"errorMessage": message}, extra)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        try:
            return self.dispatch(environ, start_response, path)
        finally:
            if self.metrics is not None:
                self.metrics.observe(path if path in _ROUTES else "other", time.perf_counter() - started)

    def may_block(self, environ: dict) -> bool:
        """Whether answering may wait on more than this process's CPU: a webhook,
        when an event file (fsync) or a handler (anyone's code) is set.

        The built-in runner answers these on a thread, the rest on its event loop.
        """
        webhook = environ.get("PATH_INFO") in ("/webhook", "/livekit/webhook")
        return webhook and (bool(self.settings.event_file) or self.on_event is not None)

    def dispatch(self, environ: dict, start_response: Callable, path: str) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        methods = _ROUTES.get(path) if path != "/metrics" or self.metrics is not None else None
        try:
            if methods is None:
                raise HTTPError(404, "Not found")
            if method == "OPTIONS":
                return self.respond(environ, start_response, 204, None, self.preflight_headers[path])
            if method not in methods:
                raise HTTPError(405, "Method not allowed", (("Allow", ", ".join(methods + ("OPTIONS",))),))
            if path == "/token":
                status, value = self.token(environ)
            elif path == "/healthz":
                status, value = 200, {"status": "ok"}
            elif path == "/metrics":
                text = self.metrics.text().encode("utf-8")
                return self.send(environ, start_response, 200, "text/plain; version=0.0.4; charset=utf-8", text)
            else:
                status, value = self.webhook(environ)
            return self.respond(environ, start_response, status, value)
        except HTTPError as err:
            return self.error_response(environ, start_response, err.status, err.message, err.headers)
        except OSError:
            raise  # the connection failed while the body was read: the WSGI server's business
        except Exception as err:
            log.error("unexpected error on %s: %s", path if path in _ROUTES else "-", type(err).__name__)
            return self.error_response(environ, start_response, 500, "Internal server error")

    def client_address(self, environ: dict) -> str:
        """The client's address: the peer, or what trusted proxies say in X-Forwarded-For.

        Walks X-Forwarded-For from the right (the entries our proxies added) and
        stops at the first address that is not a trusted proxy: anything left
        of it was written by the client and proves nothing.
        """
        address = environ.get("REMOTE_ADDR", "")
        if not self.settings.trusted_proxies:
            return address
        hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        while hops and self._trusted(address):
            address = hops.pop()
        return address

    def _trusted(self, address: str) -> bool:
        ip = _ip_address(address)
        return ip is not None and any(ip in network for network in self.settings.trusted_proxies)

    # ---- POST /token

    def token(self, environ: dict) -> tuple:
        try:
            status, value = self.issue_token(environ)
        except HTTPError as err:
            self.count("token_refusals_total", status=str(err.status))
            raise
        self.count("tokens_issued_total", shape="standard" if status == 201 else "openvidu")
        return status, value

    def issue_token(self, environ: dict) -> tuple:
        """Tell the two request shapes apart and answer in the one asked.

        A body with any of LiveKit's snake_case fields (room_name, participant_identity, ...)
        is LiveKit's standard endpoint: 201 {server_url, participant_token}. Any other object,
        the empty one included, is the OpenVidu tutorials' shape: 200 {token}.
        """
        if self.limiter is not None:
            wait = self.limiter.wait_time(_rate_key(self.client_address(environ)), self.clock())
            if wait:
                retry_after = (("Retry-After", str(math.ceil(wait))),)
                raise HTTPError(429, "Too many token requests; try again later", retry_after)
        if self.auth_digests and not self.authorized(environ):
            raise HTTPError(401, "A valid bearer token is required", (("WWW-Authenticate", 'Bearer realm="token"'),))
        _require_json(environ)
        try:
            request = loads_object(_read_body(environ, MAX_TOKEN_BODY_BYTES))
        except ValueError:
            raise HTTPError(400, "Request body must be a JSON object") from None
        standard = STANDARD_FIELDS.intersection(request)
        if standard and OPENVIDU_FIELDS.intersection(request):
            raise HTTPError(400, "Request mixes roomName/participantName with LiveKit's snake_case fields")
        if standard:
            return 201, self.standard_token(request)
        return 200, self.openvidu_token(request)

    def authorized(self, environ: dict) -> bool:
        scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        # WSGI hands header bytes over as latin-1 text: this gives back the bytes sent.
        digest = hashlib.sha256(credentials.strip().encode("latin-1", "replace")).digest()
        # Every secret is compared, so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(digest, accepted) for accepted in self.auth_digests]
        return scheme.lower() == "bearer" and any(matches)

    def new_token(self, room: str, room_field: str, identity: str, identity_field: str) -> AccessToken:
        """A token for `identity` to join `room`, after the room and name policy."""
        self.check_name(room, room_field)
        self.check_name(identity, identity_field)
        rooms = self.settings.rooms
        if not any(room == allowed or allowed.endswith("*") and room.startswith(allowed[:-1]) for allowed in rooms):
            raise HTTPError(403, "This room is not open to tokens from this server")
        token = AccessToken(self.settings.api_key, self.settings.api_secret).with_identity(identity)
        return token.with_grants(VideoGrants(room=room, **self.grants)).with_ttl(self.ttl)

    def check_name(self, value: str, field: str, display: bool = False) -> None:
        """Length and control characters for every name; safe_names for room names and identities."""
        limit = self.settings.max_name_length
        if len(value) > limit:
            raise HTTPError(400, f"{field} must be at most {limit} characters")
        if _CONTROL_CHARACTER.search(value):
            raise HTTPError(400, f"{field} must not contain control characters")
        if self.settings.safe_names and not display and not _SAFE_NAME.fullmatch(value):
            raise HTTPError(400, f"{field} may hold only ASCII letters, digits, spaces and -_.:@ {_SAFE_NAME_ENDS}")

    def openvidu_token(self, request: dict) -> dict:
        room, identity = request.get("roomName"), request.get("participantName")
        if type(room) is not str or type(identity) is not str or not room or not identity:
            raise HTTPError(400, "roomName and participantName are required")
        token = self.new_token(room, "roomName", identity, "participantName")
        return {"token": token.to_jwt(now=self.clock())}

    def standard_token(self, request: dict) -> dict:
        unknown = set(request) - STANDARD_FIELDS
        if unknown:
            raise HTTPError(400, "Request has a field that is not part of LiveKit's token request")
        for field in OPTIONAL_CLIENT_FIELDS:
            if field in request and field not in self.settings.client_fields:
                raise HTTPError(403, f"{field} may not be set by clients on this server")
        # Optional fields left out are filled in, as LiveKit's own token server does.
        room = _optional_str(request, "room_name") or "room-" + secrets.token_hex(4)
        identity = _optional_str(request, "participant_identity") or "user-" + secrets.token_hex(4)
        token = self.new_token(room, "room_name", identity, "participant_identity")
        name = _optional_str(request, "participant_name")
        if name:
            self.check_name(name, "participant_name", display=True)
            token.with_name(name)
        metadata = _optional_str(request, "participant_metadata")
        if metadata:
            token.with_metadata(metadata)
        if "participant_attributes" in request:
            attributes = request["participant_attributes"]
            if type(attributes) is not dict or not all(type(v) is str for v in attributes.values()):
                raise HTTPError(400, "participant_attributes must be an object of strings")
            token.with_attributes(attributes)
        if "room_config" in request:
            # Passed through as received: LiveKit Server's protojson reader takes
            # the snake_case names clients send (agents[].agent_name).
            try:
                token.with_room_config(request["room_config"])
            except ValueError:  # nested deeper than json.dumps can write
                raise HTTPError(400, "room_config must be an object") from None
        return {"server_url": self.settings.livekit_url, "participant_token": token.to_jwt(now=self.clock())}

    # ---- POST /webhook

    def webhook(self, environ: dict) -> tuple:
        """Verify a LiveKit webhook and take it: 200 once stored and handled, 5xx if either failed.

        LiveKit retries on 5xx only, and a retry after a lost 200 repeats an
        event: events already accepted (by id) are answered 200 and not taken
        again. A room's events are taken one at a time, in the order they come.
        """
        event_name = ""  # a label only once LiveKit's signature vouches for it
        try:
            event = self.verified_event(environ)
            # LiveKit's names are short snake_case; anything else is one series, not one each.
            event_name = event["event"] if _EVENT_NAME.fullmatch(event["event"]) else "other"
            outcome = self.take_event(event)
        except HTTPError as err:
            self.count("webhooks_total", event=event_name, outcome=str(err.status))
            raise
        self.count("webhooks_total", event=event_name, outcome=outcome)
        return 200, {"status": "ok"}

    def verified_event(self, environ: dict) -> dict:
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        if not authorization:
            raise HTTPError(401, "Authorization header is required")
        try:
            # The token first: a caller without LiveKit's signature never gets a body read.
            claims = self.receiver.authorize(authorization)
            event = self.receiver.read_event(_read_body(environ, MAX_WEBHOOK_BODY_BYTES), claims)
        except MalformedWebhook as err:
            raise HTTPError(400, str(err)) from None
        except LiveKitAuthError as err:
            raise HTTPError(401, str(err)) from None
        return event

    def take_event(self, event: dict) -> str:
        """Store and handle a verified event once: "accepted", or "duplicate"."""
        event_id = event.get("id", "")
        with self.room_locks.hold(_event_room(event)):
            if event_id and self.recent_events.seen(event_id, self.clock()):
                log.info("webhook duplicate id=%s", _log_text(event_id), extra={"fields": {"id": event_id}})
                return "duplicate"
            fields = {
                "event": event["event"],
                "id": event_id,
                "room": event.get("room", {}).get("name", ""),
                "participant": event.get("participant", {}).get("identity", ""),
            }
            log.info(
                "webhook event=%s id=%s room=%s participant=%s",
                *(_log_text(value) for value in fields.values()),
                extra={"fields": fields},
            )
            if self.settings.event_file:
                self.store_event(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception as err:
                    log.error("webhook handler failed: %s", type(err).__name__)
                    raise HTTPError(500, "Webhook handler failed") from None
            if event_id:
                self.recent_events.add(event_id, self.clock())
        return "accepted"

    def store_event(self, event: dict) -> None:
        """Append the event as one JSON line, on disk (fsync) before the 200 is sent."""
        line = json.dumps(event, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            with self.event_file_lock:
                # Opened per event, so a rotated file is followed.
                with open(self.settings.event_file, "a+b") as file:
                    # A line torn by a crash mid-write must not swallow the next event.
                    end = file.seek(0, os.SEEK_END)
                    if end and os.pread(file.fileno(), 1, end - 1) != b"\n":
                        line = b"\n" + line
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
        except OSError as err:
            log.error("cannot write the event file: %s", err.strerror)
            raise HTTPError(503, "Could not store the event") from None


def _ip_address(text: str):
    """The IP address in `text` (also "[v6]", "v4:port", "[v6]:port", as proxies write them), or None.

    An IPv4 address mapped into IPv6 (::ffff:a.b.c.d), as a dual-stack socket
    reports it, is the IPv4 address.
    """
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


@functools.lru_cache(maxsize=4096)  # parsing addresses costs more than the rest of the limiter
def _rate_key(address: str) -> str:
    ip = _ip_address(address)
    if ip is None:
        return address[:64]
    if ip.version == 6:
        # One IPv6 host usually holds a whole /64: count it as one client.
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _optional_str(request: dict, field: str) -> str:
    value = request.get(field, "")
    if type(value) is not str:
        raise HTTPError(400, f"{field} must be a string")
    return value


def make_app(
    settings: Settings,
    *,
    on_event: Optional[Callable[[dict], None]] = None,
    clock: Callable[[], float] = time.time,
) -> Application:
    """The WSGI application for `settings`.

    `on_event(event)` is called with each verified, new webhook event before the
    200 is sent; if it raises, LiveKit gets a 500 and retries. `clock` returns
    Unix seconds, for tokens, webhook verification and rate limits.
    """
    return Application(settings, on_event, clock)


# --------------------------------------------------------------------------
# The runner: HTTP/1.1 on sockets, one event loop and threads, standard library only.
#
# http.server/wsgiref fall short here: wsgiref's simple_server closes every
# connection and copies os.environ (secrets too) into each WSGI environ;
# sockets have no timeout; "X_Auth" would merge with "X-Auth"; headers and body
# go out in separate sends, which with keep-alive stalls ~40 ms a request
# (Nagle's algorithm against delayed ACKs). So the runner parses requests itself.

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
# How much of an unread body to swallow before closing, so that the client
# reads our answer instead of a connection reset.
MAX_DISCARD_BYTES = 1024 * 1024
# How much of an unread body to read past to keep a connection open.
MAX_SKIP_BYTES = 64 * 1024
# How much the event loop reads from a connection at a time. A connection with
# a request waiting its turn is not read from, so this bounds what a client
# pipelining requests has waiting in its buffer.
RECEIVE_BYTES = 16 * 1024

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LOGGED_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
# RFC 9112 §3.2: the request target is visible ASCII (RFC 3986 characters).
_TARGET = re.compile(r"[!-~]+")
# RFC 9110 §5.5: field values hold no control characters but HTAB.
_BAD_FIELD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Close(ConnectionError):
    """End the connection without an answer (the client left or stalled)."""


def _set_socket_timeouts(sock: socket.socket, receive: float, send: float) -> None:
    """Kernel timeouts (SO_RCVTIMEO, SO_SNDTIMEO) on a blocking socket.

    Python's own socket timeouts cost a poll() and an ioctl() around each
    recv and send; measured here, a third of the throughput under load.
    """
    for option, seconds in ((socket.SO_RCVTIMEO, receive), (socket.SO_SNDTIMEO, send)):
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


class _Reader:
    """What a connection received and has not used yet, and blocking reads against a deadline.

    The event loop appends what arrives and takes heads from the buffer; only a
    thread reading a body waits on the socket, whose receive timeout is a short
    tick: each recv returns data or gives up within it, and the deadline, which
    slow clients cannot stretch, is checked between recvs.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # A bytearray: appending to bytes would copy the whole buffer on every recv.
        self.buffer = bytearray()

    def fill(self, deadline: float) -> None:
        while True:
            # Past the deadline, only what has already arrived is taken: a
            # thread that got to run late still serves a client that was not.
            late = time.monotonic() >= deadline
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT if late else 0)
            except BlockingIOError:  # nothing arrived within a tick
                if late:
                    raise TimeoutError from None
                continue
            if not data:
                raise _Close
            self.buffer += data
            return

    def skip_empty_lines(self) -> None:
        blank = len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
        del self.buffer[:blank]

    def take_head(self) -> Optional[bytes]:
        """The head without the blank line ending it, once all of it is in the buffer; else None."""
        end = self.buffer.find(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES or len(self.buffer) > MAX_HEAD_BYTES and end < 0:
            raise HTTPError(431, "Request head is too large")
        if end < 0:
            if b"\n\n" in self.buffer:
                raise HTTPError(400, "Request lines must end with CRLF")
            return None
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    def read(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self.fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class _Input:
    """wsgi.input: the request body, never more than Content-Length."""

    def __init__(self, reader: _Reader, length: int, deadline: float) -> None:
        self.reader = reader
        self.remaining = length
        self.deadline = deadline
        self.expects_continue = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        if self.expects_continue and size:
            # Sent only once the app reads: an app that refuses early (413) is not sent the body.
            self.reader.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.expects_continue = False
        data = self.reader.read(size, self.deadline)
        self.remaining -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        # Not used by the application; a plain, bounded implementation for WSGI's sake.
        line = b""
        while self.remaining and not line.endswith(b"\n") and (size < 0 or len(line) < size):
            line += self.read(1)
        return line

    def readlines(self, hint: int = -1) -> list:
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")


def _parse_head(head: bytes) -> tuple:
    """(method, target, version, headers as WSGI environ keys). Raises HTTPError."""
    # Latin-1 gives one character per byte: the checks below on the text are checks on the bytes.
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise HTTPError(400, "Malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
            raise HTTPError(505, "Only HTTP/1.1 and HTTP/1.0 are supported")
        raise HTTPError(400, "Malformed request line")
    if not _TARGET.fullmatch(target):
        raise HTTPError(400, "Malformed request line")
    if not (target.startswith("/") or (target == "*" and method == "OPTIONS")):
        raise HTTPError(400, "Request target must be a path")
    if len(lines) - 1 > MAX_HEADERS:
        raise HTTPError(431, "Too many header fields")
    headers: dict = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A name with white space (obs-fold, or "Name :") is rejected, RFC 9112 §5.
        if not colon or not _TOKEN.fullmatch(name):
            raise HTTPError(400, "Malformed header field")
        value = value.strip(" \t")
        if _BAD_FIELD_VALUE.search(value):
            raise HTTPError(400, "Header field value has a control character")
        if "_" in name:
            # WSGI spells "X-Auth" as HTTP_X_AUTH; "X_Auth" would pass for it.
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if key in headers:
            # Framing and routing headers must be unambiguous (RFC 9112 §6.3, §3.2).
            if key in ("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST", "CONTENT_TYPE", "HTTP_AUTHORIZATION"):
                raise HTTPError(400, "Repeated header field")
            value = headers[key] + ", " + value
        headers[key] = value
    if "HTTP_TRANSFER_ENCODING" in headers:
        # Chunked uploads are not needed by any client of this server; refusing
        # them also closes the Content-Length/Transfer-Encoding smuggling gap.
        raise HTTPError(411, "Transfer-Encoding is not supported; send Content-Length")
    length = headers.get("CONTENT_LENGTH")
    if length is not None and not (length.isascii() and length.isdigit() and len(length) <= 12):
        raise HTTPError(400, "Content-Length must be a decimal number")
    if version == "HTTP/1.1" and "HTTP_HOST" not in headers:
        raise HTTPError(400, "Host header is required")
    return method, target, version, headers


class _PerSecond:
    """format(second) for a Unix second, formatted once a second rather than once a request."""

    def __init__(self, format: Callable[[int], str]) -> None:
        self.format = format
        self.second = -1
        self.text = ""

    def __call__(self, second: int) -> str:
        if second != self.second:
            # The text before the second: a thread that sees the new second sees its text.
            self.text = self.format(second)
            self.second = second
        return self.text


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date_header(second: int) -> str:
    """RFC 9110 §5.6.7: the IMF-fixdate, in English whatever the locale (strftime's %a would not be)."""
    t = time.gmtime(second)
    day, month = _DAYS[t.tm_wday], _MONTHS[t.tm_mon - 1]
    return f"Date: {day}, {t.tm_mday:02d} {month} {t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT\r\n"


_DATE_HEADER = _PerSecond(_date_header)
_UTC_STAMP = _PerSecond(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
_LOCAL_STAMP = _PerSecond(lambda second: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))


def access_message(fields: dict) -> str:
    """An access line's text: client, method, path, status and duration."""
    path = fields["path"] if fields["path"] in _ROUTES else json.dumps(fields["path"])
    return f"{fields['client']} {fields['method']} {path} {fields['status']} {fields['duration_ms']:.1f}ms"


def _json_line(now: float, level: str, message: str, fields: dict) -> str:
    stamp = f"{_UTC_STAMP(int(now))}.{int(now * 1000) % 1000:03d}Z"
    return json.dumps({"time": stamp, "level": level, "message": message, **fields})


class _JSONFormatter(logging.Formatter):
    """One JSON object a line, for log aggregators; fields passed as extra={"fields": ...} included."""

    def format(self, record: logging.LogRecord) -> str:
        return _json_line(record.created, record.levelname, record.getMessage(), getattr(record, "fields", {}))


class StderrLines:
    """Lines for standard error, queued in memory and written in batches by one thread.

    A write per line is a system call per request, and the event loop must
    never wait: a stalled standard error (a full pipe) would stall every
    client. Queued, a line costs an append; it reaches standard error at most
    FLUSH_SECONDS later, warnings and errors at once. Past MAX_LINES, lines
    are counted and dropped.
    """

    FLUSH_SECONDS = 0.2
    MAX_LINES = 10_000

    def __init__(self) -> None:
        self.lines: collections.deque = collections.deque()  # append and popleft are thread-safe
        self.dropped = 0
        self.pending = threading.Event()
        self.urgent = threading.Event()
        self.flush_lock = threading.Lock()
        threading.Thread(target=self.write_forever, name="stderr-lines", daemon=True).start()

    def write(self, line: str, urgent: bool = False) -> None:
        if len(self.lines) >= self.MAX_LINES:
            self.dropped += 1  # an approximate count is enough here
            return
        self.lines.append(line + "\n")
        if not self.pending.is_set():  # set() takes a lock; most lines find it set already
            self.pending.set()
        if urgent:
            self.urgent.set()

    def write_forever(self) -> None:
        while True:
            self.pending.wait()
            self.urgent.wait(self.FLUSH_SECONDS)
            self.pending.clear()
            self.urgent.clear()
            self.flush()

    def flush(self) -> None:
        with self.flush_lock:  # one writer at a time keeps the lines in order
            lines = []
            while self.lines:
                lines.append(self.lines.popleft())
            if self.dropped:
                lines.append(f"{self.dropped} log lines dropped: standard error did not keep up\n")
                self.dropped = 0
            data = "".join(lines).encode("utf-8", "backslashreplace")
            try:
                while data:
                    data = data[os.write(2, data) :]
            except OSError:
                pass  # no standard error to write to: serving matters more than the log

    def flush_within(self, seconds: float) -> None:
        """Flush, but give up after `seconds` if standard error does not take the lines."""
        writer = threading.Thread(target=self.flush, daemon=True)
        writer.start()
        writer.join(seconds)


class _QueuedLogHandler(logging.Handler):
    """Log records into StderrLines; warnings and errors go out at once."""

    def __init__(self, lines: StderrLines) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)


def _access_line(fields: dict, json_lines: bool) -> str:
    now = time.time()
    if json_lines:
        return _json_line(now, "INFO", access_message(fields), fields)
    return f"{_LOCAL_STAMP(int(now))},{int(now * 1000) % 1000:03d} INFO {access_message(fields)}"


class _Connection:
    """A client's connection: its socket, what it sent and was not used yet, and its deadline."""

    __slots__ = ("sock", "reader", "client", "saturated", "accepted", "answered", "started", "deadline", "busy")

    def __init__(self, sock: socket.socket, client: str, saturated: bool, now: float, idle_timeout: float) -> None:
        self.sock = sock
        self.reader = _Reader(sock)
        self.client = client
        self.saturated = saturated  # its first request is answered 503
        self.accepted = now
        self.answered = False  # kept alive after an answer
        self.started: Optional[float] = None  # when the request under way began to arrive
        self.deadline = now + idle_timeout  # for the next request to begin, or the one under way to arrive
        self.busy = False  # served by a thread of its own, out of the event loop


class Server:
    """Serves an Application over HTTP/1.1 with keep-alive, deadlines and bounded connections.

    One thread runs an event loop: it accepts connections, waits for requests
    and answers a request itself when the whole of it has arrived and the app
    says answering cannot block (app.may_block(environ), a token: CPU alone,
    microseconds). Anything else (a body still on its way, a webhook with an
    event file or a handler, an app without may_block, an answer the client
    is slow to take) is served on a thread of its own, which hands the
    connection back to the loop when done. No thread switch per request: a
    thread per connection taking turns at the interpreter lock cost more than
    the requests themselves, measured here (bench/).

    Up to `max_connections` connections are served at once; as many again are
    accepted and their request answered 503; beyond that, new connections wait
    in the listen backlog.
    """

    def __init__(
        self,
        app: Application,
        settings: Settings,
        *,
        backlog: int = 1024,
        access_log: Optional[Callable[[dict], None]] = None,
        lines: Optional[StderrLines] = None,
    ) -> None:
        """`access_log(fields)` takes each request's client, method, path, status and duration_ms.

        By default, access lines go to `lines` (new StderrLines if None), in settings.log_format.
        """
        self.app = app
        self.lines = None
        if access_log is None:
            self.lines = lines = lines or StderrLines()
            json_lines = settings.log_format == "json"

            def access_log(fields: dict) -> None:
                lines.write(_access_line(fields, json_lines))

        self.access_log = access_log
        self.max_connections = settings.max_connections
        self.idle_timeout = settings.idle_timeout
        self.request_timeout = settings.request_timeout
        # How often deadlines are looked at.
        self.tick = max(min(settings.idle_timeout, settings.request_timeout) / 10, 0.01)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.listener = socket.create_server((settings.host, settings.port), family=family, backlog=backlog)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.server_port = str(self.address[1])
        self.selector = selectors.DefaultSelector()
        self.listening = False
        self.accept_after = 0.0  # out of descriptors: no accept() before this time.monotonic()
        # Changed by the loop alone; the lock is for readers in other threads.
        self.lock = threading.Lock()
        self.connections: dict = {}  # socket -> _Connection
        # Connections with a pipelined request in their buffer, in order (a dict as an ordered set).
        self.ready: dict = {}
        # Threads hand connections back here, then wake the loop.
        self.returned: collections.deque = collections.deque()
        self.wakeup, self.waker = socket.socketpair()
        self.wakeup.setblocking(False)
        self.selector.register(self.wakeup, selectors.EVENT_READ)
        self.draining = False
        self.drain_deadline = math.inf
        self.serving = False
        self.stopped = threading.Event()

    # ---- the event loop

    def serve_forever(self) -> None:
        """Serve until stop() or drain(), then finish the requests in flight (within the grace period)."""
        self.serving = True
        next_sweep = 0.0
        try:
            while True:
                if self.draining:
                    self.close_draining()
                    if not self.connections or time.monotonic() >= self.drain_deadline:
                        break
                self.listen_if_room()
                turn = list(self.ready)  # queued before this turn's reads: one request each
                for key, _ in self.selector.select(0 if turn else self.tick):
                    if key.fileobj is self.listener:
                        self.accept()
                    elif key.fileobj is self.wakeup:
                        self.take_back()
                    elif key.data.sock.fileno() >= 0 and key.data not in self.ready:
                        # Not closed earlier in this batch (to make room), nor
                        # holding a request that waits its turn: read nothing more yet.
                        self.guard(self.receive, key.data)
                for conn in turn:
                    if conn in self.ready:
                        del self.ready[conn]
                        self.guard(self.advance, conn)
                now = time.monotonic()
                if now >= next_sweep:
                    self.expire(now)
                    next_sweep = now + self.tick
        finally:
            self.close_listener()
            for conn in list(self.connections.values()):
                if not conn.busy:  # past the grace period: the rest are left to their threads
                    self.close(conn)
            self.selector.close()
            if self.lines is not None:
                self.lines.flush_within(1.0)
            self.stopped.set()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, close idle connections, give requests in flight `grace` seconds.

        Returns at once: safe in a signal handler and from any thread.
        """
        if not self.draining:
            self.drain_deadline = time.monotonic() + grace
            self.draining = True
        self.wake()

    def drain(self, grace: float = 10.0) -> None:
        """stop(), then wait until serve_forever() has finished. Not from the loop's own thread."""
        self.stop(grace)
        if self.serving:
            self.stopped.wait()
        else:
            self.close_listener()

    def wake(self) -> None:
        try:
            self.waker.send(b"\0", socket.MSG_DONTWAIT)
        except OSError:
            pass  # BlockingIOError: the loop has wake-ups waiting already

    def listen_if_room(self) -> None:
        wanted = (
            not self.draining
            and len(self.connections) < 2 * self.max_connections
            and time.monotonic() >= self.accept_after
        )
        if wanted != self.listening:
            if wanted:
                self.selector.register(self.listener, selectors.EVENT_READ)
            else:
                self.selector.unregister(self.listener)
            self.listening = wanted

    def close_draining(self) -> None:
        """Once, when the drain begins: no new connections, and idle ones closed."""
        if self.listener.fileno() < 0:
            return
        log.info("shutting down: finishing requests in flight")
        self.close_listener()
        for conn in list(self.connections.values()):
            if not conn.busy and conn.started is None and not self.has_request(conn):
                self.close(conn)

    @staticmethod
    def has_request(conn: _Connection) -> bool:
        """Whether a request has begun to arrive: in the buffer, or in the kernel's."""
        return bool(conn.reader.buffer or _peek(conn.sock))

    def close_listener(self) -> None:
        if self.listener.fileno() >= 0:
            if self.listening:
                self.selector.unregister(self.listener)
                self.listening = False
            self.listener.close()

    def accept(self) -> None:
        while len(self.connections) < 2 * self.max_connections:
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: let connections finish, do not spin.
                    self.accept_after = time.monotonic() + 0.1
                    return
                continue  # ECONNABORTED and the like: keep serving the others
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # For threads, which wait on the socket; the loop never does.
                _set_socket_timeouts(sock, self.tick, self.request_timeout)
            except OSError:
                sock.close()
                continue
            now = time.monotonic()
            saturated = self.make_room(now)
            conn = _Connection(sock, address[0], saturated, now, self.idle_timeout)
            with self.lock:
                self.connections[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def make_room(self, now: float) -> bool:
        """Whether a new connection must be answered 503.

        When the server is full, a connection waiting for a request is closed
        to make room: one its client has closed already, a keep-alive one, or
        one silent for a tick since it was accepted (a client sends its
        request as soon as it connects, so one that has not yet may be about
        to). If none is waiting, 503.
        """
        if len(self.connections) < self.max_connections:
            return False
        for conn in self.connections.values():
            # Nothing received, in its buffer or in the kernel's (a request
            # already on its way must not be cut off), and not bound for a
            # 503 itself (closing it would free no place to serve from).
            if conn.busy or conn.saturated or conn.started is not None or conn.reader.buffer:
                continue
            waiting = _peek(conn.sock)
            if waiting == b"" or waiting is None and (conn.answered or now - conn.accepted >= self.tick):
                self.close(conn)
                return False
        return True

    def close(self, conn: _Connection) -> None:
        """Close a connection the loop holds."""
        self.ready.pop(conn, None)
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.forget(conn)

    def forget(self, conn: _Connection) -> None:
        with self.lock:
            del self.connections[conn.sock]

    def receive(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECEIVE_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:  # reset
            data = b""
        if not data:
            self.close(conn)
            return
        conn.reader.buffer += data
        self.advance(conn)

    def advance(self, conn: _Connection) -> None:
        """Answer the next request that has arrived whole on `conn`, or give it to a thread."""
        reader = conn.reader
        if conn.started is None:
            # RFC 9112 §2.2: empty lines before a request (some clients send
            # CRLF after a body) are ignored; the connection is still idle.
            reader.skip_empty_lines()
            if not reader.buffer:
                return
            # The idle timeout ran until the first byte; the whole request now has request_timeout.
            conn.started = time.monotonic()
            conn.deadline = conn.started + self.request_timeout
        environ: dict = {}
        try:
            head = reader.take_head()
            if head is None:
                return  # the rest is on its way
            request = _parse_head(head)
            environ = self.environ(*request, conn.client)
        except HTTPError as err:
            request = err
        if not self.answers_inline(conn, request, environ):
            self.hand_off(conn, self.serve, request, environ, False)
            return
        try:
            self.finish(conn, *self.serve(conn, request, environ, True))
        except OSError:  # the client reset the connection
            self.close(conn)

    def finish(self, conn: _Connection, keep_alive: bool, unread: bool, rest: bytes) -> None:
        """After the loop answered: wait for the next request, or close."""
        if rest:  # the client is slow to take the answer: a thread waits for it
            self.hand_off(conn, self.send_rest, rest, keep_alive, unread)
        elif not keep_alive:
            if unread:
                self.hand_off(conn, self.linger)
            else:
                self.close(conn)
        else:
            conn.answered = True
            conn.started = None
            conn.deadline = time.monotonic() + self.idle_timeout
            if conn.reader.buffer:
                # Pipelined: its next request waits until the others had their turn.
                self.ready[conn] = None

    def answers_inline(self, conn: _Connection, request, environ: dict) -> bool:
        """Whether the loop answers this request itself: it cannot wait on the client or on the app."""
        if conn.saturated or isinstance(request, HTTPError):
            return True  # answered without the app or the body
        may_block = getattr(self.app, "may_block", None)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        return len(conn.reader.buffer) >= length and may_block is not None and not may_block(environ)

    def expire(self, now: float) -> None:
        for conn in list(self.connections.values()):
            if not conn.busy and now >= conn.deadline and conn.sock.fileno() >= 0 and conn not in self.ready:
                self.guard(self.time_out, conn)

    def time_out(self, conn: _Connection) -> None:
        if _peek(conn.sock) is not None:
            # Past the deadline, what has already arrived is still taken:
            # a client is not cut off for the loop having been busy.
            deadline = conn.deadline
            self.receive(conn)
            if conn.busy or conn.sock.fileno() < 0 or conn.deadline != deadline:
                return  # answered, handed off, closed, or a new request begun
        if conn.started is None:
            self.close(conn)  # idle too long
        else:
            self.finish(conn, *self.serve(conn, HTTPError(408, "Request timed out"), {}, True))

    def guard(self, step: Callable[[_Connection], None], conn: _Connection) -> None:
        """step(conn); should it raise, that connection is lost, not the server."""
        try:
            step(conn)
        except Exception as err:  # a bug, or an app or an access log that raised
            log.error("runner error: %s", type(err).__name__)
            self.ready.pop(conn, None)
            if not conn.busy:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(conn.sock)
                conn.sock.close()
                with self.lock:
                    self.connections.pop(conn.sock, None)

    # ---- threads

    def hand_off(self, conn: _Connection, task: Callable, *args) -> None:
        """Serve `conn` on a thread of its own: task(conn, *args) -> (keep the connection, body left unread)."""
        self.selector.unregister(conn.sock)
        conn.busy = True
        try:
            threading.Thread(target=self.run, args=(conn, task, args), daemon=True).start()
        except RuntimeError:  # no thread to be had (a task or memory limit)
            log.warning("cannot start a thread: connection closed")
            conn.sock.close()
            self.forget(conn)

    def run(self, conn: _Connection, task: Callable, args: tuple) -> None:
        keep_alive = unread = False
        try:
            # serve() also returns what is left to send: nothing, on a thread.
            keep_alive, unread = task(conn, *args)[:2]
        except OSError:  # the client left, stalled (TimeoutError) or reset
            pass
        except Exception as err:  # a bug, or an app or an access log that raised
            log.error("runner error: %s", type(err).__name__)
        finally:
            if not keep_alive:
                # Closed before the loop takes it back, so lingering threads count against the limit.
                if unread:
                    _discard_and_close(conn.sock)
                else:
                    conn.sock.close()
            self.returned.append((conn, keep_alive))
            self.wake()

    @staticmethod
    def send_rest(conn: _Connection, data: bytes, keep_alive: bool, unread: bool) -> tuple:
        conn.sock.sendall(data)
        return keep_alive, unread

    @staticmethod
    def linger(conn: _Connection) -> tuple:
        return False, True

    def take_back(self) -> None:
        """Connections that threads are done with: closed ones forgotten, kept ones served on."""
        try:
            while self.wakeup.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self.returned:
            conn, keep_alive = self.returned.popleft()
            conn.busy = False
            if not keep_alive:
                self.forget(conn)
                continue
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            if self.draining and not self.has_request(conn):
                self.close(conn)
                continue
            conn.answered = True
            conn.started = None
            conn.deadline = time.monotonic() + self.idle_timeout
            self.guard(self.advance, conn)  # a pipelined request may be in the buffer already

    # ---- one request

    def serve(self, conn: _Connection, request, environ: dict, inline: bool) -> tuple:
        """Answer one request whose head was read: (keep the connection, body left unread, answer not yet sent).

        `request` is the parsed head, or the HTTPError it caused. Inline (on the
        loop), the whole body is in the buffer already, and the answer is sent
        without waiting: what the socket does not take at once is returned.
        """
        reader = conn.reader
        method = target = "-"
        body = None
        try:
            if isinstance(request, HTTPError):
                raise request
            method, target, version, headers = request
            length = int(headers.get("CONTENT_LENGTH") or 0)
            body = _Input(reader, length, conn.deadline)
            # RFC 9110 §10.1.1: a client that asked may wait for 100 before sending the body.
            body.expects_continue = (
                headers.get("HTTP_EXPECT", "").lower() == "100-continue" and len(reader.buffer) < length
            )
            environ["wsgi.input"] = body
            keep_alive = self.keep_alive(version, headers)
            if conn.saturated:
                raise HTTPError(503, "Server is busy; try again", (("Retry-After", "1"),))
            status, response_headers, chunks = self.call(self.app, environ)
        except HTTPError as err:
            status, response_headers, chunks = self.call(
                self.app.error_response, environ, err.status, err.message, err.headers
            )
            keep_alive, body = False, None
        except TimeoutError:
            # The body stalled.
            status, response_headers, chunks = self.call(self.app.error_response, environ, 408, "Request timed out")
            keep_alive, body = False, None
        if keep_alive and body is not None and 0 < body.remaining <= MAX_SKIP_BYTES and not body.expects_continue:
            # Answered before its body was read (401, 413, 429 ...): skip the
            # body, so the connection can carry the client's next request.
            try:
                body.read()
            except OSError:
                keep_alive = False
        unread = body is None or body.remaining > 0
        if unread or self.draining:
            keep_alive = False
        head = [f"HTTP/1.1 {status}\r\n", _DATE_HEADER(int(time.time()))]
        head += [f"{name}: {value}\r\n" for name, value in response_headers]
        if not keep_alive:
            head.append("Connection: close\r\n")
        elif environ.get("SERVER_PROTOCOL") == "HTTP/1.0":
            head.append("Connection: keep-alive\r\n")
        head.append("\r\n")
        # One send per response: see the comment above the runner.
        data = b"".join(["".join(head).encode("latin-1"), *chunks])
        if inline:
            try:
                data = data[conn.sock.send(data, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                pass
        else:
            conn.sock.sendall(data)
            data = b""
        self.access_log(
            {
                "client": conn.client,
                # Any token is a method to HTTP: log only the common ones, so nothing else lands in the log.
                "method": method if method in _LOGGED_METHODS else "-",
                "path": _loggable_path(target),
                "status": int(status[:3]),
                "duration_ms": round((time.monotonic() - (conn.started or time.monotonic())) * 1000, 1),
            }
        )
        return keep_alive, unread, data

    def environ(self, method: str, target: str, version: str, headers: dict, client: str) -> dict:
        # Built from the request alone: never os.environ, where the secrets are.
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
            "QUERY_STRING": query,
            "SERVER_NAME": self.address[0],
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": client,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        environ.update(headers)
        return environ

    @staticmethod
    def keep_alive(version: str, headers: dict) -> bool:
        connection = headers.get("HTTP_CONNECTION", "").lower()
        if version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @staticmethod
    def call(app: Callable, environ: dict, *args) -> tuple:
        """Run a WSGI callable: (status, its headers, body chunks); a generic 500 if it raises."""
        started: list = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]

        try:
            result = app(environ, start_response, *args)
            try:
                chunks = list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status, headers = started
        except OSError:
            raise  # the client stalled or left while the body was read
        except Exception as err:
            log.error("application error: %s", type(err).__name__)
            body = _json_body({"errorMessage": "Internal server error"})
            return _STATUS_TEXT[500], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], [body]
        return status, headers, chunks


def _loggable_path(target: str) -> str:
    # Only the path: query strings may carry credentials. Known routes are
    # logged as they are; anything else is cut short, so no token fits in it.
    path = target.partition("?")[0]
    if path in _ROUTES:
        return path
    return path[:40] + ("..." if len(path) > 40 else "")


def _peek(sock: socket.socket) -> Optional[bytes]:
    """The next byte waiting on `sock`, left there; b"" at end of stream; None if nothing waits."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:  # reset: the next recv reports it
        return b""


def _discard_and_close(sock: socket.socket) -> None:
    """Close after an answer sent with the body unread (413, 400 ...).

    Closing with unread data makes the kernel send a reset, which can destroy
    the answer before the client reads it; so stop writing, swallow what the
    client still sends for a moment, then close.
    """
    deadline = time.monotonic() + 2.0
    discarded = 0
    try:
        sock.shutdown(socket.SHUT_WR)
        while discarded < MAX_DISCARD_BYTES and time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = sock.recv(65536)
            if not data:
                break
            discarded += len(data)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------
# Entry point


def _settings_from_process() -> Settings:
    parser = argparse.ArgumentParser(description="LiveKit token and webhook server")
    parser.add_argument("--config", metavar="PATH", help="config.ini file (environment variables override it)")
    args = parser.parse_args()
    return load_settings(os.environ, args.config)


def _configure_logging(log_format: str = "plain", lines: Optional[StderrLines] = None) -> None:
    """Log to standard error (through `lines` when given), unless the host configured logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _QueuedLogHandler(lines) if lines is not None else logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def check_startup(settings: Settings) -> None:
    """Log what is risky about `settings`; raise SettingsError for what cannot work."""
    if settings.dev_mode:
        log.warning(DEV_MODE_WARNING, DEV_API_KEY)
    secrets_by_setting = {
        "api_secret": [] if settings.dev_mode else [settings.api_secret],
        "auth_secrets": settings.auth_secrets,
        "webhook_keys": [secret for _, secret in settings.webhook_keys],
    }
    for field, values in secrets_by_setting.items():
        if any(len(secret) < 32 for secret in values):
            log.warning("%s holds a secret shorter than 32 characters: use long random ones", _SETTING_NAMES[field])
    if settings.webhook_keys:
        log.info("webhooks are accepted when signed by: %s", ", ".join(key for key, _ in settings.webhook_keys))
    if settings.event_file:
        try:
            open(settings.event_file, "ab").close()
        except OSError as err:
            raise SettingsError(f"{_SETTING_NAMES['event_file']} cannot be opened: {err.strerror}") from None


def main() -> int:
    lines = StderrLines()
    try:
        return _serve(lines)
    finally:
        lines.flush_within(1.0)  # the last lines, before the process (and the writer thread) ends


def _serve(lines: StderrLines) -> int:
    try:
        settings = _settings_from_process()
        _configure_logging(settings.log_format, lines)
        check_startup(settings)
    except SettingsError as err:
        _configure_logging()
        log.error("configuration error: %s", err)
        return 2
    try:
        socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        server = Server(make_app(settings), settings, lines=lines)
    except OSError as err:
        if isinstance(err, socket.gaierror) or err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            log.error("configuration error: %s is not an address of this machine", _SETTING_NAMES["host"])
            return 2
        # Port in use, or not allowed: may pass, so not a configuration error (a supervisor may retry).
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, err.strerror)
        return 1

    def stop(signum, frame):
        # A second signal during the drain ends the process at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("listening on http://%s:%s (LiveKit URL %s)", server.address[0], server.address[1], settings.livekit_url)
    server.serve_forever()
    return 0


def __getattr__(name: str) -> Application:
    """`server:application` for WSGI servers (`gunicorn server:application`).

    Built from the environment when a WSGI server asks for it, not on import,
    so importing this module reads no environment.
    """
    if name != "application":
        raise AttributeError(name)
    settings = load_settings(os.environ)
    _configure_logging(settings.log_format)
    check_startup(settings)
    # Kept, so every later `server.application` is this one app (one rate limiter, one dedupe memory).
    globals()["application"] = app = make_app(settings)
    return app


if __name__ == "__main__":
    sys.exit(main())
