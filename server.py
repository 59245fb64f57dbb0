"""A LiveKit token server on the Python standard library: POST /token and POST /webhook."""

# POST /token hands out LiveKit access tokens, in the OpenVidu tutorials' shape and
# in LiveKit's standard token-endpoint shape; POST /webhook (and /livekit/webhook)
# receives LiveKit webhook events. Reading order, top to bottom:
#   1. Settings: built-in defaults, then config.ini, then the environment, checked once.
#   2. The core app: make_app(settings) returns a plain WSGI callable (routing, JSON,
#      CORS, /token in both shapes, /webhook verification).
#   3. Token policy: who may ask for a token and what it may hold (TokenPolicy).
#   4. Webhook delivery: once per event id, one room at a time, on disk, then your
#      handler (WebhookDelivery).
#   5. The runner: serve(app, settings) serves any WSGI callable on the standard
#      library's socketserver + http.server, made strict. Those modules are imported
#      when serving starts, so `import server` (gunicorn, embedders) loads neither.
#   6. Logging and main(): `python3 server.py [--config config.ini]`.

from __future__ import annotations

import sys

# Not measured: it runs only on Python 3.9 and older, without coverage and under -S
# (tests/test_packaging.py runs it there, when pyenv has one).
if sys.version_info < (3, 10):  # pragma: no cover
    sys.stderr.write("server.py needs Python 3.10 or newer\n")
    raise SystemExit(2)

import argparse
import collections
import configparser
import contextlib
import dataclasses
import datetime
import difflib
import errno
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import queue
import re
import secrets
import signal
import socket
import struct
import threading
import time
import unicodedata
from http import HTTPStatus
from typing import Callable, Iterable, Mapping, Optional
from urllib.parse import unquote_to_bytes

from livekit_auth import (
    AccessToken,
    LiveKitAuthError,
    MalformedWebhook,
    TokenVerifier,
    VideoGrants,
    WebhookEvent,
    WebhookReceiver,
    dumps_compact,
    loads_object,
)

log = logging.getLogger("livekit_token_server")

# What `livekit-server --dev` and OpenVidu's local deployment use.
DEV_API_KEY, DEV_API_SECRET = "devkey", "secret"
MAX_TOKEN_BODY_BYTES = 16 * 1024
MAX_NAME_LENGTH = 256  # room names, identities and display names
# LiveKit events carry a room and a participant or track: a few KiB.
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024
# Standard-shape fields a deployment may let clients set (room_name and participant_identity:
# always).
OPTIONAL_CLIENT_FIELDS = (
    "participant_name",
    "participant_metadata",
    "participant_attributes",
    "room_config",
)
STANDARD_FIELDS = frozenset(("room_name", "participant_identity") + OPTIONAL_CLIENT_FIELDS)
OPENVIDU_FIELDS = frozenset(("roomName", "participantName"))
# Track sources, as token grants spell them.
TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")


# --------------------------------------------------------------------------
# 1. Settings


class SettingsError(ValueError):
    """A setting is unusable; the message names it (and, for config.ini, the file and line)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        # The Settings field at fault: load_settings names the config.ini line it came from.
        self.field = field


# Parsers: (text, the setting's name) -> value, or SettingsError naming the setting.
# int() and float() alone would also take "+1", "1_0", "inf" and non-ASCII digits.


def _text(text: str, name: str) -> str:
    return text


def _integer(text: str, name: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise SettingsError(f"{name} must be a whole number of at most 9 ASCII digits")
    return int(text)


def _seconds(text: str, name: str) -> float:
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", text):
        raise SettingsError(f"{name} must be a number of seconds, such as 5 or 0.5")
    return float(text)


def _flag(text: str, name: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise SettingsError(f"{name} must be true or false")
    return text.lower() == "true"


def _list_or_none(text: str, name: str) -> frozenset:
    # Only for lists where empty lets in less, never more.
    return frozenset(text.replace(",", " ").split())


def _list(text: str, name: str) -> frozenset:
    # Set but empty is a template that did not fill in: for secrets, keys, rooms,
    # origins and sources, "nothing" would quietly mean "anyone" or "anything".
    words = _list_or_none(text, name)
    if not words:
        raise SettingsError(f"{name} is set but lists nothing; remove it to get the default")
    return words


def _networks(text: str, name: str) -> tuple:
    words = sorted(_list_or_none(text, name))
    try:
        return tuple(ipaddress.ip_network(word, strict=False) for word in words)
    except ValueError:
        raise SettingsError(f"{name} takes IP addresses or networks such as 10.0.0.0/8") from None


def _setting(
    env: str, name: str, parse: Callable, default=dataclasses.MISSING, *, bounds=None, secret=False
):
    # Read from the environment variable `env`, or from config.ini's `name` (section.key);
    # `bounds`: the lowest and highest value allowed; `secret`: left out of repr().
    metadata = {"env": env, "name": name, "parse": parse, "bounds": bounds}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


# LiveKit Server refuses shorter secrets; `livekit-server generate-keys` makes longer ones.
MIN_SECRET_LENGTH = 32
MAKE_A_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one"


def _is_weak_secret(secret: str) -> bool:
    """Too short, or a placeholder from the docs: "<...>", "....", "xxxx...", "changeme"."""
    if len(secret) < MIN_SECRET_LENGTH:
        return True
    if secret.startswith("<") or secret.endswith(">"):
        return True
    if "changeme" in secret.lower().replace("-", "").replace("_", ""):
        return True
    return len(set(secret)) < 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the app and the runner need, checked when built. Defaults are the safe ones."""

    api_key: str = _setting("LIVEKIT_API_KEY", "livekit.api_key", _text, secret=True)
    api_secret: str = _setting("LIVEKIT_API_SECRET", "livekit.api_secret", _text, secret=True)
    livekit_url: str = _setting("LIVEKIT_URL", "livekit.url", _text, "ws://localhost:7880")
    # None: 127.0.0.1 in development mode, else 0.0.0.0 (every interface, as the tutorials listen).
    host: Optional[str] = _setting("SERVER_HOST", "server.host", _text, None)
    port: int = _setting("SERVER_PORT", "server.port", _integer, 6080, bounds=(0, 65535))
    max_connections: int = _setting(
        "SERVER_MAX_CONNECTIONS", "server.max_connections", _integer, 64, bounds=(1, 10000)
    )
    idle_timeout: float = _setting(
        "SERVER_IDLE_TIMEOUT", "server.idle_timeout", _seconds, 5.0, bounds=(0.001, 3600)
    )
    request_timeout: float = _setting(
        "SERVER_REQUEST_TIMEOUT", "server.request_timeout", _seconds, 10.0, bounds=(0.001, 3600)
    )
    # Proxies whose X-Forwarded-For names the client.
    trusted_proxies: tuple = _setting(
        "SERVER_TRUSTED_PROXIES", "server.trusted_proxies", _networks, ()
    )
    # One line per request; warnings and errors are logged either way.
    access_log: bool = _setting("SERVER_ACCESS_LOG", "server.access_log", _flag, True)
    # Development mode under a WSGI server, which alone knows where it listens.
    allow_dev_mode: bool = _setting("SERVER_ALLOW_DEV_MODE", "server.allow_dev_mode", _flag, False)
    # Bearer secrets a /token request must present; none: /token is open.
    auth_secrets: frozenset = _setting(
        "TOKEN_AUTH_SECRETS", "tokens.auth_secrets", _list, frozenset(), secret=True
    )
    token_ttl: int = _setting("TOKEN_TTL", "tokens.ttl", _integer, 900, bounds=(1, 30 * 24 * 3600))
    # Room names, or prefixes ending in "*"; "*" alone: any room.
    rooms: frozenset = _setting("TOKEN_ROOMS", "tokens.rooms", _list, frozenset(("*",)))
    client_fields: frozenset = _setting(
        "TOKEN_CLIENT_FIELDS",
        "tokens.client_fields",
        _list_or_none,
        frozenset(("participant_name",)),
    )
    can_publish: bool = _setting("TOKEN_CAN_PUBLISH", "tokens.can_publish", _flag, True)
    # None listed: any source.
    can_publish_sources: frozenset = _setting(
        "TOKEN_CAN_PUBLISH_SOURCES", "tokens.can_publish_sources", _list, frozenset()
    )
    can_subscribe: bool = _setting("TOKEN_CAN_SUBSCRIBE", "tokens.can_subscribe", _flag, True)
    can_publish_data: bool = _setting(
        "TOKEN_CAN_PUBLISH_DATA", "tokens.can_publish_data", _flag, True
    )
    # Token requests a minute per client address (0: no limit), and how many at once.
    rate_per_minute: int = _setting(
        "TOKEN_RATE_PER_MINUTE", "tokens.rate_per_minute", _integer, 300, bounds=(0, 1_000_000)
    )
    rate_burst: int = _setting(
        "TOKEN_RATE_BURST", "tokens.rate_burst", _integer, 60, bounds=(1, 1_000_000)
    )
    dedupe_seconds: int = _setting(
        "WEBHOOK_DEDUPE_SECONDS", "webhook.dedupe_seconds", _integer, 600, bounds=(0, 7 * 24 * 3600)
    )
    # JSON lines: each accepted event is written there (fsync) before the 200.
    event_file: str = _setting("WEBHOOK_EVENT_FILE", "webhook.event_file", _text, "")
    allowed_origins: frozenset = _setting(
        "CORS_ALLOWED_ORIGINS", "cors.allowed_origins", _list, frozenset(("*",))
    )
    # Signing with LiveKit's public development pair: derived from the key and secret.
    dev_mode: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        dev_mode = (self.api_key, self.api_secret) == (DEV_API_KEY, DEV_API_SECRET)
        object.__setattr__(self, "dev_mode", dev_mode)
        if self.host is None:
            object.__setattr__(self, "host", "127.0.0.1" if dev_mode else "0.0.0.0")
        for field in ("api_key", "api_secret", "host"):
            if not getattr(self, field):
                _refuse(field, "must not be empty")
        self.check_bounds()
        self.check_secrets()
        if not re.fullmatch(r"(wss?|https?)://[^\s/]+(/\S*)?", self.livekit_url):
            _refuse("livekit_url", "must be a ws://, wss://, http:// or https:// URL")
        if not self.client_fields <= set(OPTIONAL_CLIENT_FIELDS):
            _refuse("client_fields", "takes only: " + ", ".join(OPTIONAL_CLIENT_FIELDS))
        if not self.can_publish_sources <= set(TRACK_SOURCES):
            _refuse("can_publish_sources", "takes only: " + ", ".join(TRACK_SOURCES))
        if not self.rooms or any("*" in room[:-1] for room in self.rooms):
            _refuse("rooms", 'takes room names, or prefixes ending in "*"')
        if not _origins_valid(self.allowed_origins):
            _refuse("allowed_origins", "takes * alone, or origins like https://app.example.com")
        if self.event_file and not os.path.isabs(self.event_file):
            _refuse("event_file", "must be an absolute path")

    def check_bounds(self) -> None:
        for field in dataclasses.fields(self):
            bounds = field.metadata.get("bounds")
            if bounds and not bounds[0] <= getattr(self, field.name) <= bounds[1]:
                _refuse(field.name, f"must be from {bounds[0]} to {bounds[1]}")

    def check_secrets(self) -> None:
        weak = f"must be at least {MIN_SECRET_LENGTH} random characters ({MAKE_A_SECRET})"
        if not self.dev_mode and _is_weak_secret(self.api_secret):
            _refuse("api_secret", weak)
        for secret in self.auth_secrets:
            if _is_weak_secret(secret):
                _refuse("auth_secrets", f"each {weak}", ": ")


def _refuse(field: str, problem: str, joint: str = " "):
    raise SettingsError(f"{SETTING_NAMES[field]}{joint}{problem}", field)


def _origins_valid(origins: frozenset) -> bool:
    if origins == {"*"}:
        return True
    origin = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?"
    return bool(origins) and all(re.fullmatch(origin, entry) for entry in origins)


# field -> (config.ini section, key, environment variable), for every setting read from outside.
SETTING_SOURCES = {
    field.name: (*field.metadata["name"].split("."), field.metadata["env"])
    for field in dataclasses.fields(Settings)
    if "env" in field.metadata
}
SETTING_NAMES = {
    field: f"{section}.{key} ({env})" for field, (section, key, env) in SETTING_SOURCES.items()
}


# Settings of earlier versions: set now, they would be quietly ignored, and what they did undone.
REMOVED_SETTINGS = {
    "SERVER_METRICS",
    "SERVER_LOG_FORMAT",
    "TOKEN_SAFE_NAMES",
    "TOKEN_MAX_NAME_LENGTH",
    "TOKEN_HIDDEN",
    "TOKEN_CAN_UPDATE_OWN_METADATA",
    "WEBHOOK_API_KEYS",
}
# Set by platforms and CGI (RFC 3875), close to a setting's name but never a misspelling of one.
NOT_SETTINGS = {"SERVER_NAME", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "SERVER_ADDR", "SERVER_ADMIN"}


def _did_you_mean(name: str, known) -> str:
    """ "; did you mean X?" for the known name closest to a misspelled `name`, or ""."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""


def _check_names(environ: Mapping[str, str]) -> None:
    removed = sorted(REMOVED_SETTINGS.intersection(environ))
    if removed:
        raise SettingsError(
            f"{removed[0]} is no longer a setting (README.md, Configuration, lists them)"
        )
    known = [env for _, _, env in SETTING_SOURCES.values()]
    for name in sorted(set(environ) - set(known) - NOT_SETTINGS):
        # A misspelled setting would be skipped, and what it sets left open.
        hint = _did_you_mean(name, known)
        if hint:
            raise SettingsError(f"{name} is not a setting{hint}")


def load_settings(environ: Mapping[str, str], config_path: Optional[str] = None) -> Settings:
    """Settings from built-in defaults, then the config.ini at `config_path`, then `environ`.

    Raises SettingsError naming the setting; for a value from config.ini, also its file and line.
    """
    _check_names(environ)
    values = {}
    if config_path is not None:
        values = _read_config(config_path)
    for field, (_, _, env) in SETTING_SOURCES.items():
        if env in environ:
            values[field] = (env, environ[env], "")
    parsers = {field.name: field.metadata.get("parse") for field in dataclasses.fields(Settings)}
    parsed = {}
    for field, (name, text, where) in values.items():
        try:
            parsed[field] = parsers[field](text.strip(), name)
        except SettingsError as err:
            raise SettingsError(f"{where}{err}") from None
    for present, missing in (("api_key", "api_secret"), ("api_secret", "api_key")):
        if present in parsed and missing not in parsed:
            where = values[present][2]
            raise SettingsError(
                f"{where}{SETTING_NAMES[present]} is set but {SETTING_NAMES[missing]} is not"
            )
    if "api_key" not in parsed:
        # No credentials: development mode, on LiveKit's public development pair.
        parsed["api_key"] = DEV_API_KEY
        parsed["api_secret"] = DEV_API_SECRET
    try:
        return Settings(**parsed)
    except SettingsError as err:
        where = values.get(err.field, ("", "", ""))[2]
        raise SettingsError(f"{where}{err}", err.field) from None


def _line_of(text: str, section: str, key: Optional[str]) -> object:
    """The line of `key` in `section` of a config file's text (of the section's header for None)."""
    lines = [line.strip().lower() for line in text.splitlines()]
    header = f"[{section.lower()}]"
    start = lines.index(header) if header in lines else 0
    if key is None:
        return start + 1
    pattern = re.compile(rf"{re.escape(key)}\s*[=:]")
    found = (number + 1 for number in range(start, len(lines)) if pattern.match(lines[number]))
    return next(found, "?")


def _config_file_error(path: str, err: configparser.Error) -> SettingsError:
    # configparser's own messages quote the line, which may hold a secret: name the line instead.
    section = getattr(err, "section", "")
    if isinstance(err, configparser.DuplicateOptionError):
        problem = f"{section}.{err.option} is set twice"
    elif isinstance(err, configparser.DuplicateSectionError):
        problem = f"[{section}] appears twice"
    elif isinstance(err, configparser.MissingSectionHeaderError):
        problem = "a setting comes before any [section]"
    else:
        problem = "a line is neither [section] nor key = value"
    line = getattr(err, "lineno", None) or err.errors[0][0]
    return SettingsError(f"{path}, line {line}: {problem}")


def _read_config(path: str) -> dict:
    """{field: (name, text, "file, line N: ")} from a config.ini; SettingsError names file, line."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        parser.read_string(text)
    except OSError as err:
        raise SettingsError(
            f"cannot read config file {path}: {err.strerror} (check --config)"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8") from None
    except configparser.Error as err:
        raise _config_file_error(path, err) from None
    if parser.defaults():
        keys = ", ".join(parser.defaults())
        raise SettingsError(f"{path}: [DEFAULT] is not read; put {keys} in its own section")
    known = {f"{section}.{key}": field for field, (section, key, _) in SETTING_SOURCES.items()}
    known_sections = {section for section, _, _ in SETTING_SOURCES.values()}
    values = {}
    for section in parser.sections():
        # An unknown section with keys is reported by its first key, below.
        if section not in known_sections and not parser[section]:
            line = _line_of(text, section, None)
            hint = _did_you_mean(f"[{section}]", [f"[{name}]" for name in known_sections])
            raise SettingsError(f"{path}, line {line}: unknown section [{section}]{hint}")
        for key, value in parser[section].items():
            name = f"{section}.{key}"
            where = f"{path}, line {_line_of(text, section, key)}: "
            if name not in known:
                raise SettingsError(f"{where}unknown setting {name}{_did_you_mean(name, known)}")
            _check_config_value(value, where + name)
            values[known[name]] = (name, value, where)
    return values


def _check_config_value(value: str, name: str) -> None:
    # In this format a value is taken as written: quotes and a trailing comment would be part of it.
    if re.search(r"\s[#;]", value):
        raise SettingsError(
            f"{name}: a comment must be on a line of its own "
            "(# or ; after a value is read as part of it)"
        )
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        raise SettingsError(f"{name}: remove the quotes (values are read as written)")


# --------------------------------------------------------------------------
# 2. The core app: routing, JSON, CORS, /token in both shapes, /webhook verification

# Path -> (methods, the App method that answers). OPTIONS (CORS preflight): on every route.
ROUTES = {
    "/token": (("POST",), "token"),
    "/webhook": (("POST",), "webhook"),
    "/livekit/webhook": (("POST",), "webhook"),
    "/healthz": (("GET", "HEAD"), "healthz"),
}


class HTTPError(Exception):
    """An error answer: status, a fixed message that never echoes the request, extra headers."""

    def __init__(self, status: int, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# Content-Length: ASCII digits only; int() alone would also take "+1", "1_0" and non-ASCII
# digits. Twelve digits are far past any limit and keep int() cheap.
CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")


def read_body(environ: dict, limit: int) -> bytes:
    """The body, after checking Content-Length: ASCII digits; 413 above `limit`, before reading."""
    length = environ.get("CONTENT_LENGTH", "")
    if not length:
        raise HTTPError(411, "Content-Length is required")
    if not CONTENT_LENGTH.fullmatch(length):
        raise HTTPError(400, "Content-Length must be a decimal number")
    if int(length) > limit:
        raise HTTPError(413, f"Request body must be at most {limit} bytes")
    body = environ["wsgi.input"].read(int(length))
    if len(body) != int(length):
        raise HTTPError(400, "Request body is shorter than Content-Length")
    return body


def read_json(environ: dict, limit: int) -> dict:
    """The body as a JSON object (livekit_auth.loads_object); a 400 says which rule it broke."""
    if environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower() != "application/json":
        raise HTTPError(415, "Content-Type must be application/json")
    try:
        return loads_object(read_body(environ, limit))
    except ValueError as err:  # a fixed phrase: "is not valid JSON", "has a duplicate key", ...
        raise HTTPError(400, f"Request body {err}") from None


# On every answer of ours, errors of the runner included.
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


def json_answer(status: int, value, headers) -> tuple:
    """(status line, headers, body) of a JSON answer: Content-Type first, Content-Length last."""
    body = dumps_compact(value).encode("ascii")
    headers = [("Content-Type", "application/json"), *headers, ("Content-Length", str(len(body)))]
    return f"{status} {HTTPStatus(status).phrase}", headers, body


# The runner puts a dict here before it calls the app; what the app adds goes into that
# request's one access line. Under a WSGI server without it, the app writes the line itself.
ACCESS_LOG_FIELDS = "access_log.fields"


class App:
    """The WSGI application for `settings`: make_app(settings, on_event=..., clock=...)."""

    # Safe to call from many threads at once. on_event(event) gets each verified webhook event
    # not seen before (a livekit_auth.WebhookEvent), before the 200: if it raises, LiveKit is
    # answered 500 and retries. `clock` gives Unix seconds (tokens, verification, limits).

    def __init__(
        self,
        settings: Settings,
        *,
        on_event: Optional[Callable[[WebhookEvent], None]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = TokenPolicy(settings, clock)
        self.delivery = WebhookDelivery(settings, on_event, clock)
        self.receiver = WebhookReceiver(
            TokenVerifier(settings.api_key, settings.api_secret, clock=clock)
        )
        # Built once, never changed per request (starlette #511). No credentials are ever
        # allowed, so "*" is safe and needs no Vary (starlette #1113).
        self.headers = list(SECURITY_HEADERS)
        if settings.allowed_origins == {"*"}:
            self.headers.append(("Access-Control-Allow-Origin", "*"))
        self.headers.append(("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate"))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        writes_own_line = ACCESS_LOG_FIELDS not in environ
        environ.setdefault(ACCESS_LOG_FIELDS, {})
        if self.settings.trusted_proxies:
            # As a proxy-fix middleware does: the rate limit and access line name one client.
            environ["REMOTE_ADDR"] = client_address(environ, self.settings.trusted_proxies)
        status, value, headers = self.answer(environ, path, method)
        headers += self.headers
        headers += self.origin_headers(environ)
        if writes_own_line and self.settings.access_log:
            fields = access_fields(environ, path, status, started)
            log.info("request", extra={"fields": fields})
        if status == 204:
            # RFC 9110 §8.6: no content, so no Content-Length either.
            start_response(f"204 {HTTPStatus(204).phrase}", headers)
            return []
        status_line, headers, body = json_answer(status, value, headers)
        start_response(status_line, headers)
        if method == "HEAD":
            # Not every WSGI server leaves out a HEAD answer's body (wsgiref sends it).
            return [b""]
        return [body]

    def answer(self, environ: dict, path: str, method: str) -> tuple:
        """(status, a JSON value, headers): the route's answer, or the error's."""
        try:
            return self.route(environ, path, method)
        except HTTPError as err:
            environ[ACCESS_LOG_FIELDS]["reason"] = err.message
            return err.status, {"errorMessage": err.message}, list(err.headers)
        except OSError:
            # The client stalled or left while its body was read: the WSGI server's business.
            raise
        except Exception as err:
            log.error("unexpected error", extra={"fields": {"error": type(err).__name__}})
            return 500, {"errorMessage": "Internal server error"}, []

    def origin_headers(self, environ: dict) -> list:
        """CORS headers for a list of allowed origins (for "*", they are in self.headers)."""
        if self.settings.allowed_origins == {"*"}:
            return []
        # An exact match against the list, never a pattern (starlette #800).
        origin = environ.get("HTTP_ORIGIN")
        if origin in self.settings.allowed_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return [("Vary", "Origin")]

    def route(self, environ: dict, path: str, method: str) -> tuple:
        """(status, a JSON value, extra headers), or HTTPError."""
        if path not in ROUTES:
            raise HTTPError(404, "Not found")
        methods, answer = ROUTES[path]
        allow = ", ".join(methods + ("OPTIONS",))
        if method == "OPTIONS":
            # Authorization is named: the "*" wildcard never covers it (Fetch standard).
            return (
                204,
                None,
                [
                    ("Allow", allow),
                    ("Access-Control-Allow-Methods", allow),
                    ("Access-Control-Allow-Headers", "Authorization, Content-Type, *"),
                    ("Access-Control-Max-Age", "600"),
                ],
            )
        if method not in methods:
            raise HTTPError(405, "Method not allowed", (("Allow", allow),))
        return getattr(self, answer)(environ)

    def healthz(self, environ: dict) -> tuple:
        return 200, {"status": "ok"}, []

    def token(self, environ: dict) -> tuple:
        """POST /token, in the shape its fields tell (snake_case fields: LiveKit's standard one)."""
        # LiveKit's standard endpoint answers 201 {server_url, participant_token}; the OpenVidu
        # tutorials' shape, any other object ({} included), 200 {token}.
        self.policy.admit(environ)  # rate limit and bearer secret, before the body is read
        request = read_json(environ, MAX_TOKEN_BODY_BYTES)
        if not STANDARD_FIELDS.intersection(request):
            room = request.get("roomName")
            identity = request.get("participantName")
            if type(room) is not str or type(identity) is not str or not room or not identity:
                raise HTTPError(400, "roomName and participantName are required")
            request = {"roomName": room, "participantName": identity}
            token = self.policy.token(request, "roomName", "participantName")
            _note_token(environ, room, identity)
            return 200, {"token": token}, []
        if OPENVIDU_FIELDS.intersection(request):
            raise HTTPError(
                400, "Request mixes roomName/participantName with LiveKit's snake_case fields"
            )
        if not STANDARD_FIELDS.issuperset(request):
            raise HTTPError(400, "Request has a field that is not part of LiveKit's token request")
        for field, made_up in (("room_name", "room-"), ("participant_identity", "user-")):
            if type(request.get(field, "")) is not str:
                raise HTTPError(400, f"{field} must be a string")
            # Left out or empty, it is made up, as LiveKit's own token server does.
            request[field] = request.get(field) or made_up + secrets.token_hex(4)
        token = self.policy.token(request, "room_name", "participant_identity")
        _note_token(environ, request["room_name"], request["participant_identity"])
        return 201, {"server_url": self.settings.livekit_url, "participant_token": token}, []

    def webhook(self, environ: dict) -> tuple:
        """POST /webhook: check that LiveKit signed this exact body, then deliver the event."""
        if self.settings.dev_mode and not _from_this_machine(environ):
            # Anyone can sign with the public development key: only a LiveKit on this
            # machine is believed.
            raise HTTPError(403, "In development mode, webhooks are taken only from this machine")
        if not environ.get("HTTP_AUTHORIZATION"):
            raise HTTPError(401, "Authorization header is required")
        try:
            # The token first: a caller without LiveKit's signature never gets its body read.
            claims = self.receiver.authorize(environ["HTTP_AUTHORIZATION"])
            body = read_body(environ, MAX_WEBHOOK_BODY_BYTES)
            event = WebhookEvent(self.receiver.read_event(body, claims))
            # What delivery reads, read now: a field of the wrong type is a 400, not a 500 later.
            room = event.room.name or event.egress_info.room_name or event.ingress_info.room_name
            facts = {
                "event": _shorten(event.event),
                "id": _shorten(event.id),
                "room": _shorten(room),
            }
        except MalformedWebhook as err:
            raise HTTPError(400, str(err)) from None
        except LiveKitAuthError as err:  # fixed messages, never holding the token or the secret
            raise HTTPError(401, str(err)) from None
        environ[ACCESS_LOG_FIELDS].update(facts)
        if not self.delivery.take(event, room):
            environ[ACCESS_LOG_FIELDS]["duplicate"] = "true"
        return 200, {"status": "ok"}, []


# Headers that proxies add; nginx's plain proxy_pass adds none, so development mode must
# not be put behind a proxy on this machine (README, "Development mode").
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_VIA")


def _from_this_machine(environ: dict) -> bool:
    # A request through a proxy says too little of who sent it: a proxy on this machine would
    # make everyone look local, so a forwarded request is not from this machine.
    for header in _PROXY_HEADERS:
        if header in environ:
            return False
    return _is_loopback(environ.get("REMOTE_ADDR", ""))


def _note_token(environ: dict, room: str, identity: str) -> None:
    # Who got a token for which room: the one fact an auditor asks of a /token line.
    environ[ACCESS_LOG_FIELDS]["room"] = _shorten(room)
    environ[ACCESS_LOG_FIELDS]["identity"] = _shorten(identity)


def _shorten(text: str, limit: int = 64) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + "..."


# Methods named in access lines; any other word is a method to HTTP, and might be a token.
_LOGGED_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def access_fields(environ: dict, path: str, status: int, started: float) -> dict:
    """A request's access line: client, method, path (no query), status, time, the app's facts."""
    method = environ.get("REQUEST_METHOD", "-")
    if method not in _LOGGED_METHODS:
        method = "-"
    fields = {
        "client": environ.get("REMOTE_ADDR", "-"),
        "method": method,
        # Cut short, so that no token fits in it.
        "path": _shorten(path, 40),
        "status": status,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    # The app's facts come after, and never in place of, the line's own.
    for key, value in environ.get(ACCESS_LOG_FIELDS, {}).items():
        fields.setdefault(key, value)
    return fields


make_app = App  # make_app(settings, on_event=None, clock=time.time): the WSGI application


# --------------------------------------------------------------------------
# 3. Token policy: who may ask for a token, and what it may hold

# Never in room names and identities, which end up in URLs, recording paths, logs
# and other users' screens: controls (Cc), format characters (Cf: bidi controls,
# zero-width characters, BOM, tags), line and paragraph separators (Zl, Zp),
# private use (Co), surrogates (Cs); noncharacters are checked by code point.
_NOT_IN_IDENTIFIERS = frozenset(("Cc", "Cf", "Zl", "Zp", "Co", "Cs"))
# Display names are text people read: emoji with ZWJ, variation selectors, tags and
# LRM/RLM/ALM stay; controls, separators, surrogates, noncharacters and the bidi
# embeddings, overrides and isolates that reorder what others see do not.
_NOT_IN_DISPLAY_NAMES = frozenset(("Cc", "Zl", "Zp", "Cs"))
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def _is_noncharacter(char: str) -> bool:
    # U+FDD0..U+FDEF, and the last two code points of every plane.
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _has_refused_character(text: str, identifier: bool) -> bool:
    if text.isascii():
        return not text.isprintable()  # controls and DEL
    refused = _NOT_IN_IDENTIFIERS if identifier else _NOT_IN_DISPLAY_NAMES
    for char in text:
        if _is_noncharacter(char) or unicodedata.category(char) in refused:
            return True
        if not identifier and char in _BIDI_CONTROLS:
            return True
    return False


def _ip_address(text: str):
    """The IP address `text` holds, or None; ::ffff:a.b.c.d, as dual-stack sockets say, is IPv4."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    ip = _ip_address(host)
    return ip is not None and ip.is_loopback


# "203.0.113.5:4711" and "[2001:db8::1]:80": how some proxies (Azure Application Gateway
# among them) write a client into X-Forwarded-For.
_ADDRESS_AND_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::[0-9]{1,5})?|([0-9.]+):[0-9]{1,5}")


def _without_port(hop: str) -> str:
    match = _ADDRESS_AND_PORT.fullmatch(hop)
    if match is None:
        return hop
    return match[1] or match[2]


class TokenPolicy:
    """Who may ask for a token and what it may hold: admit() before the body is read, token()."""

    MAX_CLIENTS = 10_000  # rate-limit buckets kept; the least recently seen are forgotten first

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock
        # Compared as SHA-256 digests, so compare_digest sees equal lengths and leaks none.
        self.auth_digests = [
            hashlib.sha256(secret.encode("utf-8")).digest() for secret in settings.auth_secrets
        ]
        # Client -> (tokens, time); guarded by buckets_lock, taken by each /token request's thread.
        self.buckets = collections.OrderedDict()
        self.buckets_lock = threading.Lock()
        # The grants every token carries, room aside (left out unset, as in the tutorials' tokens).
        self.grants = dict(
            room_join=True,
            can_publish=settings.can_publish,
            can_subscribe=settings.can_subscribe,
            can_publish_data=settings.can_publish_data,
            can_publish_sources=tuple(sorted(settings.can_publish_sources)) or None,
        )

    def admit(self, environ: dict) -> None:
        """429 past the client's rate, then 401 without a valid bearer secret (if any are set)."""
        if self.settings.rate_per_minute:
            wait = self.rate_limit_wait(_rate_key(environ.get("REMOTE_ADDR", "")), self.clock())
            if wait:
                retry_after = (("Retry-After", str(math.ceil(wait))),)
                raise HTTPError(429, "Too many token requests; try again later", retry_after)
        scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        # WSGI hands header bytes over as latin-1 text: this gives back the bytes sent.
        digest = hashlib.sha256(credentials.strip().encode("latin-1", "replace")).digest()
        # Every secret is compared, so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(digest, accepted) for accepted in self.auth_digests]
        if self.auth_digests and not (scheme.lower() == "bearer" and any(matches)):
            raise HTTPError(
                401,
                "A valid bearer token is required",
                (("WWW-Authenticate", 'Bearer realm="token"'),),
            )

    def rate_limit_wait(self, client: str, now: float) -> float:
        """A token bucket per client: 0 if it may go ahead now (counted), else seconds to wait."""
        rate, burst = self.settings.rate_per_minute / 60.0, self.settings.rate_burst
        with self.buckets_lock:
            tokens, then = self.buckets.pop(client, (burst, now))
            tokens = min(burst, tokens + max(now - then, 0) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self.buckets) > self.MAX_CLIENTS:
                self.buckets.popitem(last=False)
            return wait

    def token(self, request: dict, room_field: str, identity_field: str) -> str:
        """A token for request[identity_field] in request[room_field]; HTTPError 403 or 400."""
        self.check_optional_fields(request)
        room = request[room_field]
        identity = request[identity_field]
        name = request.get("participant_name", "")
        self.check_name(room, room_field, identifier=True)
        self.check_name(identity, identity_field, identifier=True)
        if not _room_allowed(room, self.settings.rooms):
            raise HTTPError(403, "This room is not open to tokens from this server")
        self.check_name(name, "participant_name", identifier=False)
        token = AccessToken(self.settings.api_key, self.settings.api_secret)
        token.with_identity(identity)
        token.with_name(name)
        token.with_grants(VideoGrants(room=room, **self.grants))
        token.with_metadata(request.get("participant_metadata", ""))
        token.with_ttl(datetime.timedelta(seconds=self.settings.token_ttl))
        if "participant_attributes" in request:
            token.with_attributes(request["participant_attributes"])
        if "room_config" in request:
            # As received: LiveKit Server's protojson reader takes the snake_case names sent.
            try:
                token.with_room_config(request["room_config"])
            except ValueError:  # nested deeper than JSON can be written back
                raise HTTPError(400, "room_config must be an object") from None
        return token.to_jwt(now=self.clock())

    def check_optional_fields(self, request: dict) -> None:
        """403 for a field clients may not set here; 400 for one of the wrong type."""
        for field in OPTIONAL_CLIENT_FIELDS:
            if field in request and field not in self.settings.client_fields:
                raise HTTPError(403, f"{field} may not be set by clients on this server")
        for field in ("participant_name", "participant_metadata"):
            if type(request.get(field, "")) is not str:
                raise HTTPError(400, f"{field} must be a string")
        attributes = request.get("participant_attributes", {})
        if type(attributes) is not dict:
            raise HTTPError(400, "participant_attributes must be an object of strings")
        for value in attributes.values():
            if type(value) is not str:
                raise HTTPError(400, "participant_attributes must be an object of strings")
        if type(request.get("room_config", {})) is not dict:
            raise HTTPError(400, "room_config must be an object")

    def check_name(self, value: str, field: str, identifier: bool) -> None:
        """At most MAX_NAME_LENGTH characters, none of those refused for its kind of name."""
        if len(value) > MAX_NAME_LENGTH:
            raise HTTPError(400, f"{field} must be at most {MAX_NAME_LENGTH} characters")
        if _has_refused_character(value, identifier):
            kind = "invisible or private-use" if identifier else "separator or bidi-override"
            raise HTTPError(400, f"{field} must not contain control, {kind} characters")


def client_address(environ: dict, trusted_proxies: tuple) -> str:
    """The peer, or the client that trusted proxies wrote into X-Forwarded-For."""
    # From the right (the entries our proxies added), up to the first address that is
    # not a trusted proxy: anything left of it was written by the client and proves nothing.
    peer = environ.get("REMOTE_ADDR", "")
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    address = peer
    while hops and _is_trusted(address, trusted_proxies):
        address = _without_port(hops.pop())
    if _ip_address(address) is None:
        return peer  # never a proxy's garbage
    return address


def _is_trusted(address: str, trusted_proxies: tuple) -> bool:
    ip = _ip_address(address)
    return ip is not None and any(ip in network for network in trusted_proxies)


def _room_allowed(room: str, rules: frozenset) -> bool:
    """A room named in `rules`, or under one of its prefixes ("team-*" needs one character more)."""
    if room in rules:
        return True
    for rule in rules:
        if rule.endswith("*") and room.startswith(rule[:-1]) and len(room) >= len(rule):
            return True
    return False


def _rate_key(address: str) -> str:
    ip = _ip_address(address)
    if ip is None or ip.version == 4:
        return address[:64] if ip is None else str(ip)
    # One IPv6 host usually holds a whole /64.
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


# --------------------------------------------------------------------------
# 4. Webhook delivery: once per event id, one room at a time, on disk, then the handler


class WebhookDelivery:
    """A verified event: take() it once per id, one room at a time, stored, then handled."""

    # Shaped by how LiveKit delivers: it retries only on a 5xx (or no answer), takes any
    # 4xx as delivered, and sends a room's events one at a time. So: 200 only once the
    # event is stored and handled; a repeat of an id taken within dedupe_seconds is
    # answered 200 and not taken again; one event per room at a time.

    MAX_IDS = 100_000  # event ids remembered; the oldest go first
    ROOM_LOCKS = 64

    def __init__(
        self, settings: Settings, on_event: Optional[Callable], clock: Callable[[], float]
    ) -> None:
        self.event_file, self.on_event, self.clock = settings.event_file, on_event, clock
        self.window = settings.dedupe_seconds
        self.taken: collections.OrderedDict = collections.OrderedDict()  # event id -> when taken
        self.taken_lock = threading.Lock()  # guards taken
        # A room's events are taken under the lock its name hashes to: one at a time, in order.
        # Two rooms may share a lock and wait for each other; memory stays fixed.
        self.room_locks = [threading.Lock() for _ in range(self.ROOM_LOCKS)]
        self.file_lock = threading.Lock()  # one writer at a time keeps each line whole

    def take(self, event: WebhookEvent, room: str) -> bool:
        """Store and hand over a verified event once: False for a repeat. HTTPError 503 or 500."""
        # 503: the event file cannot be written; 500: the handler raised. LiveKit retries both.
        event_id = event.id  # "" when LiveKit gave none: then never deduplicated
        with self.room_locks[hash(room) % self.ROOM_LOCKS]:
            with self.taken_lock:
                if event_id and self.taken.get(event_id, -math.inf) > self.clock() - self.window:
                    return False
            # Stored before the handler runs: if it fails, LiveKit's retry is stored again
            # (the event file is at least once; its readers deduplicate by id).
            if self.event_file:
                self.store(event.to_dict())
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # your code: the message and traceback are yours to read
                    log.exception("webhook handler failed", extra={"fields": {"id": event_id}})
                    raise HTTPError(500, "Webhook handler failed") from None
            if event_id:
                with self.taken_lock:
                    self.remember(event_id)
        return True

    def remember(self, event_id: str) -> None:
        """Note an event id as taken; forget the oldest past the window or MAX_IDS (taken_lock)."""
        now = self.clock()
        self.taken[event_id] = now
        self.taken.move_to_end(event_id)
        expired = now - self.window
        while self.taken and next(iter(self.taken.values())) <= expired:
            self.taken.popitem(last=False)
        while len(self.taken) > self.MAX_IDS:
            self.taken.popitem(last=False)

    def store(self, event: dict) -> None:
        """Append the event as one JSON line, on disk (fsync) before the 200; 503 if that fails."""
        line = json.dumps(event, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            # Opened for each event, so that the file can be rotated.
            with self.file_lock, open(self.event_file, "a+b") as file:
                # A line torn by a crash mid-write must not swallow the next event.
                end = file.seek(0, os.SEEK_END)
                if end and os.pread(file.fileno(), 1, end - 1) != b"\n":
                    file.write(b"\n")
                file.write(line)
                file.flush()
                os.fsync(file.fileno())
        except OSError as err:
            log.error("cannot write the event file", extra={"fields": {"error": err.strerror}})
            raise HTTPError(503, "Could not store the event") from None


# --------------------------------------------------------------------------
# 5. The runner: any WSGI app on the standard library's socketserver + http.server
#
# ThreadingMixIn + HTTPServer give each connection a thread, so a slow client holds
# up no one else. What they let through or leave out is added here:
#   - the head, read by hand (read_head): at most MAX_HEAD_BYTES, lines ending in CRLF,
#     a strict request line, header lines of a token, a colon and a value without
#     controls (so no obs-fold, RFC 9112 §5.2); framing that cannot be read two ways
#     (RFC 9112 §6.3): no Transfer-Encoding, no repeated Content-Length or Host,
#     Content-Length of ASCII digits, a Host on HTTP/1.1; header names with "_" dropped;
#     the path routed as sent (parse_request would make "//token" "/token");
#   - one deadline for the whole request, and an idle timeout between requests;
#   - a bound on connections: past it a 503, and idle connections make room; out of
#     file descriptors, the acceptor makes room or waits instead of spinning;
#   - the WSGI environ built from the request alone (wsgiref's simple_server copies
#     os.environ, secrets included, into each one);
#   - keep-alive, and each answer in one send with TCP_NODELAY;
#   - JSON error answers with fixed messages (http.server's echo the request);
#   - one access line per request, written by the log writer thread (serve()).
#
# Threads: one acceptor (serve_forever), one thread per connection, a drain thread
# waiting for the stop, and the log writer. The server's connections_lock guards its
# `connections` dict, `draining`, and the fields marked (lock) in _Connection.

MAX_HEAD_BYTES = 16 * 1024
# Past a deadline, reads still take what has already arrived for this long, and no longer.
LATE_READS_SECONDS = 0.05
# Blank lines skipped before a request (RFC 9112 §2.2: some clients send a CRLF after a body).
MAX_BLANK_BYTES = 4
# A connection waiting this long for a request may be closed to make room: a client
# sends its request as soon as it has connected, and its next one soon after an answer.
MAKE_ROOM_AFTER = 0.1
# Out of file descriptors again within this many seconds of the last time: no new log line.
OUT_OF_DESCRIPTORS_QUIET = 60.0
# An unread body up to MAX_SKIP_BYTES is read past, so the connection carries the next
# request. After an answer with more left unread, what the client still sends is
# swallowed for a while before closing: a close with unread data sends a reset, which
# can destroy the answer before the client reads it.
MAX_SKIP_BYTES, LINGER_SECONDS, MAX_LINGER_BYTES = 64 * 1024, 2.0, 1024 * 1024
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"  # RFC 9110 §5.6.2
_REQUEST_LINE = re.compile(rb"(%s+) ([!-~]+) HTTP/([0-9]\.[0-9])\r\n" % _TCHAR)
_FIELD_NAME = re.compile(rb"%s+:" % _TCHAR)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value, RFC 9110 §5.5
# http.client's limit, kept: at most 99 header fields.
MAX_HEADER_FIELDS = 99


# The deadlines are the kernel's (SO_RCVTIMEO, SO_SNDTIMEO) on blocking sockets: Python's socket
# timeouts add a poll() and an ioctl() to each read and send, each a turn at the interpreter
# lock for every thread (bench/run.py, same code without it: 1.28x /token at 8 connections).
def _timeval(seconds: float) -> bytes:
    """A struct timeval, for SO_RCVTIMEO and SO_SNDTIMEO: at least 1 ms, since 0 means never."""
    microseconds = max(round(seconds * 1e6), 1000)
    return struct.pack("@ll", *divmod(microseconds, 1_000_000))


class _RawReader(io.RawIOBase):
    def readable(self) -> bool:  # what BufferedReader asks of a raw stream, besides readinto()
        return True


class _Connection(_RawReader):
    """A client connection: the raw stream under its handler's BufferedReader, and its state."""

    # Every recv ends by `deadline`, or LATE_READS_SECONDS after it for what has already
    # arrived, so a slow client cannot stretch a request.
    # The rule that lets the acceptor close a connection to make room (or the drain close it):
    # while `idle_since` is set, no byte of a request has been taken off the socket. The thread
    # sets it before it waits for a request's first byte, and clears it, under connections_lock,
    # only once that byte is there (wait_for_request); so a peek() under the lock that finds
    # nothing waiting means nothing was sent, and closing loses no request.

    def __init__(self, sock: socket.socket, server, over_limit: bool) -> None:
        # Blocking, even under socket.setdefaulttimeout(): peek() must never wait.
        sock.settimeout(None)
        self.sock, self.server = sock, server
        self.over_limit = over_limit  # (lock) accepted past max_connections: its request gets a 503
        # (lock) Idle from the start, before its thread runs.
        self.idle_since: Optional[float] = time.monotonic()
        # The connection's own thread only: whether it waits for a request, the deadline of that
        # wait or of the request (set_deadline), whether a request went unread (linger at
        # close), and whether a read from the client failed or came too late (not the app).
        self.waiting = False
        self.unread = False
        self.failed = False
        self.set_deadline(math.inf)

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        # Since when reads have been past the deadline; None while they are not.
        self.late_since: Optional[float] = None

    def peek(self) -> Optional[bytes]:
        """The next byte waiting on the socket, left there: b"" if the client closed; else None."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError as err:  # nothing waiting; or reset, as good as closed
            return None if isinstance(err, BlockingIOError) else b""

    def readinto(self, buffer) -> int:
        now = time.monotonic()
        if now > self.deadline:
            # Past it, short reads still take what has arrived, for LATE_READS_SECONDS: a thread
            # that ran late serves a client that was on time, but a client that trickles
            # bytes cannot stretch its request.
            self.late_since = self.late_since or now
            if now - self.late_since > LATE_READS_SECONDS:
                self.failed = True
                raise TimeoutError
        try:
            # Each recv waits only for what is left before the deadline (at least 1 ms).
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.deadline - now)
            )
            if self.waiting and not self.wait_for_request():
                return 0  # as if the client had closed: no new request starts
            return self.sock.recv_into(buffer)
        except OSError as err:
            # Too late, or the connection failed: the client's doing, not the app's.
            self.failed = True
            # BlockingIOError: SO_RCVTIMEO ran out.
            raise TimeoutError if isinstance(err, BlockingIOError) else err

    def wait_for_request(self) -> bool:
        """Wait, idle, until the request's first byte is on the socket; False if draining."""
        with self.server.connections_lock:
            if self.server.draining and not self.peek():
                return False
            self.idle_since = self.idle_since or time.monotonic()
        try:
            # MSG_PEEK leaves the byte on the socket until idle_since is cleared, so that the
            # acceptor's peek() sees it. Taken off first, make_room() could close a connection
            # whose request had come, and that request would go unanswered.
            self.sock.recv(1, socket.MSG_PEEK)
        finally:
            with self.server.connections_lock:
                self.idle_since = None
        return True


class _Body(_RawReader):
    """wsgi.input, in a BufferedReader: the body, never past Content-Length."""

    # A `100 Continue` the client asked for goes out at the first read, so an app that
    # answers without reading (413) sends none.

    def __init__(self, rfile, length: int, wfile=None) -> None:
        self.rfile, self.remaining, self.continue_to = rfile, length, wfile

    def readinto(self, buffer) -> int:
        if self.remaining and self.continue_to is not None:
            self.continue_to.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.continue_to = None
        data = self.rfile.read1(min(len(buffer), self.remaining)) if self.remaining else b""
        buffer[: len(data)], self.remaining = data, self.remaining - len(data)
        return len(data)


class _StrictHandler:
    """Mixed into http.server.BaseHTTPRequestHandler: one per connection, on its own thread."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # StreamRequestHandler.setup() sets TCP_NODELAY

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced below: reads go through _Connection, with deadlines
        # Gone already if it was closed to make room before this thread ran: then the stand-in
        # below reads the end of the stream at once, and nothing is registered to free.
        with self.server.connections_lock:
            conn = self.server.connections.get(self.request)
        self.conn = conn or _Connection(self.request, self.server, False)
        self.rfile = io.BufferedReader(self.conn)
        # Each send that cannot go on within it fails: a client that stops reading is dropped.
        # (Python's sendall timeout bounded the whole answer; ours are one send.)
        self.request.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.server.request_timeout)
        )

    def handle(self) -> None:
        """Requests, while the connection is kept alive and the next first byte comes in time."""
        self.close_connection = False
        while not self.close_connection:
            self.conn.set_deadline(time.monotonic() + self.server.idle_timeout)
            self.conn.waiting = True
            try:
                # A few blank bytes are skipped; more make a malformed request line (400).
                skipped = 0
                while skipped < MAX_BLANK_BYTES and self.rfile.peek(1)[:1] in (b"\r", b"\n"):
                    self.rfile.read(1)
                    skipped += 1
                if not self.rfile.peek(1):
                    return  # closed by the client, or to make room
            except OSError:  # silent too long, or reset
                return
            finally:
                self.conn.waiting = False
            self.handle_one_request()

    def handle_one_request(self) -> None:
        started = time.monotonic()
        self.conn.set_deadline(started + self.server.request_timeout)
        self.conn.unread = True
        self.command = "-"
        self.path = "-"
        self.request_version = "HTTP/1.0"
        # What the access line reads if the request is refused before the app sees it.
        environ = {"REMOTE_ADDR": self.client_address[0], ACCESS_LOG_FIELDS: {}}
        # What each failure gets: HTTPError, its answer; TimeoutError (an OSError: the head or the
        # body came too late), a 408; any other OSError (the client left or reset the connection,
        # mid-head included), no answer and no access line. The app's own errors are run_app's.
        try:
            try:
                self.read_head()
                if self.conn.over_limit:
                    raise HTTPError(503, "Server is busy; try again", (("Retry-After", "1"),))
                status = self.run_app(environ)
            except (TimeoutError, HTTPError) as err:
                refusal = err
                if isinstance(err, TimeoutError):
                    refusal = HTTPError(408, "Request timed out")
                self.close_connection = True
                status = refusal.status
                environ[ACCESS_LOG_FIELDS]["reason"] = refusal.message
                self.send(*_json_answer(refusal))
        except OSError:
            self.close_connection = True
            return
        if self.server.access_log:
            environ.setdefault("REQUEST_METHOD", self.command)
            # The path as sent, never the query string: it may carry credentials; nor a target
            # that is not a path (an absolute URL may hold a user and password).
            path = self.path.partition("?")[0]
            if not path.startswith("/") and path != "*":
                path = "-"
            log.info("request", extra={"fields": access_fields(environ, path, status, started)})

    def read_head(self) -> None:
        """Read the head and check it strictly: the request line, then each header field.

        Sets command, path (the target as sent), request_version, fields (lower-case name ->
        value, a repeated field's values joined with ", ") and close_connection. HTTPError.
        """
        lines = self.read_head_lines()
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        if not request_line:
            raise HTTPError(400, "Malformed request line")
        method, target, version = request_line.groups()
        self.command = method.decode("ascii")
        self.path = target.decode("ascii")
        if version not in (b"1.0", b"1.1"):
            raise HTTPError(505, "Only HTTP/1.1 and HTTP/1.0 are supported")
        self.request_version = "HTTP/" + version.decode("ascii")
        if not _is_request_target(method, target):
            raise HTTPError(400, "Request target must be a path")
        self.fields = {}
        repeated = set()
        for line in lines[1:-1]:
            # A token, a colon and a value: so no obs-fold (a line starting with white space).
            if not _FIELD_NAME.match(line):
                raise HTTPError(400, "Malformed header field")
            if _CONTROL.search(line, 0, len(line) - 2):
                raise HTTPError(400, "Header field value has a control character")
            name, _, value = line[:-2].partition(b":")
            name = name.decode("ascii").lower()
            value = value.strip(b" \t").decode("latin-1")
            if name in self.fields:
                repeated.add(name)
                value = f"{self.fields[name]}, {value}"
            self.fields[name] = value
        self.check_framing(len(lines) - 2, repeated)

    def read_head_lines(self) -> list:
        """The head's lines, each ending in CRLF, the empty one last, within MAX_HEAD_BYTES."""
        lines = []
        size = 0
        while not lines or lines[-1] != b"\r\n":
            lines.append(self.rfile.readline(MAX_HEAD_BYTES + 1 - size))
            size += len(lines[-1])
            if size > MAX_HEAD_BYTES:
                raise HTTPError(431, "Request head is too large")
            if not lines[-1].endswith(b"\n"):
                raise ConnectionAbortedError  # the client closed mid-head
            if not lines[-1].endswith(b"\r\n"):
                raise HTTPError(400, "Request lines must end with CRLF")
        return lines

    def check_framing(self, count: int, repeated: set) -> None:
        """Where the body ends, read one way only (RFC 9112 §6.3), and keep-alive."""
        if count > MAX_HEADER_FIELDS:
            raise HTTPError(431, "Too many header fields")
        if "content-length" in repeated or "host" in repeated:
            raise HTTPError(400, "Repeated header field")
        if "transfer-encoding" in self.fields:
            # No client of this server needs chunked uploads; refusing them also
            # closes the Content-Length/Transfer-Encoding smuggling gap.
            raise HTTPError(411, "Transfer-Encoding is not supported; send Content-Length")
        if not CONTENT_LENGTH.fullmatch(self.fields.get("content-length", "0")):
            raise HTTPError(400, "Content-Length must be a decimal number")
        if self.request_version == "HTTP/1.1" and "host" not in self.fields:
            raise HTTPError(400, "Host header is required")
        # RFC 9112 §9.3: HTTP/1.1 keeps the connection unless told "close"; HTTP/1.0 closes
        # it unless told "keep-alive".
        options = {word.strip().lower() for word in self.fields.get("connection", "").split(",")}
        if "close" in options:
            self.close_connection = True
        elif self.request_version == "HTTP/1.0" and "keep-alive" not in options:
            self.close_connection = True

    def make_environ(self, environ: dict, body_file) -> None:
        """The WSGI environ, from the request alone: never os.environ, where the secrets are."""
        path, _, query = self.path.partition("?")
        environ["REQUEST_METHOD"] = self.command
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query
        environ["SERVER_NAME"] = self.server.server_name
        environ["SERVER_PORT"] = str(self.server.server_port)
        environ["SERVER_PROTOCOL"] = self.request_version
        environ["wsgi.version"] = (1, 0)
        environ["wsgi.url_scheme"] = "http"
        environ["wsgi.input"] = body_file
        environ["wsgi.errors"] = sys.stderr
        environ["wsgi.multithread"] = True
        environ["wsgi.multiprocess"] = False
        environ["wsgi.run_once"] = False
        for name, value in self.fields.items():
            # WSGI spells X-Auth as HTTP_X_AUTH: a header X_Auth must not pass for it.
            if "_" in name:
                continue
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = value

    def run_app(self, environ: dict) -> int:
        """Call the WSGI app on this request and send its answer; the status sent."""
        expects_100 = (
            self.request_version == "HTTP/1.1"
            and self.fields.get("expect", "").lower() == "100-continue"
        )
        length = int(self.fields.get("content-length", "0"))
        body = _Body(self.rfile, length, self.wfile if expects_100 else None)
        body_file = io.BufferedReader(body)
        self.make_environ(environ, body_file)
        try:
            status, headers, chunks = self.call_app(environ)
        except Exception as err:
            if isinstance(err, OSError) and self.conn.failed:
                raise  # the client stalled (408) or left while the app read the body
            # The app failed. Its type only: an exception's message may hold what the log must not.
            log.error("application error", extra={"fields": {"error": type(err).__name__}})
            status, headers, chunks = _json_answer(HTTPError(500, "Internal server error"))
        # Answered unread (401, 429): a small body is read past before the answer, whose
        # Connection header says whether the connection carries the next request. Not when a
        # 100 Continue was asked for and not sent: the client may still hold the body back.
        if 0 < body.remaining <= MAX_SKIP_BYTES and body.continue_to is None:
            body_file.read()
        self.conn.unread = body.remaining > 0
        if self.conn.unread or self.server.draining:
            self.close_connection = True
        if self.command == "HEAD":
            # RFC 9110 §9.3.2. The app strips its own too, for hosts that do not (wsgiref);
            # this is for any other app.
            chunks = b""
        self.send(status, headers, chunks)
        return int(status[:3])

    def call_app(self, environ: dict) -> tuple:
        """(status, headers, body) of the app's answer, the body read whole."""
        response = []

        def start_response(status: str, headers: list, exc_info=None) -> Callable:
            response[:] = [status, headers]
            # WSGI's write(): what it is given goes out before the returned body.
            return response.append

        result = self.server.app(environ, start_response)
        try:
            chunks = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers, *written = response
        chunks = b"".join(written) + chunks
        names = {name.lower() for name, _ in headers}
        if status[:3] not in ("204", "304") and "content-length" not in names:
            # The body is whole: its length is known.
            headers = [*headers, ("Content-Length", str(len(chunks)))]
        return status, headers, chunks

    # (second, Date value): one value a second. Any connection's thread may replace it; two that
    # do so at once write the same value. bench/run.py, the same code without it: /token 1.18x
    # at 1 connection and 1.08x at 8, /webhook 1.07x and 1.10x.
    date_now = (0, "")

    def http_date(self) -> str:
        second = int(time.time())
        if self.date_now[0] != second:
            _StrictHandler.date_now = (second, self.date_time_string(second))
        return _StrictHandler.date_now[1]

    def send(self, status: str, headers: list, body: bytes) -> None:
        head = [f"HTTP/1.1 {status}", f"Date: {self.http_date()}"]
        head += [f"{name}: {value}" for name, value in headers]
        if self.close_connection:
            head.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        # One send: head and body in two stall keep-alive clients (Nagle against delayed ACKs).
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def _is_request_target(method: bytes, target: bytes) -> bool:
    # The origin form, "/" and on (RFC 9112 §3.2.1); "*" only for OPTIONS.
    if target.startswith(b"/"):
        return True
    return target == b"*" and method == b"OPTIONS"


def _json_answer(error: HTTPError) -> tuple:
    """(status line, headers, body) of the runner's own error answers."""
    return json_answer(
        error.status, {"errorMessage": error.message}, [*SECURITY_HEADERS, *error.headers]
    )


class _BoundedServer:
    """Mixed into ThreadingMixIn + HTTPServer: the connection bound, making room, and the drain."""

    # The acceptor registers each connection in `connections` before it starts the
    # connection's thread; the thread removes it as it ends, and signals `room_freed`.
    # Capacity: max_connections are served; up to as many again are accepted and answered 503
    # (over_limit); past that the acceptor waits, and new clients queue in the listen backlog.
    # An idle connection may be closed to make room for a new one (make_room).

    daemon_threads = True  # the drain waits for requests in flight; none outlives the process
    block_on_close = False
    request_queue_size = 1024  # the listen backlog (socketserver's default is 5)

    def __init__(self, app: Callable, settings: Settings) -> None:
        self.app, self.max_connections = app, settings.max_connections
        self.idle_timeout, self.request_timeout = settings.idle_timeout, settings.request_timeout
        self.access_log = settings.access_log
        self.connections: dict = {}  # socket -> _Connection
        self.connections_lock = threading.Lock()
        self.room_freed = threading.Condition(self.connections_lock)
        self.draining = False
        # The acceptor's own: when accept() last failed with EMFILE or ENFILE.
        self.out_of_descriptors_at = -math.inf
        super().__init__((settings.host, settings.port), self.RequestHandlerClass)

    def get_request(self) -> tuple:
        """The acceptor: accept(); out of descriptors, make room or wait before the next try."""
        # The listening socket stays readable while accept() fails, so serve_forever() would
        # try again at once and burn a core until a descriptor frees up.
        try:
            return super().get_request()
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):
                self.wait_for_a_descriptor()
            raise

    def wait_for_a_descriptor(self) -> None:
        now = time.monotonic()
        # One line for a spell of them, not one per try.
        if now - self.out_of_descriptors_at > OUT_OF_DESCRIPTORS_QUIET:
            log.warning("out of file descriptors: new connections wait until some close")
        self.out_of_descriptors_at = now
        with self.connections_lock:
            # Then wait for a connection to end (the one closed here, or any), or a moment.
            self.make_room()
            self.room_freed.wait(MAKE_ROOM_AFTER)

    def process_request(self, request: socket.socket, client_address) -> None:
        """The acceptor: register the connection, then start its thread (ThreadingMixIn)."""
        with self.connections_lock:
            over_limit = self.wait_for_a_place()
            if self.draining:
                request.close()
                return
            self.connections[request] = _Connection(request, self, over_limit)
        super().process_request(request, client_address)

    def wait_for_a_place(self) -> bool:
        """Whether a new connection is past the bound (503), after making room; connections_lock."""
        while not self.draining:
            if not self.is_full():
                return False
            if self.make_room():
                return False
            if len(self.connections) < 2 * self.max_connections:
                return True
            # Past twice the bound: wait, while new connections queue in the listen backlog,
            # for a connection to end or one to have waited long enough to make room.
            self.room_freed.wait(MAKE_ROOM_AFTER)
        return True

    def is_full(self) -> bool:
        served = [conn for conn in self.connections.values() if not conn.over_limit]
        return len(served) >= self.max_connections

    def make_room(self) -> bool:
        """Close the connection idle longest, if closed by its client or idle MAKE_ROOM_AFTER."""
        # Never one with a request on its way (idle_since is set only with nothing received).
        # Nor one bound for a 503: closing it would free no place to serve from.
        idle = [
            c for c in self.connections.values() if c.idle_since is not None and not c.over_limit
        ]
        for conn in sorted(idle, key=lambda conn: conn.idle_since):
            if self.may_close(conn):
                self.close_idle(conn)
                return True
        return False

    def may_close(self, conn: _Connection) -> bool:
        waiting = conn.peek()
        if waiting == b"":
            return True  # its client has closed it
        return waiting is None and time.monotonic() - conn.idle_since >= MAKE_ROOM_AFTER

    def close_idle(self, conn: _Connection) -> None:
        del self.connections[conn.sock]
        # Its thread's recv sees the end of the stream, and the thread ends.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: socket.socket) -> None:
        """The connection's thread, as it ends: linger if a request went unread, close, free it."""
        with self.connections_lock:
            conn = self.connections.get(request)
        if conn is not None and conn.unread:
            with contextlib.suppress(OSError):
                self.linger(request)
        super().shutdown_request(request)
        with self.connections_lock:
            self.connections.pop(request, None)
            self.room_freed.notify_all()

    def linger(self, request: socket.socket) -> None:
        """Swallow what the client still sends, for LINGER_SECONDS or MAX_LINGER_BYTES at most."""
        request.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        swallowed = 0
        while swallowed < MAX_LINGER_BYTES and time.monotonic() < deadline:
            timeout = _timeval(deadline - time.monotonic())
            request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            data = request.recv(65536)
            if not data:
                return  # the client has closed
            swallowed += len(data)

    def handle_error(self, request, client_address) -> None:
        # socketserver would print a traceback of whatever escaped the handler.
        log.error("connection error", extra={"fields": {"error": type(sys.exc_info()[1]).__name__}})

    def drain(self, grace: float, signal_name: str = "") -> None:
        """Stop accepting, close idle connections, give requests in flight up to `grace` seconds."""
        # From any thread but the acceptor's: socketserver's shutdown() waits for it.
        log.info(
            "stopping: finishing requests in flight", extra={"fields": {"signal": signal_name}}
        )
        with self.connections_lock:
            self.draining = True
            self.room_freed.notify_all()
        self.shutdown()
        self.server_close()  # the listening socket: new clients are refused, not left waiting
        with self.connections_lock:
            # Idle ones, but for those whose request has just arrived: that is answered.
            for conn in [
                c for c in self.connections.values() if c.idle_since is not None and not c.peek()
            ]:
                self.close_idle(conn)
            self.room_freed.wait_for(lambda: not self.connections, timeout=grace)
        log.info("stopped")


def make_server(app: Callable, settings: Settings):
    """A server for any WSGI callable on settings.host and port, after check_startup(settings).

    Then serve_forever(), and drain() from another thread. SettingsError for a host not of this
    machine; OSError if the port is taken.
    """
    import http.server
    import socketserver

    check_startup(settings)

    class Handler(_StrictHandler, http.server.BaseHTTPRequestHandler):
        pass

    class Server(_BoundedServer, socketserver.ThreadingMixIn, http.server.HTTPServer):
        address_family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        RequestHandlerClass = Handler

        def server_bind(self) -> None:
            # HTTPServer's looks the host's name up (getfqdn), which can stall start-up
            # where DNS is slow.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    try:
        return Server(app, settings)
    except OSError as err:
        if isinstance(err, socket.gaierror) or err.errno in (
            errno.EADDRNOTAVAIL,
            errno.EAFNOSUPPORT,
        ):
            raise SettingsError(
                f"{SETTING_NAMES['host']} is not an address of this machine"
            ) from None
        raise


def serve(
    app: Callable,
    settings: Settings,
    *,
    grace: float = 10.0,
    stop: Optional[threading.Event] = None,
) -> None:
    """Serve `app`, any WSGI callable, until `stop` is set, then drain and return.

    On the main thread, SIGTERM, SIGINT and SIGHUP stop it too; a second signal ends the process
    at once. From any other thread (signals reach only the main one), set `stop` to end it.
    """
    server = make_server(app, settings)
    stop = stop or threading.Event()
    signal_names = []

    def on_signal(signum: int, frame) -> None:
        # The main thread, inside serve_forever().
        for number in _STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        signal_names.append(signal.Signals(signum).name)
        stop.set()

    def drain() -> None:
        # The drain thread: serve_forever() returns once drain() has called shutdown().
        stop.wait()
        server.drain(grace, "".join(signal_names))

    if threading.current_thread() is threading.main_thread():
        for number in _STOP_SIGNALS:
            signal.signal(number, on_signal)
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    with _log_writer(grace):
        log.info(
            "listening", extra={"fields": {"host": server.server_name, "port": server.server_port}}
        )
        server.serve_forever()
        drainer.join()


_STOP_SIGNALS = [
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
]


# --------------------------------------------------------------------------
# 6. Logging and main()


class LogfmtFormatter(logging.Formatter):
    """time, level and msg, then the record's fields (extra={"fields": {...}}), as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        fields = {
            "time": stamp,
            "level": record.levelname,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        # A value that is not a plain word is JSON-quoted, so no value can forge a line or a field.
        return " ".join(
            f"{key}={value if _PLAIN.fullmatch(value) else json.dumps(value)}"
            for key, value in ((key, str(value)) for key, value in fields.items())
        )


_PLAIN = re.compile(r"[\w.:/@+-]+", re.ASCII)


def configure_logging(stream=None) -> None:
    """Log lines (logger "livekit_token_server", INFO and up) on `stream` or stderr, as logfmt."""
    # Once: calling it again changes nothing. Lines also reach the root logger's handlers:
    # where those print already, set the logger's level instead of calling this.
    if not log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(LogfmtFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)


# Log records waiting for the log writer; past this many, new ones are dropped and counted.
MAX_QUEUED_RECORDS = 10_000
# After it writes, the log writer lets lines gather this long: under load one wake-up and one
# write serve many lines, and a lone line is written at once. Each wake-up holds the
# interpreter lock while it formats; at 8 connections, bench/run.py served about 15% more
# requests with 0.2 s than with 0.05 s.
LOG_GATHER_SECONDS = 0.2
# While the queue never empties, what has gathered is written every this many records.
MAX_GATHERED_RECORDS = 1000


class _RecordQueue:
    """Mixed into logging.handlers.QueueHandler: the logger's handler while serve() runs."""

    # Request threads hand records over and never wait: past MAX_QUEUED_RECORDS a record is
    # dropped and counted, and never written to stderr (as QueueHandler.handleError would).
    # No handler lock (Handler.handle takes one): SimpleQueue.put never waits, and a lock on
    # every request's path makes the threads queue up for the interpreter lock (bench/run.py,
    # 8 connections: about 4% fewer requests with queue.Queue and the handler lock).

    def __init__(self, records: queue.SimpleQueue) -> None:
        super().__init__(records)
        self.dropped = 0  # records there was no room for; guarded by dropped_lock
        self.dropped_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # The record goes as it is: the log writer formats it, off the request's thread.
        if self.queue.qsize() < MAX_QUEUED_RECORDS:
            self.queue.put(record)
            return True
        with self.dropped_lock:
            self.dropped += 1
        return True


class _LogWriter:
    """Mixed into logging.handlers.QueueListener: the log writer thread, writing in batches."""

    # A plain StreamHandler (configure_logging's) writes into a buffer, and what has gathered
    # there goes to its stream in one write once the queue is empty, or after
    # MAX_GATHERED_RECORDS. Other handlers (files that rotate, say) get each record as they
    # would without the queue. QueueListener's thread (_monitor) calls dequeue() for each record
    # and hands it to the handlers; records arrive as logged (_RecordQueue skips prepare()).

    def __init__(self, records: queue.SimpleQueue, intake: _RecordQueue, handlers: list) -> None:
        super().__init__(records, *handlers, respect_handler_level=True)
        self.intake = intake
        self.gathered = 0  # records handled since the last write_out(); the log writer's own
        self.streams = {}  # handler -> its stream, while a buffer stands in for it
        for handler in handlers:
            if type(handler) is logging.StreamHandler:
                self.streams[handler] = handler.stream
                handler.stream = io.StringIO()

    def dequeue(self, block: bool) -> logging.LogRecord:
        if self.queue.empty():
            self.write_out()
            time.sleep(LOG_GATHER_SECONDS)
        elif self.gathered >= MAX_GATHERED_RECORDS:
            self.write_out()
        self.gathered += 1
        return super().dequeue(block)

    def write_out(self) -> None:
        """Write what has gathered, after a line that counts the records dropped since last time."""
        self.gathered = 0
        with self.intake.dropped_lock:
            dropped = self.intake.dropped
            self.intake.dropped = 0
        if dropped:
            record = log.makeRecord(
                log.name, logging.WARNING, __file__, 0, "log lines dropped", (), None
            )
            record.fields = {"dropped": dropped}
            self.handle(record)
        for handler, stream in self.streams.items():
            # Under the handler's lock: a thread past the drain may still be writing to it.
            handler.acquire()
            text = handler.stream.getvalue()
            handler.stream = io.StringIO()
            handler.release()
            if text:
                with contextlib.suppress(OSError, ValueError):
                    stream.write(text)
                    stream.flush()

    def finish(self, timeout: float) -> None:
        """Write out everything queued, waiting at most `timeout` for a stream that blocks."""
        self.queue.put(self._sentinel)
        self._thread.join(timeout)
        # Stuck writing to a stream nobody reads: what is still queued is lost.
        if not self._thread.is_alive():
            self.write_out()
        for handler, stream in self.streams.items():
            handler.stream = stream


@contextlib.contextmanager
def _log_writer(grace: float):
    """While serving, the logger's own handlers run on the log writer thread, behind a queue."""
    # A log write that blocks (a full pipe, a slow disk) then holds up no request.
    import logging.handlers

    class RecordQueue(_RecordQueue, logging.handlers.QueueHandler):
        pass

    class LogWriter(_LogWriter, logging.handlers.QueueListener):
        pass

    handlers = log.handlers[:]
    # No handlers of its own: records go to the root logger's, as the embedding code set them up.
    # Another serve() running already: its log writer serves this one too.
    if not handlers or isinstance(handlers[0], _RecordQueue):
        yield
        return
    records = queue.SimpleQueue()
    intake = RecordQueue(records)
    writer = LogWriter(records, intake, handlers)
    log.handlers = [intake]
    writer.start()
    try:
        yield
    finally:
        if log.handlers == [intake]:
            log.handlers = handlers
        writer.finish(grace)


def check_startup(settings: Settings, wsgi_server: bool = False) -> None:
    """Warn about what is risky in `settings`; raise SettingsError for what cannot work.

    `wsgi_server`: served by another WSGI server, which alone knows where it listens.
    """
    loopback = not wsgi_server and _is_loopback(settings.host)
    if settings.dev_mode and wsgi_server and not settings.allow_dev_mode:
        raise SettingsError(
            "development mode (LiveKit's public development key, used when LIVEKIT_API_KEY and "
            "LIVEKIT_API_SECRET are not set) under a WSGI server needs "
            f"{SETTING_NAMES['allow_dev_mode']}=true"
        )
    if settings.dev_mode:
        log.warning(_dev_mode_warning(settings, wsgi_server, loopback))
    if not settings.auth_secrets and not loopback:
        log.warning(
            "/token is open: anyone who can reach this server can get tokens. "
            f"{SETTING_NAMES['auth_secrets']} closes it."
        )
    if settings.event_file:
        _check_event_file(settings.event_file)


def _dev_mode_warning(settings: Settings, wsgi_server: bool, loopback: bool) -> str:
    warning = (
        "DEVELOPMENT MODE: tokens are signed with LiveKit's public development key, which anyone "
        "can sign with; webhooks are taken only from this machine. "
    )
    if wsgi_server:
        return warning + "Where it listens is the WSGI server's choice: never expose it."
    if loopback:
        return (
            warning
            + "Listening on loopback only; "
            + "SERVER_HOST=0.0.0.0 opens it to the local network (phones)."
        )
    return warning + f"Listening on {settings.host}: never expose this server."


# The hint for each reason an event file cannot be opened.
_EVENT_FILE_HINTS = {
    FileNotFoundError: " (create its directory, writable by this user)",
    IsADirectoryError: " (give the path of a file, not a directory)",
    PermissionError: " (make it writable by this user)",
}


def _check_event_file(path: str) -> None:
    try:
        open(path, "ab").close()
    except OSError as err:
        hint = _EVENT_FILE_HINTS.get(type(err), "")
        raise SettingsError(
            f"{SETTING_NAMES['event_file']} cannot be opened: {path}: {err.strerror}{hint}"
        ) from None


def main(argv: Optional[list] = None) -> int:
    """`python3 server.py [--config PATH]`: 0 after a drain; 2: misconfigured; 1: cannot listen."""
    parser = argparse.ArgumentParser(description="LiveKit token and webhook server")
    parser.add_argument(
        "--config", metavar="PATH", help="config.ini file (environment variables override it)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = load_settings(os.environ, args.config)
        serve(make_app(settings), settings)
    except SettingsError as err:
        log.error("configuration error", extra={"fields": {"error": str(err)}})
        return 2
    except OSError as err:
        # The port is taken or not allowed: that may pass, so not a configuration error.
        log.error("cannot listen", extra={"fields": {"port": settings.port, "error": err.strerror}})
        return 1
    return 0


def __getattr__(name: str) -> App:
    """`server:application` for WSGI servers: built from the environment when first asked for."""
    if name != "application":
        raise AttributeError(name)
    configure_logging()
    try:
        settings = load_settings(os.environ)
        check_startup(settings, wsgi_server=True)
    except SettingsError as err:
        # The WSGI server reports the exception as it will; this line says it in the log's own form.
        log.error("configuration error", extra={"fields": {"error": str(err)}})
        raise
    # Kept, so that every later `server.application` is this one app (one rate limiter,
    # one dedupe memory).
    globals()["application"] = app = make_app(settings)
    return app


if __name__ == "__main__":
    sys.exit(main())
