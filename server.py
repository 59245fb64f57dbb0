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

import argparse, collections, configparser, contextlib, dataclasses, datetime, errno, hashlib, hmac  # noqa: E401
import io, ipaddress, json, logging, math, os, re, secrets, signal, socket, struct, threading, time  # noqa: E401
import unicodedata
from http import HTTPStatus
from typing import Callable, Iterable, Mapping, Optional
from urllib.parse import unquote_to_bytes

from livekit_auth import (AccessToken, LiveKitAuthError, MalformedWebhook, TokenVerifier, VideoGrants, WebhookEvent,
                          WebhookReceiver, dumps_compact, loads_object)

log = logging.getLogger("livekit_token_server")

# What `livekit-server --dev` and OpenVidu's local deployment use.
DEV_API_KEY, DEV_API_SECRET = "devkey", "secret"
MAX_TOKEN_BODY_BYTES = 16 * 1024
MAX_NAME_LENGTH = 256  # room names, identities and display names
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024  # LiveKit events carry a room and a participant or track: a few KiB
# Standard-shape fields a deployment may let clients set; room_name and participant_identity always are.
OPTIONAL_CLIENT_FIELDS = ("participant_name", "participant_metadata", "participant_attributes", "room_config")
STANDARD_FIELDS = frozenset(("room_name", "participant_identity") + OPTIONAL_CLIENT_FIELDS)
OPENVIDU_FIELDS = frozenset(("roomName", "participantName"))
TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")  # as token grants spell them


# --------------------------------------------------------------------------
# 1. Settings


class SettingsError(ValueError):
    """A setting is unusable; the message names it."""


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
    return frozenset(text.replace(",", " ").split())  # only for lists where empty lets in less, never more


def _list(text: str, name: str) -> frozenset:
    # Set but empty is a template that did not fill in: for secrets, keys, rooms,
    # origins and sources, "nothing" would quietly mean "anyone" or "anything".
    if not _list_or_none(text, name):
        raise SettingsError(f"{name} is set but lists nothing; remove it to get the default")
    return _list_or_none(text, name)


def _networks(text: str, name: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(word, strict=False) for word in sorted(_list_or_none(text, name)))
    except ValueError:
        raise SettingsError(f"{name} takes IP addresses or networks such as 10.0.0.0/8") from None


def _setting(env: str, parse: Callable, default=dataclasses.MISSING, secret: bool = False):
    # Read from the environment variable `env`, or from config.ini under the section and
    # key named after it: SERVER_HOST is [server] host, TOKEN_TTL is [tokens] ttl.
    return dataclasses.field(default=default, repr=not secret, metadata={"env": env, "parse": parse})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the app and the runner need, checked when built. Defaults are the safe ones."""

    api_key: str = _setting("LIVEKIT_API_KEY", _text, secret=True)
    api_secret: str = _setting("LIVEKIT_API_SECRET", _text, secret=True)
    livekit_url: str = _setting("LIVEKIT_URL", _text, "ws://localhost:7880")
    dev_mode: bool = False  # signing with LiveKit's public dev key (see load_settings)
    host: str = _setting("SERVER_HOST", _text, "0.0.0.0")
    port: int = _setting("SERVER_PORT", _integer, 6080)
    max_connections: int = _setting("SERVER_MAX_CONNECTIONS", _integer, 64)
    idle_timeout: float = _setting("SERVER_IDLE_TIMEOUT", _seconds, 5.0)
    request_timeout: float = _setting("SERVER_REQUEST_TIMEOUT", _seconds, 10.0)
    # Proxies whose X-Forwarded-For names the client.
    trusted_proxies: tuple = _setting("SERVER_TRUSTED_PROXIES", _networks, ())
    # Bearer secrets a /token request must present; none: /token is open.
    auth_secrets: frozenset = _setting("TOKEN_AUTH_SECRETS", _list, frozenset(), secret=True)
    token_ttl: int = _setting("TOKEN_TTL", _integer, 900)
    # Room names, or prefixes ending in "*"; "*" alone: any room.
    rooms: frozenset = _setting("TOKEN_ROOMS", _list, frozenset(("*",)))
    client_fields: frozenset = _setting("TOKEN_CLIENT_FIELDS", _list_or_none, frozenset(("participant_name",)))
    can_publish: bool = _setting("TOKEN_CAN_PUBLISH", _flag, True)
    can_publish_sources: frozenset = _setting("TOKEN_CAN_PUBLISH_SOURCES", _list, frozenset())  # none: any
    can_subscribe: bool = _setting("TOKEN_CAN_SUBSCRIBE", _flag, True)
    can_publish_data: bool = _setting("TOKEN_CAN_PUBLISH_DATA", _flag, True)
    # Token requests a minute per client address (0: no limit), and how many at once.
    rate_per_minute: int = _setting("TOKEN_RATE_PER_MINUTE", _integer, 300)
    rate_burst: int = _setting("TOKEN_RATE_BURST", _integer, 60)
    dedupe_seconds: int = _setting("WEBHOOK_DEDUPE_SECONDS", _integer, 600)
    # JSON lines: each accepted event is written there (fsync) before the 200.
    event_file: str = _setting("WEBHOOK_EVENT_FILE", _text, "")
    allowed_origins: frozenset = _setting("CORS_ALLOWED_ORIGINS", _list, frozenset(("*",)))

    def __post_init__(self) -> None:
        origin = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?"
        checks = [(getattr(self, field), field, "must not be empty") for field in ("api_key", "api_secret", "host")]
        checks += [(low <= getattr(self, field) <= high, field, f"must be from {low} to {high}")
                   for field, (low, high) in _RANGES.items()]
        checks += [
            (re.fullmatch(r"(wss?|https?)://[^\s/]+(/\S*)?", self.livekit_url), "livekit_url",
             "must be a ws://, wss://, http:// or https:// URL"),
            (self.client_fields <= set(OPTIONAL_CLIENT_FIELDS), "client_fields",
             "takes only: " + ", ".join(OPTIONAL_CLIENT_FIELDS)),
            (self.can_publish_sources <= set(TRACK_SOURCES), "can_publish_sources",
             "takes only: " + ", ".join(TRACK_SOURCES)),
            (self.rooms and not any("*" in room[:-1] for room in self.rooms), "rooms",
             'takes room names, or prefixes ending in "*"'),
            (self.allowed_origins == {"*"} or self.allowed_origins and all(re.fullmatch(origin, o) for o in
             self.allowed_origins), "allowed_origins", "takes * alone, or origins like https://app.example.com"),
            (not self.event_file or os.path.isabs(self.event_file), "event_file", "must be an absolute path"),
            ("" not in self.auth_secrets, "auth_secrets", "must not hold an empty secret"),
        ]
        for ok, field, problem in checks:
            if not ok:
                raise SettingsError(f"{SETTING_NAMES[field]} {problem}")


# field -> (config.ini section, key, environment variable), for every setting read from outside.
SETTING_SOURCES = {field.name: ("tokens" if env.startswith("TOKEN_") else env.partition("_")[0].lower(),
                                env.partition("_")[2].lower(), env)
                   for field in dataclasses.fields(Settings) if (env := field.metadata.get("env"))}
SETTING_NAMES = {field: f"{section}.{key} ({env})" for field, (section, key, env) in SETTING_SOURCES.items()}
_RANGES = {  # inclusive bounds of the numeric settings
    "port": (0, 65535), "max_connections": (1, 10000), "idle_timeout": (0.001, 3600),
    "request_timeout": (0.001, 3600), "token_ttl": (1, 30 * 24 * 3600),
    "rate_per_minute": (0, 1_000_000), "rate_burst": (1, 1_000_000), "dedupe_seconds": (0, 7 * 24 * 3600)}


# Settings of earlier versions: set now, they would be quietly ignored, and what they did undone.
REMOVED_SETTINGS = {"SERVER_METRICS", "SERVER_LOG_FORMAT", "TOKEN_SAFE_NAMES", "TOKEN_MAX_NAME_LENGTH", "TOKEN_HIDDEN",
                    "TOKEN_CAN_UPDATE_OWN_METADATA", "WEBHOOK_API_KEYS"}


def load_settings(environ: Mapping[str, str], config_path: Optional[str] = None) -> Settings:
    """Settings from built-in defaults, then the config.ini at `config_path`, then `environ`; SettingsError."""
    if removed := sorted(REMOVED_SETTINGS.intersection(environ)):
        raise SettingsError(f"{removed[0]} is no longer a setting (README.md, Configuration, lists them)")
    values = _read_config(config_path) if config_path is not None else {}
    values.update({field: (env, environ[env]) for field, (_, _, env) in SETTING_SOURCES.items() if env in environ})
    parse = {field.name: field.metadata.get("parse") for field in dataclasses.fields(Settings)}
    parsed = {field: parse[field](text.strip(), name) for field, (name, text) in values.items()}
    if "api_key" not in parsed and "api_secret" not in parsed:
        # On LiveKit's public dev key anyone could forge webhooks: loopback, unless SERVER_HOST says otherwise.
        parsed.update(api_key=DEV_API_KEY, api_secret=DEV_API_SECRET, dev_mode=True)
        parsed.setdefault("host", "127.0.0.1")
    for present, missing in (("api_key", "api_secret"), ("api_secret", "api_key")):
        if present in parsed and missing not in parsed:
            raise SettingsError(f"{SETTING_NAMES[present]} is set but {SETTING_NAMES[missing]} is not")
    return Settings(**parsed)


def _line_of(text: str, section: str, key: Optional[str]) -> object:
    # The line of `key` in `section` of a config file's text (of the section's header for None), or "?".
    lines = [line.strip().lower() for line in text.splitlines()]
    start = lines.index(f"[{section.lower()}]") if f"[{section.lower()}]" in lines else 0
    found = [n for n in range(start, len(lines)) if key is None or re.match(rf"{re.escape(key)}\s*[=:]", lines[n])]
    return found[0] + 1 if found else "?"


def _read_config(path: str) -> dict:
    """{field: (name, text)} from a config.ini. Raises SettingsError naming the file, line and key."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        parser.read_string(text)
    except OSError as err:
        raise SettingsError(f"cannot read config file {path}: {err.strerror} (check --config)") from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8") from None
    except configparser.Error as err:  # configparser's own messages quote the line, which may hold a secret
        problem = {"DuplicateOptionError": f"{getattr(err, 'section', '')}.{getattr(err, 'option', '')} is set twice",
                   "DuplicateSectionError": f"[{getattr(err, 'section', '')}] appears twice",
                   "MissingSectionHeaderError": "a setting comes before any [section]"}
        line = getattr(err, "lineno", None) or err.errors[0][0]
        what = problem.get(type(err).__name__, "a line is neither [section] nor key = value")
        raise SettingsError(f"{path}, line {line}: {what}") from None
    if parser.defaults():
        raise SettingsError(f"{path}: [DEFAULT] is not read; put {', '.join(parser.defaults())} in its own section")
    known = {(section, key): field for field, (section, key, _) in SETTING_SOURCES.items()}
    for section, key in [(s, k) for s in parser.sections() for k in parser[s]] + [(s, None) for s in parser.sections()]:
        if (section, key) not in known and (key or section not in {s for s, _ in known}):
            raise SettingsError(f"{path}, line {_line_of(text, section, key)}: unknown "
                                + (f"setting {section}.{key}" if key else f"section [{section}]"))
    return {known[s, k]: (f"{s}.{k}", parser[s][k]) for s in parser.sections() for k in parser[s]}


# --------------------------------------------------------------------------
# 2. The core app: routing, JSON, CORS, /token in both shapes, /webhook verification

# Path -> methods. OPTIONS (CORS preflight) is answered on every route.
ROUTES = {"/token": ("POST",), "/webhook": ("POST",), "/livekit/webhook": ("POST",), "/healthz": ("GET", "HEAD")}


class HTTPError(Exception):
    """An error answer: status, a fixed message that never echoes the request, extra headers."""

    def __init__(self, status: int, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def read_body(environ: dict, limit: int) -> bytes:
    """The request body, after checking Content-Length: ASCII digits, and 413 above `limit` before reading."""
    length = environ.get("CONTENT_LENGTH", "")
    if not length:
        raise HTTPError(411, "Content-Length is required")
    if not (length.isascii() and length.isdigit()) or len(length) > 12:  # int() also takes "+1", "1_0"
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


class App:
    """The WSGI application for `settings`, as make_app(settings, on_event=..., clock=...) builds it."""

    # Safe to call from many threads at once. on_event(event) gets each verified webhook event
    # not seen before (a livekit_auth.WebhookEvent), before the 200: if it raises, LiveKit is
    # answered 500 and retries. `clock` gives Unix seconds (tokens, verification, limits).

    def __init__(self, settings: Settings, *, on_event: Optional[Callable[[WebhookEvent], None]] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.policy = settings, TokenPolicy(settings, clock)
        self.delivery = WebhookDelivery(settings, on_event, clock)
        self.receiver = WebhookReceiver(TokenVerifier(settings.api_key, settings.api_secret, clock=clock))
        # Built once, never changed per request (starlette #511). No credentials are ever
        # allowed, so "*" is safe and needs no Vary (starlette #1113).
        self.headers = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        self.headers += [("Access-Control-Allow-Origin", "*")] if settings.allowed_origins == {"*"} else []
        self.headers += [("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate")]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if self.settings.trusted_proxies:
            # As a proxy-fix middleware does: the rate limit and the access line name the same client.
            environ["REMOTE_ADDR"] = self.policy.client_address(environ)
        try:
            status, value, headers = self.route(environ, path, method)
        except HTTPError as err:
            status, value, headers = err.status, {"errorMessage": err.message}, list(err.headers)
        except OSError:
            raise  # the client stalled or left while its body was read: the WSGI server's business
        except Exception as err:
            log.error("unexpected error", extra={"fields": {"error": type(err).__name__}})
            status, value, headers = 500, {"errorMessage": "Internal server error"}, []
        headers += self.headers
        origin = environ.get("HTTP_ORIGIN")  # an exact match against the list, never a pattern (starlette #800)
        if self.settings.allowed_origins != {"*"}:
            headers += [("Access-Control-Allow-Origin", origin)] if origin in self.settings.allowed_origins else []
            headers.append(("Vary", "Origin"))
        if status == 204:  # RFC 9110 §8.6: no content, so no Content-Length either
            start_response(f"204 {HTTPStatus(204).phrase}", headers)
            return []
        body = dumps_compact(value).encode("ascii")
        headers = [("Content-Type", "application/json"), *headers, ("Content-Length", str(len(body)))]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [b"" if method == "HEAD" else body]

    def route(self, environ: dict, path: str, method: str) -> tuple:
        """(status, a JSON value, extra headers), or HTTPError."""
        if path not in ROUTES:
            raise HTTPError(404, "Not found")
        allow = ", ".join(ROUTES[path] + ("OPTIONS",))
        if method == "OPTIONS":
            # Authorization is named: the "*" wildcard never covers it (Fetch standard).
            return 204, None, [("Allow", allow), ("Access-Control-Allow-Methods", allow),
                               ("Access-Control-Allow-Headers", "Authorization, Content-Type, *"),
                               ("Access-Control-Max-Age", "600")]
        if method not in ROUTES[path]:
            raise HTTPError(405, "Method not allowed", (("Allow", allow),))
        if path == "/healthz":
            return 200, {"status": "ok"}, []
        return self.token(environ) if path == "/token" else self.webhook(environ)

    def token(self, environ: dict) -> tuple:
        """POST /token, in the shape the fields tell (any of LiveKit's snake_case fields: its standard one)."""
        # LiveKit's standard endpoint answers 201 {server_url, participant_token}; the OpenVidu
        # tutorials' shape, any other object ({} included), 200 {token}.
        self.policy.admit(environ)  # rate limit and bearer secret, before the body is read
        request = read_json(environ, MAX_TOKEN_BODY_BYTES)
        if not STANDARD_FIELDS.intersection(request):
            room, identity = request.get("roomName"), request.get("participantName")
            if type(room) is not str or type(identity) is not str or not room or not identity:
                raise HTTPError(400, "roomName and participantName are required")
            request = {"roomName": room, "participantName": identity}
            return 200, {"token": self.policy.token(request, "roomName", "participantName")}, []
        if OPENVIDU_FIELDS.intersection(request):
            raise HTTPError(400, "Request mixes roomName/participantName with LiveKit's snake_case fields")
        if not STANDARD_FIELDS.issuperset(request):
            raise HTTPError(400, "Request has a field that is not part of LiveKit's token request")
        for field, made_up in (("room_name", "room-"), ("participant_identity", "user-")):
            if type(request.get(field, "")) is not str:
                raise HTTPError(400, f"{field} must be a string")
            # Left out or empty, it is made up, as LiveKit's own token server does.
            request[field] = request.get(field) or made_up + secrets.token_hex(4)
        token = self.policy.token(request, "room_name", "participant_identity")
        return 201, {"server_url": self.settings.livekit_url, "participant_token": token}, []

    def webhook(self, environ: dict) -> tuple:
        """POST /webhook: check that LiveKit signed this exact body, then deliver the event."""
        if not environ.get("HTTP_AUTHORIZATION"):
            raise HTTPError(401, "Authorization header is required")
        try:
            # The token first: a caller without LiveKit's signature never gets its body read.
            claims = self.receiver.authorize(environ["HTTP_AUTHORIZATION"])
            event = WebhookEvent(self.receiver.read_event(read_body(environ, MAX_WEBHOOK_BODY_BYTES), claims))
            # What delivery reads, read now: a field of the wrong type is a 400, not a 500 later.
            room = event.room.name or event.egress_info.room_name or event.ingress_info.room_name
            fields = {"event": event.event, "id": event.id, "room": room, "participant": event.participant.identity}
        except MalformedWebhook as err:
            raise HTTPError(400, str(err)) from None
        except LiveKitAuthError as err:  # fixed messages, never holding the token or the secret
            raise HTTPError(401, str(err)) from None
        self.delivery.take(event, fields)
        return 200, {"status": "ok"}, []


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


def _has_refused_character(text: str, identifier: bool) -> bool:
    if text.isascii():
        return not text.isprintable()  # controls and DEL
    refused = _NOT_IN_IDENTIFIERS if identifier else _NOT_IN_DISPLAY_NAMES
    return any(0xFDD0 <= ord(char) <= 0xFDEF or ord(char) & 0xFFFE == 0xFFFE  # noncharacters
               or unicodedata.category(char) in refused or not identifier and char in _BIDI_CONTROLS
               for char in text)


def _ip_address(text: str):  # the IP address `text` holds, or None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip  # ::ffff:a.b.c.d, as dual-stack sockets say, is IPv4


class TokenPolicy:
    """Who may ask for a token, and what it may hold: admit() before a /token body is read, token() to sign."""

    MAX_CLIENTS = 10_000  # rate-limit buckets kept; the least recently seen are forgotten first

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock
        # Compared as SHA-256 digests, so compare_digest sees equal lengths and leaks none.
        self.auth_digests = [hashlib.sha256(secret.encode("utf-8")).digest() for secret in settings.auth_secrets]
        self.buckets: collections.OrderedDict = collections.OrderedDict()  # client -> (tokens, time)
        self.buckets_lock = threading.Lock()  # guards buckets; taken by each /token request's thread
        # The grants every token carries, room aside (left out unset, as in the tutorials' tokens).
        self.grants = dict(room_join=True, can_publish=settings.can_publish, can_subscribe=settings.can_subscribe,
                           can_publish_data=settings.can_publish_data,
                           can_publish_sources=tuple(sorted(settings.can_publish_sources)) or None)

    def admit(self, environ: dict) -> None:
        """429 past the client's rate, then 401 without a valid bearer secret (when secrets are set)."""
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
            raise HTTPError(401, "A valid bearer token is required", (("WWW-Authenticate", 'Bearer realm="token"'),))

    def rate_limit_wait(self, client: str, now: float) -> float:
        """A token bucket per client: 0 if it may go ahead now (and it is counted), else the seconds to wait."""
        rate, burst = self.settings.rate_per_minute / 60.0, self.settings.rate_burst
        with self.buckets_lock:
            tokens, then = self.buckets.pop(client, (burst, now))
            tokens = min(burst, tokens + max(now - then, 0) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self.buckets) > self.MAX_CLIENTS:
                self.buckets.popitem(last=False)
            return wait

    def client_address(self, environ: dict) -> str:
        """The peer, or the client that trusted proxies wrote into X-Forwarded-For."""
        # From the right (the entries our proxies added), up to the first address that is
        # not a trusted proxy: anything left of it was written by the client and proves nothing.
        address = environ.get("REMOTE_ADDR", "")
        hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        while hops and (ip := _ip_address(address)) and any(ip in net for net in self.settings.trusted_proxies):
            address = hops.pop()
        return address if _ip_address(address) else environ.get("REMOTE_ADDR", "")  # never a proxy's garbage

    def token(self, request: dict, room_field: str, identity_field: str) -> str:
        """A token for request[identity_field] in request[room_field]; HTTPError 403 or 400 if refused."""
        for field in OPTIONAL_CLIENT_FIELDS:
            if field in request and field not in self.settings.client_fields:
                raise HTTPError(403, f"{field} may not be set by clients on this server")
        for field in ("participant_name", "participant_metadata"):
            if type(request.get(field, "")) is not str:
                raise HTTPError(400, f"{field} must be a string")
        attributes = request.get("participant_attributes", {})
        if type(attributes) is not dict or not all(type(value) is str for value in attributes.values()):
            raise HTTPError(400, "participant_attributes must be an object of strings")
        if type(request.get("room_config", {})) is not dict:
            raise HTTPError(400, "room_config must be an object")
        room, identity, name = request[room_field], request[identity_field], request.get("participant_name", "")
        self.check_name(room, room_field, identifier=True)
        self.check_name(identity, identity_field, identifier=True)
        # "team-*" is a prefix, and needs at least one character after it.
        if not any(room == rule or rule.endswith("*") and room.startswith(rule[:-1]) and len(room) >= len(rule)
                   for rule in self.settings.rooms):
            raise HTTPError(403, "This room is not open to tokens from this server")
        self.check_name(name, "participant_name", identifier=False)
        token = AccessToken(self.settings.api_key, self.settings.api_secret).with_identity(identity).with_name(name)
        token.with_grants(VideoGrants(room=room, **self.grants)).with_metadata(request.get("participant_metadata", ""))
        token.with_ttl(datetime.timedelta(seconds=self.settings.token_ttl))
        if "participant_attributes" in request:
            token.with_attributes(request["participant_attributes"])
        if "room_config" in request:
            try:  # as received: LiveKit Server's protojson reader takes the snake_case names clients send
                token.with_room_config(request["room_config"])
            except ValueError:  # nested deeper than JSON can be written back
                raise HTTPError(400, "room_config must be an object") from None
        return token.to_jwt(now=self.clock())

    def check_name(self, value: str, field: str, identifier: bool) -> None:
        """At most MAX_NAME_LENGTH characters, none of those refused for its kind of name."""
        if len(value) > MAX_NAME_LENGTH:
            raise HTTPError(400, f"{field} must be at most {MAX_NAME_LENGTH} characters")
        if _has_refused_character(value, identifier):
            kind = "invisible or private-use" if identifier else "separator or bidi-override"
            raise HTTPError(400, f"{field} must not contain control, {kind} characters")


def _rate_key(address: str) -> str:
    ip = _ip_address(address)
    if ip is None or ip.version == 4:
        return address[:64] if ip is None else str(ip)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))  # one IPv6 host usually holds a whole /64


# --------------------------------------------------------------------------
# 4. Webhook delivery: once per event id, one room at a time, on disk, then the handler


class WebhookDelivery:
    """What happens to a verified event: take() it once per id, one room at a time, stored, then handled."""

    # Shaped by how LiveKit delivers: it retries only on a 5xx (or no answer), takes any
    # 4xx as delivered, and sends a room's events one at a time. So: 200 only once the
    # event is stored and handled; a repeat of an id taken within dedupe_seconds is
    # answered 200 and not taken again; one event per room at a time.

    MAX_IDS = 100_000  # event ids remembered; the oldest go first
    ROOM_LOCKS = 64

    def __init__(self, settings: Settings, on_event: Optional[Callable], clock: Callable[[], float]) -> None:
        self.event_file, self.on_event, self.clock = settings.event_file, on_event, clock
        self.window = settings.dedupe_seconds
        self.taken: collections.OrderedDict = collections.OrderedDict()  # event id -> when taken
        self.taken_lock = threading.Lock()  # guards taken
        # A room's events are taken under the lock its name hashes to: one at a time, in order.
        # Two rooms may share a lock and wait for each other; memory stays fixed.
        self.room_locks = [threading.Lock() for _ in range(self.ROOM_LOCKS)]
        self.file_lock = threading.Lock()  # one writer at a time keeps each line whole

    def take(self, event: WebhookEvent, fields: dict) -> None:
        """Log, store and hand over a verified event once; HTTPError 503 (event file) or 500 (handler)."""
        # `fields`: the event's name, id, room and participant, read by the caller.
        event_id = fields["id"]  # "" when LiveKit gave none: then never deduplicated
        with self.room_locks[hash(fields["room"]) % self.ROOM_LOCKS]:
            with self.taken_lock:
                if event_id and self.taken.get(event_id, -math.inf) > self.clock() - self.window:
                    log.info("webhook duplicate", extra={"fields": {"id": event_id}})
                    return
            log.info("webhook event", extra={"fields": fields})
            if self.event_file:
                self.store(event.to_dict())
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # your code: the message and traceback are yours to read
                    log.exception("webhook handler failed", extra={"fields": {"id": event_id}})
                    raise HTTPError(500, "Webhook handler failed") from None
            with self.taken_lock:
                self.taken[event_id] = now = self.clock()
                self.taken.move_to_end(event_id)
                # The oldest first: those past the window, and beyond MAX_IDS.
                expired = now - self.window
                while len(self.taken) > self.MAX_IDS or self.taken and next(iter(self.taken.values())) <= expired:
                    self.taken.popitem(last=False)

    def store(self, event: dict) -> None:
        """Append the event as one JSON line, on disk (fsync) before the 200; 503 if that fails."""
        line = json.dumps(event, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            with self.file_lock, open(self.event_file, "a+b") as file:  # opened per event: rotation works
                # A line torn by a crash mid-write must not swallow the next event.
                end = file.seek(0, os.SEEK_END)
                file.write(b"\n" + line if end and os.pread(file.fileno(), 1, end - 1) != b"\n" else line)
                file.flush()
                os.fsync(file.fileno())
        except OSError as err:
            log.error("cannot write the event file", extra={"fields": {"error": err.strerror}})
            raise HTTPError(503, "Could not store the event") from None


# --------------------------------------------------------------------------
# 5. The runner: any WSGI app on the standard library's socketserver + http.server
#
# ThreadingMixIn + HTTPServer give each connection a thread, so a slow client holds
# up no one else; BaseHTTPRequestHandler.parse_request (with http.client's
# parse_headers) parses the head. What they let through or leave out is added here:
#   - the head: at most MAX_HEAD_BYTES, lines ending in CRLF, a strict request line,
#     header lines of a token, a colon and a value without controls (so no obs-fold,
#     RFC 9112 §5.2); framing that cannot be read two ways (RFC 9112 §6.3): no
#     Transfer-Encoding, no repeated Content-Length or Host, Content-Length of ASCII
#     digits, a Host on HTTP/1.1; header names with "_" dropped;
#   - one deadline for the whole request, and an idle timeout between requests;
#   - a bound on connections: past it a 503, and idle connections make room;
#   - the WSGI environ built from the request alone (wsgiref's simple_server copies
#     os.environ, secrets included, into each one);
#   - keep-alive, and each answer in one send with TCP_NODELAY (head and body in two
#     sends stall ~40 ms a request on keep-alive: Nagle's algorithm against delayed ACKs);
#   - JSON error answers with fixed messages (http.server's echo the request).
#
# Threads: one acceptor (serve_forever), one thread per connection, and a drain
# thread on a signal. The server's connections_lock guards its `connections` dict,
# `draining`, and the fields marked (lock) in _Connection.

MAX_HEAD_BYTES = 16 * 1024
# A connection waiting this long for a request may be closed to make room: a client
# sends its request as soon as it has connected, and its next one soon after an answer.
MAKE_ROOM_AFTER = 0.1
# An unread body up to MAX_SKIP_BYTES is read past, so the connection carries the next
# request. After an answer with more left unread, what the client still sends is
# swallowed for a while before closing: a close with unread data sends a reset, which
# can destroy the answer before the client reads it.
MAX_SKIP_BYTES, LINGER_SECONDS, MAX_LINGER_BYTES = 64 * 1024, 2.0, 1024 * 1024
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"  # RFC 9110 §5.6.2
_REQUEST_LINE = re.compile(rb"(%s+) ([!-~]+) HTTP/([0-9]\.[0-9])\r\n" % _TCHAR)
_FIELD_NAME = re.compile(rb"%s+:" % _TCHAR)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value, RFC 9110 §5.5
_LOGGED_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


# The deadlines are the kernel's (SO_RCVTIMEO, SO_SNDTIMEO) on blocking sockets: Python's socket
# timeouts add a poll() and an ioctl() to each read and send, each a turn at the interpreter
# lock for every thread (bench/run.py, same code without it: 1.28x /token at 8 connections).
def _timeval(seconds: float) -> bytes:  # a struct timeval, for SO_RCVTIMEO and SO_SNDTIMEO
    return struct.pack("@ll", *divmod(max(round(seconds * 1e6), 1000), 1_000_000))  # at least 1 ms: 0 means never


class _RawReader(io.RawIOBase):
    def readable(self) -> bool:  # what BufferedReader asks of a raw stream, besides readinto()
        return True


class _Connection(_RawReader):
    """A client connection: the raw stream under its handler's BufferedReader, and its state."""

    # Every recv ends by `deadline`, so a slow client cannot stretch a request. While the
    # thread waits for a request's first byte with nothing buffered, `idle_since` says
    # since when, and the acceptor may close the connection to make room.

    def __init__(self, sock: socket.socket, server, over_limit: bool) -> None:
        sock.settimeout(None)  # blocking, even under socket.setdefaulttimeout(): peek() must never wait
        self.sock, self.server = sock, server
        self.over_limit = over_limit  # (lock) accepted past max_connections: its request gets a 503
        self.idle_since: Optional[float] = time.monotonic()  # (lock) idle from the start, before its thread runs
        # The connection's own thread only: whether it waits for a request, the deadline of that
        # wait or of the request, whether a request went unread (linger at close), and whether
        # a read from the client failed or came too late (rather than the app failing).
        self.waiting, self.deadline, self.unread, self.failed = False, math.inf, False, False

    def peek(self) -> Optional[bytes]:
        """The next byte waiting on the socket, left there: b"" if the client has closed; None if none."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError as err:  # nothing waiting; or reset, as good as closed
            return None if isinstance(err, BlockingIOError) else b""

    def readinto(self, buffer) -> int:
        if self.waiting:
            with self.server.connections_lock:
                if self.server.draining and not self.peek():
                    return 0  # as if the client had closed: no new request starts
                self.idle_since = self.idle_since or time.monotonic()
        try:
            # Each recv waits only for what is left before the deadline. Past it, a last short wait
            # still takes what has arrived: a thread that ran late serves a client that was on time.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.deadline - time.monotonic()))
            return self.sock.recv_into(buffer)
        except OSError as err:  # too late, or the connection failed: the client's doing, not the app's
            self.failed = True
            raise TimeoutError if isinstance(err, BlockingIOError) else err  # BlockingIOError: SO_RCVTIMEO ran out
        finally:
            if self.waiting:
                with self.server.connections_lock:
                    self.idle_since = None


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
    """Mixed into http.server.BaseHTTPRequestHandler: one per connection, on that connection's thread."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # StreamRequestHandler.setup() sets TCP_NODELAY

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced below: reads go through _Connection, with deadlines
        with self.server.connections_lock:  # gone already if closed to make room before this thread ran
            self.conn = self.server.connections.get(self.request) or _Connection(self.request, self.server, False)
        self.rfile = io.BufferedReader(self.conn)
        # Each send that cannot go on within it fails: a client that stops reading is dropped. (Python's
        # sendall timeout bounded the whole answer; the token and webhook answers fit in one send.)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.server.request_timeout))

    def handle(self) -> None:
        """Requests, while the connection is kept alive and the next one's first byte comes in time."""
        self.close_connection = False
        while not self.close_connection:
            self.conn.deadline, self.conn.waiting = time.monotonic() + self.server.idle_timeout, True
            try:
                # RFC 9112 §2.2: empty lines before a request are ignored (some clients send CRLF after a body).
                while self.rfile.peek(1)[:1] in (b"\r", b"\n"):
                    self.rfile.read(1)
                if not self.rfile.peek(1):
                    return  # closed by the client, or to make room
            except OSError:  # silent too long, or reset
                return
            finally:
                self.conn.waiting = False
            self.handle_one_request()

    def handle_one_request(self) -> None:
        started = time.monotonic()
        self.conn.deadline, self.conn.unread = started + self.server.request_timeout, True
        self.command, self.path, self.request_version, environ = "-", "-", "HTTP/1.0", {}
        try:
            try:
                self.read_head()
                if self.conn.over_limit:
                    raise HTTPError(503, "Server is busy; try again", (("Retry-After", "1"),))
                status = self.run_app(environ)
            except (TimeoutError, HTTPError) as err:  # TimeoutError: the head or the body came too late
                refusal = err if isinstance(err, HTTPError) else HTTPError(408, "Request timed out")
                self.close_connection, status = True, refusal.status
                self.send(*_json_answer(refusal))
        except OSError:  # the client left or reset
            self.close_connection = True
            return
        path = self.path.partition("?")[0]  # never the query string: it may carry credentials
        log.info("request", extra={"fields": {
            "client": environ.get("REMOTE_ADDR", self.client_address[0]),
            "method": self.command if self.command in _LOGGED_METHODS else "-",  # any token is a method to HTTP
            "path": path if len(path) <= 40 else path[:40] + "...",  # cut short, so no token fits in it
            "status": status, "duration_ms": round((time.monotonic() - started) * 1000, 1)}})

    def read_head(self) -> None:
        """Read the head within MAX_HEAD_BYTES, check it strictly, and have parse_request() parse it."""
        lines, size = [], 0
        while not lines or lines[-1] != b"\r\n":
            lines.append(self.rfile.readline(MAX_HEAD_BYTES + 1 - size))
            size += len(lines[-1])
            if size > MAX_HEAD_BYTES:
                raise HTTPError(431, "Request head is too large")
            if not lines[-1].endswith(b"\n"):
                raise ConnectionAbortedError  # the client closed mid-head
            if not lines[-1].endswith(b"\r\n"):
                raise HTTPError(400, "Request lines must end with CRLF")
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        if not request_line:
            raise HTTPError(400, "Malformed request line")
        method, target, version = request_line.groups()
        if version not in (b"1.0", b"1.1"):
            raise HTTPError(505, "Only HTTP/1.1 and HTTP/1.0 are supported")
        if not (target.startswith(b"/") or target == b"*" and method == b"OPTIONS"):
            raise HTTPError(400, "Request target must be a path")
        # With every line a token, a colon and a value, http.client's parser finds no defect to report.
        for line in lines[1:-1]:
            if not _FIELD_NAME.match(line):  # also a line starting with white space: obs-fold
                raise HTTPError(400, "Malformed header field")
            if _CONTROL.search(line, 0, len(line) - 2):
                raise HTTPError(400, "Header field value has a control character")
        # parse_request() reads the header fields from self.rfile: hand it the ones read above.
        self.raw_requestline, rfile, self.rfile = lines[0], self.rfile, io.BytesIO(b"".join(lines[1:]))
        try:
            self.parse_request()
        finally:
            self.rfile = rfile
        if any(len(self.headers.get_all(name, ())) > 1 for name in ("Content-Length", "Host")):
            raise HTTPError(400, "Repeated header field")
        if "Transfer-Encoding" in self.headers:
            # No client of this server needs chunked uploads; refusing them also
            # closes the Content-Length/Transfer-Encoding smuggling gap.
            raise HTTPError(411, "Transfer-Encoding is not supported; send Content-Length")
        if not re.fullmatch(r"[0-9]{1,12}", self.headers.get("Content-Length", "0").strip(" \t")):
            raise HTTPError(400, "Content-Length must be a decimal number")
        if self.request_version == "HTTP/1.1" and "Host" not in self.headers:
            raise HTTPError(400, "Host header is required")

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        # parse_request() calls this with messages that echo the request: raise instead, so that
        # every refusal leaves through handle_one_request() as JSON. After read_head()'s checks, only
        # http.client's limit is left: 100 lines, the blank one ending the head included.
        raise HTTPError(code, "Too many header fields" if code == 431 else "Malformed request")

    def handle_expect_100(self) -> bool:
        return True  # 100 Continue is sent by _Body, once the app reads

    def run_app(self, environ: dict) -> int:
        """Call the WSGI app on this request and send its answer; the status sent."""
        expects_100 = self.request_version == "HTTP/1.1" and self.headers.get("Expect", "").lower() == "100-continue"
        body = _Body(self.rfile, int(self.headers.get("Content-Length", "0")), self.wfile if expects_100 else None)
        body_file = io.BufferedReader(body)
        path, _, query = self.path.partition("?")
        # Built from the request alone: never os.environ, where the secrets are.
        environ.update({
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": "", "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query, "SERVER_NAME": self.server.server_name, "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": self.request_version, "REMOTE_ADDR": self.client_address[0], "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.input": body_file, "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False})
        for name, value in self.headers.items():
            if "_" in name:
                continue  # WSGI spells X-Auth as HTTP_X_AUTH: a header X_Auth must not pass for it
            key, value = name.upper().replace("-", "_"), value.strip(" \t")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
            environ[key] = f"{environ[key]}, {value}" if key in environ else value
        response: list = []

        def start_response(status: str, headers: list, exc_info=None) -> Callable:
            response[:] = [status, headers]
            return response.append  # WSGI's write(): what it is given goes out before the returned body

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status, headers, *written = response
            chunks = b"".join(written) + chunks
            if status[:3] not in ("204", "304") and "content-length" not in {name.lower() for name, _ in headers}:
                headers = [*headers, ("Content-Length", str(len(chunks)))]  # the body is whole: its length is known
        except Exception as err:
            if isinstance(err, OSError) and self.conn.failed:
                raise  # the client stalled (408) or left while the app read the body
            # The app failed. Its type only: an exception's message may hold what the log must not.
            log.error("application error", extra={"fields": {"error": type(err).__name__}})
            status, headers, chunks = _json_answer(HTTPError(500, "Internal server error"))
        if 0 < body.remaining <= MAX_SKIP_BYTES and body.continue_to is None:
            body_file.read()  # answered unread (401, 429): skipped, so the connection carries the next request
        self.conn.unread = body.remaining > 0
        self.close_connection = self.close_connection or self.conn.unread or self.server.draining
        self.send(status, headers, b"" if self.command == "HEAD" else chunks)  # RFC 9110 §9.3.2
        return int(status[:3])

    def send(self, status: str, headers: list, body: bytes) -> None:
        head = [f"HTTP/1.1 {status}", f"Date: {self.date_time_string()}", *(f"{k}: {v}" for k, v in headers)]
        if self.close_connection or self.request_version == "HTTP/1.0":
            head.append("Connection: close" if self.close_connection else "Connection: keep-alive")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)  # one send


def _json_answer(error: HTTPError) -> tuple:  # (status line, headers, body) of the runner's own error answers
    body = json.dumps({"errorMessage": error.message}).encode("ascii")
    return f"{error.status} {HTTPStatus(error.status).phrase}", [
        ("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
        *error.headers, ("Content-Length", str(len(body)))], body


class _BoundedServer:
    """Mixed into ThreadingMixIn + HTTPServer: the connection bound, making room, and the drain."""

    # The acceptor registers each connection in `connections` before it starts the
    # connection's thread; the thread removes it as it ends, and signals `room_freed`.

    daemon_threads = True  # the drain waits for requests in flight; none outlives the process
    block_on_close = False
    request_queue_size = 1024  # the listen backlog (socketserver's default is 5)

    def __init__(self, app: Callable, settings: Settings) -> None:
        self.app, self.max_connections = app, settings.max_connections
        self.idle_timeout, self.request_timeout = settings.idle_timeout, settings.request_timeout
        self.connections: dict = {}  # socket -> _Connection
        self.connections_lock = threading.Lock()
        self.room_freed = threading.Condition(self.connections_lock)
        self.draining = False
        super().__init__((settings.host, settings.port), self.RequestHandlerClass)

    def process_request(self, request: socket.socket, client_address) -> None:
        """The acceptor: register the connection, then start its thread (ThreadingMixIn)."""
        with self.connections_lock:
            while not self.draining:
                served = sum(not conn.over_limit for conn in self.connections.values())
                over_limit = served >= self.max_connections and not self.make_room()
                if not over_limit or len(self.connections) < 2 * self.max_connections:
                    break
                # Past twice the bound: wait, while new connections queue in the listen backlog,
                # for a connection to end or one to have waited long enough to make room.
                self.room_freed.wait(MAKE_ROOM_AFTER)
            if self.draining:
                return request.close()
            self.connections[request] = _Connection(request, self, over_limit)
        super().process_request(request, client_address)

    def make_room(self) -> bool:
        """Close the connection idle longest, if its client closed it or it waited MAKE_ROOM_AFTER for a request."""
        # Never one with a request on its way (idle_since is set only with nothing received).
        # Nor one bound for a 503: closing it would free no place to serve from.
        idle = [c for c in self.connections.values() if c.idle_since is not None and not c.over_limit]
        for conn in sorted(idle, key=lambda conn: conn.idle_since):
            waiting = conn.peek()
            if waiting == b"" or waiting is None and time.monotonic() - conn.idle_since >= MAKE_ROOM_AFTER:
                self.close_idle(conn)
                return True
        return False

    def close_idle(self, conn: _Connection) -> None:
        del self.connections[conn.sock]
        with contextlib.suppress(OSError):  # its thread's recv sees the end of the stream; the thread ends
            conn.sock.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: socket.socket) -> None:
        """The connection's thread, as it ends: linger if the request went unread, close, free the place."""
        with self.connections_lock:
            conn = self.connections.get(request)
        if conn is not None and conn.unread:
            deadline, swallowed = time.monotonic() + LINGER_SECONDS, 0
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_WR)
                while swallowed < MAX_LINGER_BYTES and time.monotonic() < deadline:
                    request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(deadline - time.monotonic()))
                    data = request.recv(65536)
                    swallowed += len(data) if data else MAX_LINGER_BYTES  # b"": the client has closed
        super().shutdown_request(request)
        with self.connections_lock:
            self.connections.pop(request, None)
            self.room_freed.notify_all()

    def handle_error(self, request, client_address) -> None:
        # socketserver would print a traceback of whatever escaped the handler.
        log.error("connection error", extra={"fields": {"error": type(sys.exc_info()[1]).__name__}})

    def drain(self, grace: float, signal_name: str = "") -> None:
        """Stop accepting, close idle connections, and give requests in flight up to `grace` seconds."""
        # From any thread but the acceptor's: socketserver's shutdown() waits for it.
        log.info("stopping: finishing requests in flight", extra={"fields": {"signal": signal_name}})
        with self.connections_lock:
            self.draining = True
            self.room_freed.notify_all()
        self.shutdown()
        self.server_close()  # the listening socket: new clients are refused, not left waiting
        with self.connections_lock:
            # Idle ones, but for those whose request has just arrived: that is answered.
            for conn in [c for c in self.connections.values() if c.idle_since is not None and not c.peek()]:
                self.close_idle(conn)
            self.room_freed.wait_for(lambda: not self.connections, timeout=grace)
        log.info("stopped")


def make_server(app: Callable, settings: Settings):
    """A server for any WSGI callable on settings.host and port; SettingsError for a host not of this machine."""
    # Then serve_forever(), and drain() from another thread. OSError if the port is taken.
    import http.server
    import socketserver

    class Handler(_StrictHandler, http.server.BaseHTTPRequestHandler):
        pass

    class Server(_BoundedServer, socketserver.ThreadingMixIn, http.server.HTTPServer):
        address_family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        RequestHandlerClass = Handler

        def server_bind(self) -> None:
            # HTTPServer's looks the host's name up (getfqdn), which can stall start-up where DNS is slow.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    try:
        return Server(app, settings)
    except OSError as err:
        if isinstance(err, socket.gaierror) or err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise SettingsError(f"{SETTING_NAMES['host']} is not an address of this machine") from None
        raise


def serve(app: Callable, settings: Settings, *, grace: float = 10.0) -> None:
    """Serve `app`, any WSGI callable, until SIGTERM, SIGINT or SIGHUP, then drain and return."""
    # From the main thread, which signals reach; a second signal ends the process at once.
    server = make_server(app, settings)
    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)]
    drains: list = []

    def stop(signum: int, frame) -> None:  # the main thread, inside serve_forever()
        for number in signals:
            signal.signal(number, signal.SIG_DFL)
        drains.append(threading.Thread(target=server.drain, args=(grace, signal.Signals(signum).name)))
        drains[0].start()

    for number in signals:
        signal.signal(number, stop)
    log.info("listening", extra={"fields": {"host": server.server_name, "port": server.server_port}})
    server.serve_forever()
    drains[0].join()  # serve_forever() returns only once the drain a signal started has called shutdown()


# --------------------------------------------------------------------------
# 6. Logging and main()


class LogfmtFormatter(logging.Formatter):
    """time, level and msg, then the record's fields (extra={"fields": {...}}), as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields = {"time": stamp, "level": record.levelname, "msg": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        # A value that is not a plain word is JSON-quoted, so no value can forge a line or a field.
        return " ".join(f"{key}={value if _PLAIN.fullmatch(value) else json.dumps(value)}"
                        for key, value in ((key, str(value)) for key, value in fields.items()))


_PLAIN = re.compile(r"[\w.:/@+-]+", re.ASCII)


def configure_logging(stream=None) -> None:
    """This server's log lines (logger "livekit_token_server", INFO and up) on `stream` or stderr, as logfmt."""
    # Once: calling it again changes nothing. Lines also reach the root logger's handlers:
    # where those print already, set the logger's level instead of calling this.
    if not log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(LogfmtFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def check_startup(settings: Settings) -> None:
    """Warn about what is risky in `settings`; raise SettingsError for what cannot work."""
    loopback = settings.host == "localhost" or getattr(_ip_address(settings.host), "is_loopback", False)
    if settings.dev_mode:
        log.warning("DEVELOPMENT MODE: no LIVEKIT_API_KEY and LIVEKIT_API_SECRET, so tokens are signed with LiveKit's "
                    "public development key and anyone who can reach this server can forge webhooks. " + (
                        "Listening on loopback only; SERVER_HOST=0.0.0.0 opens it to the local network (phones)."
                        if loopback else "Never expose this server."))
    if not settings.auth_secrets and not loopback:
        log.warning(f"/token is open: anyone who can reach port {settings.port} can get tokens. "
                    f"{SETTING_NAMES['auth_secrets']} closes it.")
    if settings.event_file:
        try:
            open(settings.event_file, "ab").close()
        except OSError as err:
            raise SettingsError(f"{SETTING_NAMES['event_file']} cannot be opened: {settings.event_file}: "
                                f"{err.strerror} (create its directory, writable by this user)") from None


def main(argv: Optional[list] = None) -> int:
    """`python3 server.py [--config PATH]`: 0 after a drain, 2 for a configuration error, 1 if it cannot listen."""
    parser = argparse.ArgumentParser(description="LiveKit token and webhook server")
    parser.add_argument("--config", metavar="PATH", help="config.ini file (environment variables override it)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = load_settings(os.environ, args.config)
        check_startup(settings)
        serve(make_app(settings), settings)
    except SettingsError as err:
        log.error("configuration error", extra={"fields": {"error": str(err)}})
        return 2
    except OSError as err:  # the port is taken or not allowed: that may pass, so not a configuration error
        log.error("cannot listen", extra={"fields": {"port": settings.port, "error": err.strerror}})
        return 1
    return 0


def __getattr__(name: str) -> App:
    """`server:application` for WSGI servers, built from the environment (not config.ini) when first asked for."""
    if name != "application":
        raise AttributeError(name)
    configure_logging()
    settings = load_settings(os.environ)
    check_startup(settings)
    # Kept, so every later `server.application` is this one app (one rate limiter, one dedupe memory).
    globals()["application"] = app = make_app(settings)
    return app


if __name__ == "__main__":
    sys.exit(main())
