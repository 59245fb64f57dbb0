"""Who may get a token, what it may hold, how often; and how webhooks are taken.

Bearer secrets on /token, the room and name policy, grants from settings, the
rate limit per client address and X-Forwarded-For; webhooks signed with the
API key, dedupe by event id, one event per room at a time (rooms share 64
locks), the event file; and the settings behind all of it. The app is called
directly under wsgiref's validator, on an injected clock that the tests step:
nothing here sleeps.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import threading
from pathlib import Path

import pytest
from livekit import api as sdk

import livekit_auth
from helpers import freeze_sdk_clock, webhook_authorization
from server import (
    client_address,
    MAX_NAME_LENGTH,
    HTTPError,
    Settings,
    SettingsError,
    TokenPolicy,
    WebhookDelivery,
    _ip_address,
    _rate_key,
    check_startup,
    load_settings,
    make_app,
)
from support_wsgi import Response, UnreadableInput, environ_for, run_app

# The vectors' secret is LiveKit's 6-byte dev secret, which PyJWT warns about.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

FIXED_NOW = 1735689600  # 2025-01-01T00:00:00Z, the vectors' clock
API_KEY = "APItestkey"
API_SECRET = "test-secret-that-must-never-leak-0123456789"
AUTH_1 = "s1-bearer-secret-for-the-backend-0123456789"
AUTH_2 = "s2-next-bearer-secret-for-rotation-abcdefgh"
KEYS = {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": API_SECRET}  # for load_settings
OTHER_KEY, OTHER_SECRET = (
    "wk1",
    "wk1-webhook-secret-0123456789abcdefghij",
)  # a key pair that is not the API key

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "livekit-vectors.json").read_text(encoding="utf-8")
)
VECTOR = {vector["name"]: vector for vector in VECTORS["vectors"]}

# What every JSON answer carries with the default settings (CORS "*").
COMMON_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Retry-After, WWW-Authenticate",
}


# --------------------------------------------------------------------------
# Helpers


class Clock:
    """Unix seconds that move only when a test steps them."""

    def __init__(self, now: float = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def settings(**overrides) -> Settings:
    # The rate limit is off unless a test is about it.
    values = dict(api_key=API_KEY, api_secret=API_SECRET, rate_per_minute=0)
    values.update(overrides)
    return Settings(**values)


def app_for(clock=lambda: FIXED_NOW, on_event=None, **overrides):
    return make_app(settings(**overrides), clock=clock, on_event=on_event)


def call(
    app,
    method: str = "POST",
    path: str = "/token",
    body: bytes = b"",
    *,
    headers: dict = None,
    remote_addr: str = "192.0.2.1",
    content_type: str = "application/json",
    content_length: str = None,
    wsgi_input=None,
) -> Response:
    """One request from `remote_addr`, under wsgiref's validator."""
    environ = environ_for(method, path, io.BytesIO(body) if wsgi_input is None else wsgi_input)
    environ.update(
        {
            "REMOTE_ADDR": remote_addr,
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        }
    )
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    response = run_app(app, environ)
    # No answer ever carries a secret of the server's.
    for secret in [app.settings.api_secret, *app.settings.auth_secrets]:
        assert secret.encode() not in response.body
        assert not any(secret in value for _, value in response.headers)
    return response


def post_token(app, value, **kwargs) -> Response:
    return call(app, "POST", "/token", json.dumps(value).encode(), **kwargs)


def openvidu(room: str = "Test Room", identity: str = "Participant42") -> dict:
    return {"roomName": room, "participantName": identity}


def error(message: str) -> dict:
    return {"errorMessage": message}


def verify_ours(token: str, now: float = FIXED_NOW) -> livekit_auth.Claims:
    return livekit_auth.TokenVerifier(API_KEY, API_SECRET).verify(token, now=now)


def event(event_id: str = "EV_1", room: str = "room-1", kind: str = "participant_joined") -> dict:
    value = {"event": kind, "room": {"sid": "RM_1", "name": room}, "createdAt": "1735689600"}
    if event_id is not None:
        value["id"] = event_id
    return value


def signed(
    body: bytes, *, key: str = API_KEY, secret: str = API_SECRET, now: float = FIXED_NOW
) -> str:
    """An Authorization value as LiveKit sends it: a JWT with the body's sha256, 5 minutes."""
    return webhook_authorization(key, secret, body, now=now, ttl=300)


def record(events: list):
    """An on_event handler that keeps each event's JSON object; it checks that the handler gets a WebhookEvent."""

    def on_event(value) -> None:
        assert type(value) is livekit_auth.WebhookEvent
        events.append(value.to_dict())

    return on_event


def deliver(
    app, value: dict, *, key: str = API_KEY, secret: str = API_SECRET, path: str = "/webhook"
) -> Response:
    """POST an event, signed at the app's current time."""
    body = json.dumps(value, separators=(",", ":")).encode()
    authorization = signed(body, key=key, secret=secret, now=app.policy.clock())
    return call(
        app,
        "POST",
        path,
        body,
        content_type="application/webhook+json",
        headers={"Authorization": authorization},
    )


OK = (200, {"status": "ok"})


# --------------------------------------------------------------------------
# 1. Bearer secrets on /token


def auth_app(**overrides):
    return app_for(auth_secrets=frozenset({AUTH_1, AUTH_2}), **overrides)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic " + base64.b64encode(f"user:{AUTH_1}".encode()).decode(),
        "Basic " + AUTH_1,
        "Token " + AUTH_1,
        AUTH_1,
        "Bearer wrong-secret-of-the-same-shape-0123456789",
        "Bearer " + AUTH_1 + "x",
        "Bearer x" + AUTH_1,
        "Bearer " + AUTH_1[:-1],
        "Bearer " + AUTH_1.upper(),
        "Bearer " + AUTH_1 + " " + AUTH_2,
        "Bearer " + AUTH_1 + AUTH_2,
        "Bearer ",
        "Bearer",
        "Bearer\t" + AUTH_1,
        "Bearer" + AUTH_1,
        "Bearer " + API_SECRET,
    ],
    ids=[
        "missing",
        "empty",
        "basic-with-the-secret-as-password",
        "basic-scheme-right-secret",
        "token-scheme",
        "secret-without-scheme",
        "wrong-secret",
        "secret-with-suffix",
        "secret-with-prefix",
        "secret-truncated",
        "secret-case-changed",
        "both-secrets-spaced",
        "both-secrets-joined",
        "empty-bearer",
        "scheme-only",
        "tab-after-scheme",
        "no-space-after-scheme",
        "the-api-secret",
    ],
)
def test_token_without_a_valid_bearer_secret_is_401_and_the_body_is_not_read(authorization):
    wsgi_input = UnreadableInput()
    headers = {} if authorization is None else {"Authorization": authorization}
    response = call(auth_app(), headers=headers, content_length="48", wsgi_input=wsgi_input)
    assert (response.status, response.json()) == (401, error("A valid bearer token is required"))
    assert dict(response.headers) == {
        **COMMON_HEADERS,
        "WWW-Authenticate": 'Bearer realm="token"',
        "Content-Length": str(len(response.body)),
    }
    assert not wsgi_input.touched


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/plain", b"x"),
        ("application/json", b"not json"),
        ("application/json", b'{"room_name":"r"}'),
    ],
    ids=["wrong-content-type", "bad-json", "standard-shape"],
)
def test_bearer_secret_is_checked_before_anything_in_the_request(content_type, body):
    response = call(auth_app(), body=body, content_type=content_type)
    assert (response.status, response.json()) == (401, error("A valid bearer token is required"))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + AUTH_1,
        "Bearer " + AUTH_2,
        "bearer " + AUTH_1,
        "BEARER " + AUTH_2,
        "Bearer  " + AUTH_1,
        "Bearer " + AUTH_1 + " ",
    ],
    ids=[
        "first-secret",
        "second-secret",
        "lowercase-scheme",
        "uppercase-scheme",
        "two-spaces",
        "trailing-space",
    ],
)
def test_either_bearer_secret_is_accepted(authorization):
    response = post_token(auth_app(), openvidu(), headers={"Authorization": authorization})
    assert response.status == 200
    claims = verify_ours(response.json()["token"])
    assert (claims.identity, claims.video.room) == ("Participant42", "Test Room")


def test_a_bearer_secret_the_settings_take_can_be_used():
    secret = "pässwort-für-den-backend-0123456789"
    try:
        loaded = load_settings({**KEYS, "TOKEN_AUTH_SECRETS": secret, "TOKEN_RATE_PER_MINUTE": "0"})
    except SettingsError:
        return  # refusing it at startup is a fix too
    # What a WSGI server puts in the environ for the UTF-8 bytes on the wire.
    header = ("Bearer " + secret).encode("utf-8").decode("latin-1")
    response = post_token(
        make_app(loaded, clock=lambda: FIXED_NOW), openvidu(), headers={"Authorization": header}
    )
    assert response.status == 200


def test_standard_shape_with_a_bearer_secret_is_201():
    response = post_token(
        auth_app(),
        {"room_name": "r", "participant_identity": "p"},
        headers={"Authorization": "Bearer " + AUTH_2},
    )
    assert response.status == 201
    assert verify_ours(response.json()["participant_token"]).identity == "p"


def test_preflight_needs_no_bearer_secret():
    response = call(
        auth_app(),
        "OPTIONS",
        "/token",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        content_type="",
        content_length="",
    )
    assert response.status == 204
    assert response.body == b""
    assert response.header("Access-Control-Allow-Headers") == "Authorization, Content-Type, *"
    assert response.header("WWW-Authenticate") is None


def test_bearer_secrets_do_not_apply_to_healthz_and_webhooks():
    events: list = []
    app = auth_app(on_event=record(events))
    response = call(app, "GET", "/healthz", content_type="", content_length="")
    assert (response.status, response.json()) == (200, {"status": "ok"})
    for path in ("/webhook", "/livekit/webhook"):
        response = deliver(app, event(event_id=None), path=path)
        assert (response.status, response.json()) == OK
    assert events == [event(event_id=None)] * 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer anything"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["no-header", "any-bearer", "basic"],
)
def test_without_auth_secrets_token_is_open(headers):
    response = post_token(app_for(), openvidu(), headers=headers)
    assert response.status == 200
    assert verify_ours(response.json()["token"]).identity == "Participant42"


# --------------------------------------------------------------------------
# 2. Room and name policy, grants from settings

ROOM_REFUSED = (403, error("This room is not open to tokens from this server"))


@pytest.mark.parametrize(
    "room,allowed",
    [
        ("lobby", True),
        ("team-a", True),
        ("team-standup", True),
        ("team-", False),  # issue 12: a prefix rule needs at least one character after it
        ("team-x", True),
        ("team-*", True),
        ("lobby2", False),
        ("Lobby", False),
        ("lobb", False),
        ("team", False),
        ("Team-a", False),
        (" team-a", False),
        ("xteam-a", False),
        ("*", False),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_rooms_exact_names_and_prefixes(room, allowed):
    app = app_for(rooms=frozenset({"lobby", "team-*"}))
    ov = post_token(app, openvidu(room=room))
    std = post_token(app, {"room_name": room, "participant_identity": "p"})
    if allowed:
        assert (ov.status, std.status) == (200, 201)
        assert verify_ours(ov.json()["token"]).video.room == room
        assert verify_ours(std.json()["participant_token"]).video.room == room
    else:
        assert (ov.status, ov.json()) == ROOM_REFUSED
        assert (std.status, std.json()) == ROOM_REFUSED


def test_standard_request_without_a_room_gets_a_random_room_that_the_policy_also_checks():
    body = {"participant_identity": "p"}
    response = post_token(app_for(rooms=frozenset({"lobby"})), body)
    assert (response.status, response.json()) == ROOM_REFUSED
    response = post_token(app_for(rooms=frozenset({"room-*"})), body)
    assert response.status == 201
    assert verify_ours(response.json()["participant_token"]).video.room.startswith("room-")


@pytest.mark.parametrize("room", ["any room", "x", "é/../"], ids=["spaces", "short", "odd"])
def test_star_alone_opens_every_room(room):
    assert post_token(app_for(rooms=frozenset({"*"})), openvidu(room=room)).status == 200


@pytest.mark.parametrize(
    "rooms",
    [{"*-team"}, {"te*am"}, {"**"}, {"a*b*"}, {"lobby", "*x"}, set()],
    ids=["star-first", "star-inside", "two-stars", "two-stars-apart", "one-bad-of-two", "empty"],
)
def test_star_anywhere_but_the_end_is_a_settings_error(rooms):
    with pytest.raises(SettingsError) as info:
        settings(rooms=frozenset(rooms))
    assert (
        str(info.value) == 'tokens.rooms (TOKEN_ROOMS) takes room names, or prefixes ending in "*"'
    )


NAME_FIELDS = {
    "roomName": lambda value: {"roomName": value, "participantName": "p"},
    "participantName": lambda value: {"roomName": "r", "participantName": value},
    "room_name": lambda value: {"room_name": value, "participant_identity": "p"},
    "participant_identity": lambda value: {"room_name": "r", "participant_identity": value},
    "participant_name": lambda value: {
        "room_name": "r",
        "participant_identity": "p",
        "participant_name": value,
    },
}


def _success(field: str) -> int:
    return 200 if field in ("roomName", "participantName") else 201


def test_max_name_length_is_256():
    assert MAX_NAME_LENGTH == 256


@pytest.mark.parametrize("field", list(NAME_FIELDS))
@pytest.mark.parametrize(
    "value,ok",
    [
        ("a" * MAX_NAME_LENGTH, True),
        ("é" * MAX_NAME_LENGTH, True),
        ("a" * (MAX_NAME_LENGTH + 1), False),
        ("é" * (MAX_NAME_LENGTH + 1), False),
        ("a" * 1000, False),
    ],
    ids=["at-limit", "at-limit-in-characters", "one-over", "one-over-in-characters", "far-over"],
)
def test_max_name_length_edges(field, value, ok):
    response = post_token(app_for(), NAME_FIELDS[field](value))
    if ok:
        assert response.status == _success(field)
    else:
        assert (response.status, response.json()) == (
            400,
            error(f"{field} must be at most 256 characters"),
        )


IDENTIFIER_MESSAGE = "{} must not contain control, invisible or private-use characters"
DISPLAY_NAME_MESSAGE = "{} must not contain control, separator or bidi-override characters"


def refused_characters(field: str) -> str:
    """The 400 message for a refused character in `field`: display names have their own rule."""
    return (DISPLAY_NAME_MESSAGE if field == "participant_name" else IDENTIFIER_MESSAGE).format(
        field
    )


ROOM_AND_IDENTITY_FIELDS = ["roomName", "participantName", "room_name", "participant_identity"]


@pytest.mark.parametrize("field", ROOM_AND_IDENTITY_FIELDS)
@pytest.mark.parametrize(
    "value", ["José", "a/b", "../x", "李"], ids=["accent", "slash", "dot-dot-slash", "cjk"]
)
def test_non_ascii_and_path_like_names_pass(field, value):
    response = post_token(app_for(), NAME_FIELDS[field](value))
    assert response.status == _success(field)


@pytest.mark.parametrize("field", list(NAME_FIELDS))
@pytest.mark.parametrize(
    "value",
    ["a\x00b", "a\nb", "a\rb", "tab\t", "\x1b[31m", "a\x7f", "a\x85b", "a\x9f"],
    ids=["nul", "lf", "cr", "tab", "escape", "del", "nel", "c1-last"],
)
def test_control_characters_are_always_refused(field, value):
    response = post_token(app_for(), NAME_FIELDS[field](value))
    assert (response.status, response.json()) == (400, error(refused_characters(field)))


# Issue 12: which characters names may hold. Room names and identities end up in URLs,
# recording paths and logs; display names are text people read.


def post_utf8(app, value) -> Response:
    """A token request as browsers send it: JSON in UTF-8, non-ASCII characters unescaped."""
    return call(app, "POST", "/token", json.dumps(value, ensure_ascii=False).encode("utf-8"))


# (character, id): refused in room names and identities.
IDENTIFIER_REFUSED = [
    ("\u202e", "U+202E-right-to-left-override"),
    ("\u202a", "U+202A-left-to-right-embedding"),
    ("\u2066", "U+2066-left-to-right-isolate"),
    ("\u2069", "U+2069-pop-directional-isolate"),
    ("\u200e", "U+200E-left-to-right-mark"),
    ("\u061c", "U+061C-arabic-letter-mark"),
    ("\u200b", "U+200B-zero-width-space"),
    ("\u200d", "U+200D-zero-width-joiner"),
    ("\u2060", "U+2060-word-joiner"),
    ("\u00ad", "U+00AD-soft-hyphen"),
    ("\ufeff", "U+FEFF-byte-order-mark"),
    ("\U000e0041", "U+E0041-tag-latin-a"),
    ("\U000e007f", "U+E007F-cancel-tag"),
    ("\ue000", "U+E000-private-use"),
    ("\U000f0000", "U+F0000-private-use-plane-15"),
    ("\U0010fffd", "U+10FFFD-private-use-plane-16"),
    ("\ufdd0", "U+FDD0-noncharacter"),
    ("\ufdef", "U+FDEF-last-of-the-noncharacter-block"),
    ("\ufffe", "U+FFFE-noncharacter"),
    ("\uffff", "U+FFFF-noncharacter"),
    ("\U0001fffe", "U+1FFFE-noncharacter"),
    ("\U0010ffff", "U+10FFFF-noncharacter"),
    ("\u2028", "U+2028-line-separator"),
    ("\u2029", "U+2029-paragraph-separator"),
    ("\u0085", "U+0085-next-line"),
    ("\u009f", "U+009F-last-C1-control"),
    ("\x00", "U+0000-NUL"),
    ("\x7f", "U+007F-DEL"),
]
# Accepted in room names and identities: the neighbours of refused ranges, and ordinary non-ASCII text.
IDENTIFIER_ACCEPTED = [
    ("Zoë 会議室 🎉", "letters-and-emoji"),
    ("e\u0301", "combining-accent"),
    ("\u2764\ufe0f", "U+FE0F-variation-selector-16"),
    ("\u202f", "U+202F-after-the-overrides"),
    ("\ufdcf", "U+FDCF-before-the-noncharacter-block"),
    ("\ufdf0", "U+FDF0-after-the-noncharacter-block"),
    ("\ufffd", "U+FFFD-replacement-character"),
    ("\U0001fffd", "U+1FFFD-before-a-plane-end"),
    ("\u00a0", "U+00A0-no-break-space"),
]
BIDI_CONTROLS = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
# (character, id): refused in display names (participant_name).
DISPLAY_NAME_REFUSED = [(char, f"U+{ord(char):04X}-bidi-control") for char in BIDI_CONTROLS] + [
    ("\u2028", "U+2028-line-separator"),
    ("\u2029", "U+2029-paragraph-separator"),
    ("\u0085", "U+0085-next-line"),
    ("\x00", "U+0000-NUL"),
    ("\n", "U+000A-line-feed"),
    ("é\x7f", "U+007F-DEL-beside-non-ASCII"),
    ("\ufdd0", "U+FDD0-noncharacter"),
    ("\ufdef", "U+FDEF-noncharacter"),
    ("\ufffe", "U+FFFE-noncharacter"),
    ("\uffff", "U+FFFF-noncharacter"),
    ("\U0001fffe", "U+1FFFE-noncharacter"),
    ("\U0010ffff", "U+10FFFF-noncharacter"),
]
# Accepted in display names: what real names and emoji are made of.
DISPLAY_NAME_ACCEPTED = [
    ("\U0001f468\u200d\U0001f469\u200d\U0001f467", "ZWJ-family-emoji"),
    ("\u2764\ufe0f", "VS16-red-heart"),
    (
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
        "tag-sequence-flag-of-England",
    ),
    ("\u200e", "U+200E-left-to-right-mark"),
    ("\u200f", "U+200F-right-to-left-mark"),
    ("\u061c", "U+061C-arabic-letter-mark"),
    ("می\u200cخواهم", "U+200C-zero-width-non-joiner-in-Persian"),
    ("\u202f", "U+202F-after-the-overrides"),
    ("\u2065\u206a", "beside-the-isolates"),
]


@pytest.mark.parametrize("field", ROOM_AND_IDENTITY_FIELDS)
@pytest.mark.parametrize(
    "char", [row[0] for row in IDENTIFIER_REFUSED], ids=[row[1] for row in IDENTIFIER_REFUSED]
)
def test_issue_12_identifiers_refuse_invisible_private_use_and_noncharacters(field, char):
    response = post_utf8(app_for(), NAME_FIELDS[field](f"a{char}b"))
    assert (response.status, response.json()) == (400, error(IDENTIFIER_MESSAGE.format(field)))


@pytest.mark.parametrize("field", ROOM_AND_IDENTITY_FIELDS)
@pytest.mark.parametrize(
    "text", [row[0] for row in IDENTIFIER_ACCEPTED], ids=[row[1] for row in IDENTIFIER_ACCEPTED]
)
def test_issue_12_identifiers_keep_ordinary_text(field, text):
    response = post_utf8(app_for(), NAME_FIELDS[field](f"a{text}b"))
    assert response.status == _success(field)
    token = response.json()["token" if _success(field) == 200 else "participant_token"]
    claims = verify_ours(token)
    assert f"a{text}b" in (claims.identity, claims.video.room)


@pytest.mark.parametrize(
    "char", [row[0] for row in DISPLAY_NAME_REFUSED], ids=[row[1] for row in DISPLAY_NAME_REFUSED]
)
def test_issue_12_display_names_refuse_controls_separators_noncharacters_and_bidi_overrides(char):
    response = post_utf8(app_for(), NAME_FIELDS["participant_name"](f"Alice {char} B"))
    assert (response.status, response.json()) == (
        400,
        error(DISPLAY_NAME_MESSAGE.format("participant_name")),
    )


@pytest.mark.parametrize(
    "text", [row[0] for row in DISPLAY_NAME_ACCEPTED], ids=[row[1] for row in DISPLAY_NAME_ACCEPTED]
)
def test_issue_12_display_names_keep_emoji_sequences_and_directional_marks(text):
    name = f"Alice {text} B"
    response = post_utf8(app_for(), NAME_FIELDS["participant_name"](name))
    assert response.status == 201
    assert verify_ours(response.json()["participant_token"]).name == name


@pytest.mark.parametrize(
    "text,accepted",
    [(row[0], row[0] == "\u2764\ufe0f") for row in DISPLAY_NAME_ACCEPTED[:4]],
    ids=[row[1] for row in DISPLAY_NAME_ACCEPTED[:4]],
)
def test_issue_12_what_display_names_keep_is_still_refused_in_identities_where_invisible(
    text, accepted
):
    # ZWJ, tags and LRM are Cf: fine to read, not in a room name or an identity. VS16 is Mn and passes both.
    response = post_utf8(app_for(), NAME_FIELDS["participant_identity"](text))
    if accepted:
        assert response.status == 201
    else:
        assert (response.status, response.json()) == (
            400,
            error(IDENTIFIER_MESSAGE.format("participant_identity")),
        )


@pytest.mark.parametrize(
    "text,identifier",
    [("a\ud800b", True), ("a\udfffb", True), ("a\ud800b", False), ("\udc00", False)],
    ids=[
        "high-in-identifier",
        "low-in-identifier",
        "high-in-display-name",
        "low-alone-in-display-name",
    ],
)
def test_issue_12_surrogates_are_refused_even_where_json_cannot_carry_them(text, identifier):
    # loads_object refuses an unpaired surrogate escape first ("has an unpaired surrogate"); the name check holds alone.
    policy = TokenPolicy(settings(), Clock())
    field = "participant_identity" if identifier else "participant_name"
    with pytest.raises(HTTPError) as info:
        policy.check_name(text, field, identifier=identifier)
    message = IDENTIFIER_MESSAGE if identifier else DISPLAY_NAME_MESSAGE
    assert (info.value.status, info.value.message) == (400, message.format(field))


def _nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "room_config",
    [{"a": float("nan")}, {"a": {1, 2}}, {"a": _nested_lists(100_000)}],
    ids=["nan", "set", "nested-100000-deep"],
)
def test_room_config_that_json_cannot_write_back_is_400(room_config):
    # read_json hands on only JSON nested at most 64 deep, so over HTTP this cannot happen;
    # TokenPolicy.token still answers 400, not 500, for a request built in code.
    policy = TokenPolicy(settings(client_fields=frozenset(("room_config",))), Clock())
    request = {"room_name": "r", "participant_identity": "p", "room_config": room_config}
    with pytest.raises(HTTPError) as info:
        policy.token(request, "room_name", "participant_identity")
    assert (info.value.status, info.value.message) == (400, "room_config must be an object")


def test_issue_12_an_unpaired_surrogate_escape_in_a_name_is_400():
    body = b'{"room_name":"r","participant_identity":"p","participant_name":"a\\ud800b"}'
    response = call(app_for(), "POST", "/token", body)
    assert (response.status, response.json()) == (
        400,
        error("Request body has an unpaired surrogate"),
    )


@pytest.mark.parametrize(
    "room,status",
    [("team-", 403), ("team-a", 200), ("team-é", 200), ("team-team-", 200), ("team", 403)],
    ids=[
        "prefix-alone",
        "one-character",
        "one-non-ascii-character",
        "prefix-twice",
        "shorter-than-the-prefix",
    ],
)
def test_issue_12_a_prefix_rule_needs_at_least_one_character_after_the_prefix(room, status):
    response = post_token(app_for(rooms=frozenset({"team-*"})), openvidu(room=room))
    if status == 403:
        assert (response.status, response.json()) == ROOM_REFUSED
    else:
        assert response.status == 200
        assert verify_ours(response.json()["token"]).video.room == room


DEFAULT_VIDEO = {
    "roomJoin": True,
    "room": "r",
    "canPublish": True,
    "canSubscribe": True,
    "canPublishData": True,
}


@pytest.mark.parametrize(
    "overrides,changes",
    [
        ({}, {}),
        ({"can_publish": False}, {"canPublish": False}),
        (
            {"can_publish_sources": frozenset({"microphone", "camera"})},
            {"canPublishSources": ["camera", "microphone"]},
        ),
        (
            {
                "can_publish_sources": frozenset(
                    {"screen_share_audio", "screen_share", "microphone", "camera"}
                )
            },
            {"canPublishSources": ["camera", "microphone", "screen_share", "screen_share_audio"]},
        ),
        ({"can_subscribe": False}, {"canSubscribe": False}),
        ({"can_publish_data": False}, {"canPublishData": False}),
        (
            {
                "can_publish": False,
                "can_publish_sources": frozenset({"camera", "microphone"}),
                "can_subscribe": False,
                "can_publish_data": False,
            },
            {
                "canPublish": False,
                "canPublishSources": ["camera", "microphone"],
                "canSubscribe": False,
                "canPublishData": False,
            },
        ),
    ],
    ids=[
        "defaults",
        "no-publish",
        "two-sources",
        "all-sources",
        "no-subscribe",
        "no-data",
        "all-at-once",
    ],
)
@pytest.mark.parametrize("shape", ["openvidu", "standard"])
def test_grants_from_settings_land_in_the_token(monkeypatch, overrides, changes, shape):
    app = app_for(**overrides)
    if shape == "openvidu":
        token = post_token(app, {"roomName": "r", "participantName": "p"}).json()["token"]
    else:
        token = post_token(app, {"room_name": "r", "participant_identity": "p"}).json()[
            "participant_token"
        ]
    expected = {**DEFAULT_VIDEO, **changes}
    claims = verify_ours(token)
    assert claims.payload["video"] == expected

    freeze_sdk_clock(monkeypatch, FIXED_NOW)
    video = sdk.TokenVerifier(API_KEY, API_SECRET).verify(token).video
    assert (video.room_join, video.room) == (True, "r")
    assert video.can_publish is expected["canPublish"]
    assert video.can_subscribe is expected["canSubscribe"]
    assert video.can_publish_data is expected["canPublishData"]
    assert video.can_publish_sources == expected.get("canPublishSources")
    # Grants no setting gives: never in a token.
    assert bool(video.can_update_own_metadata) is False
    assert bool(video.hidden) is False


GOLDEN_SETTINGS = {
    "defaults": {},
    "explicit-default-grants": dict(
        can_publish=True,
        can_publish_sources=frozenset(),
        can_subscribe=True,
        can_publish_data=True,
    ),
    "every-policy-on": dict(
        auth_secrets=frozenset({AUTH_1}),
        rooms=frozenset({"Test Room", "team-*"}),
        rate_per_minute=1,
        rate_burst=1,
        dedupe_seconds=0,
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN_SETTINGS))
def test_default_grants_give_the_sdk_tutorial_token_byte_for_byte(monkeypatch, name):
    # tutorial-token: the SDK's AccessToken for Participant42 in "Test Room", 6 h, at FIXED_NOW.
    vector = VECTOR["tutorial-token"]
    values = dict(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"], token_ttl=6 * 3600)
    app = make_app(Settings(**values, **GOLDEN_SETTINGS[name]), clock=lambda: vector["now"])
    response = post_token(app, openvidu(), headers={"Authorization": "Bearer " + AUTH_1})
    assert (response.status, response.json()) == (200, {"token": vector["jwt"]})
    freeze_sdk_clock(monkeypatch, vector["now"])
    claims = sdk.TokenVerifier(VECTORS["api_key"], VECTORS["api_secret"]).verify(vector["jwt"])
    assert claims.identity == "Participant42"


@pytest.mark.parametrize(
    "ttl", [1, 900, 6 * 3600, 30 * 24 * 3600], ids=["1s", "15min", "6h", "30d"]
)
def test_token_lifetime_is_the_ttl_setting(ttl):
    for body, field in (
        (openvidu(), "token"),
        ({"room_name": "r", "participant_identity": "p"}, "participant_token"),
    ):
        claims = verify_ours(post_token(app_for(token_ttl=ttl), body).json()[field])
        assert (claims.not_before, claims.expires_at - claims.not_before) == (FIXED_NOW, ttl)


# --------------------------------------------------------------------------
# 3. Rate limit per client address

RATE_LIMITED = (429, error("Too many token requests; try again later"))


def limited_app(clock, per_minute=60, burst=3, **overrides):
    return app_for(clock=clock, rate_per_minute=per_minute, rate_burst=burst, **overrides)


def statuses(app, count: int, **kwargs) -> list:
    return [post_token(app, openvidu(), **kwargs).status for _ in range(count)]


def test_burst_passes_then_429_with_retry_after_then_refills_with_the_clock():
    clock = Clock()
    app = limited_app(clock)
    assert statuses(app, 3) == [200, 200, 200]
    response = post_token(app, openvidu())
    assert (response.status, response.json()) == RATE_LIMITED
    assert dict(response.headers) == {
        **COMMON_HEADERS,
        "Retry-After": "1",
        "Content-Length": str(len(response.body)),
    }
    clock.step(0.5)
    response = post_token(app, openvidu())
    assert (response.status, response.header("Retry-After")) == (429, "1")  # 0.5 s, rounded up
    clock.step(0.5)
    assert statuses(app, 2) == [200, 429]
    clock.step(3)
    assert statuses(app, 4) == [200, 200, 200, 429]  # refilled to the burst, not beyond
    clock.step(3600)
    assert statuses(app, 4) == [200, 200, 200, 429]


@pytest.mark.parametrize(
    "per_minute,retry_after",
    [(60, "1"), (120, "1"), (30, "2"), (7, "9"), (1, "60")],
    ids=["1/s", "2/s", "1/2s", "7/min", "1/min"],
)
def test_retry_after_is_the_wait_for_one_token_rounded_up(per_minute, retry_after):
    app = limited_app(Clock(), per_minute=per_minute, burst=1)
    assert post_token(app, openvidu()).status == 200
    response = post_token(app, openvidu())
    assert (response.status, response.header("Retry-After")) == (429, retry_after)


def test_a_429_does_not_count_against_the_client():
    clock = Clock()
    app = limited_app(clock)
    assert statuses(app, 3 + 20) == [200] * 3 + [429] * 20
    clock.step(1)
    assert statuses(app, 2) == [200, 429]


@pytest.mark.parametrize(
    "body,headers,status",
    [
        (openvidu(), {}, 401),
        (openvidu(), {"Authorization": "Bearer wrong"}, 401),
        (openvidu(room="closed"), {"Authorization": "Bearer " + AUTH_1}, 403),
        ({"roomName": ""}, {"Authorization": "Bearer " + AUTH_1}, 400),
    ],
    ids=["no-bearer", "wrong-bearer", "closed-room", "bad-request"],
)
def test_refusals_other_than_429_count_against_the_client(body, headers, status):
    # The limit runs first, so guessing bearer secrets is limited too.
    app = limited_app(Clock(), auth_secrets=frozenset({AUTH_1}), rooms=frozenset({"Test Room"}))
    assert [post_token(app, body, headers=headers).status for _ in range(3)] == [status] * 3
    response = post_token(app, openvidu(), headers={"Authorization": "Bearer " + AUTH_1})
    assert (response.status, response.json()) == RATE_LIMITED


def test_healthz_preflight_and_webhooks_are_not_limited():
    events: list = []
    app = limited_app(Clock(), burst=1, on_event=record(events))
    assert statuses(app, 2) == [200, 429]
    for _ in range(3):
        assert call(app, "GET", "/healthz", content_type="", content_length="").status == 200
        assert call(app, "OPTIONS", "/token", content_type="", content_length="").status == 204
        assert deliver(app, event(event_id=None)).status == 200
    assert len(events) == 3


def test_separate_addresses_have_separate_buckets():
    app = limited_app(Clock())
    assert statuses(app, 4, remote_addr="198.51.100.1") == [200, 200, 200, 429]
    assert statuses(app, 4, remote_addr="198.51.100.2") == [200, 200, 200, 429]
    assert statuses(app, 1, remote_addr="198.51.100.1") == [429]


@pytest.mark.parametrize(
    "first,second,shared",
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),
        ("2001:db8:1:2::1", "2001:DB8:1:2:0:0:0:9", True),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("2001:db8:1:2::1", "2001:db9:1:2::1", False),
        ("::ffff:1.2.3.4", "1.2.3.4", True),
        ("::ffff:1.2.3.4", "1.2.3.5", False),
        ("1.2.3.4", "1.2.3.5", False),
        ("1.2.3.4", "::1.2.3.4", False),
    ],
    ids=[
        "same-64",
        "same-64-spelled-differently",
        "next-64",
        "other-prefix",
        "v4-mapped",
        "v4-mapped-other",
        "v4-neighbours",
        "v4-compatible-is-not-mapped",
    ],
)
def test_which_addresses_share_a_bucket(first, second, shared):
    app = limited_app(Clock())
    assert statuses(app, 3, remote_addr=first) == [200, 200, 200]
    assert statuses(app, 1, remote_addr=second) == [429 if shared else 200]


@pytest.mark.parametrize(
    "address,key",
    [
        ("1.2.3.4", "1.2.3.4"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8::1", "2001:db8::/64"),
        ("::1", "::/64"),
        ("not-an-address", "not-an-address"),
        ("x" * 100, "x" * 64),
        ("", ""),
    ],
    ids=["v4", "v4-mapped", "v6", "v6-upper", "v6-loopback", "not-an-address", "long", "empty"],
)
def test_rate_key(address, key):
    assert _rate_key(address) == key


def test_rate_limit_zero_turns_it_off():
    app = limited_app(Clock(), per_minute=0, burst=1)
    assert statuses(app, 20) == [200] * 20
    assert app.policy.buckets == {}  # nothing counted, nothing remembered


def rate_policy(per_minute: int, burst: int, max_clients: int = None) -> TokenPolicy:
    policy = TokenPolicy(settings(rate_per_minute=per_minute, rate_burst=burst), Clock())
    if max_clients is not None:
        policy.MAX_CLIENTS = max_clients  # the class's 10,000, made small enough to fill in a test
    return policy


def test_rate_limiter_memory_is_bounded_and_forgets_the_least_recently_seen():
    assert TokenPolicy.MAX_CLIENTS == 10_000
    policy = rate_policy(60, 3, max_clients=100)
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    for address in addresses:
        assert policy.rate_limit_wait(address, FIXED_NOW) == 0
        assert len(policy.buckets) <= 100
    assert list(policy.buckets) == addresses[-100:]


def test_rate_limiter_keeps_a_client_seen_recently():
    policy = rate_policy(60, 1, max_clients=3)
    assert policy.rate_limit_wait("busy", FIXED_NOW) == 0
    for i in range(10):
        assert policy.rate_limit_wait(f"other-{i}", FIXED_NOW) == 0
        assert policy.rate_limit_wait("busy", FIXED_NOW) == 1.0  # seen again: stays, still empty
    assert "busy" in policy.buckets


def test_rate_limiter_forgotten_client_starts_with_a_full_bucket():
    policy = rate_policy(60, 2, max_clients=2)
    assert [policy.rate_limit_wait("a", FIXED_NOW) for _ in range(3)] == [0, 0, 1.0]
    policy.rate_limit_wait("b", FIXED_NOW)
    policy.rate_limit_wait("c", FIXED_NOW)
    assert "a" not in policy.buckets
    assert [policy.rate_limit_wait("a", FIXED_NOW) for _ in range(3)] == [0, 0, 1.0]


def test_rate_limiter_clock_going_back_does_not_add_tokens():
    policy = rate_policy(60, 1)
    assert policy.rate_limit_wait("a", FIXED_NOW) == 0
    assert policy.rate_limit_wait("a", FIXED_NOW - 3600) == 1.0


# --------------------------------------------------------------------------
# 4. X-Forwarded-For

LONG_A, LONG_B, LONG_C = (
    "alpha-bearer-secret-0123456789-xyz",
    "bravo-bearer-secret-0123456789-xyz",
    "charlie-bearer-secret-0123456789-xyz",
)
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def environ_from(remote_addr: str, forwarded_for) -> dict:
    environ = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return environ


@pytest.mark.parametrize(
    "remote_addr,forwarded_for,client",
    [
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "", "10.0.0.5"),
        ("10.0.0.5", " , ", "10.0.0.5"),
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "1.1.1.1, 203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9,10.0.0.7", "203.0.113.9"),
        ("10.0.0.5", "1.1.1.1, 203.0.113.9, 10.0.0.7, 10.1.2.3", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 198.51.100.2", "198.51.100.2"),
        ("10.0.0.5", "203.0.113.9, ", "203.0.113.9"),
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),
        ("10.0.0.5", "unknown", "10.0.0.5"),
        ("fd00::5", "2001:db8::9", "2001:db8::9"),
        ("10.0.0.5", "2001:db8::9, fd00::7", "2001:db8::9"),
        ("198.51.100.1", "203.0.113.9", "198.51.100.1"),
        ("198.51.100.1", "203.0.113.9, 10.0.0.7", "198.51.100.1"),
        ("11.0.0.5", "203.0.113.9", "11.0.0.5"),
        # Hops are plain addresses: "[v6]", "v4:port" and "[v6]:port" are not one. Such a hop is
        # never a trusted proxy; reached by the walk, it names no client, and the peer is counted.
        ("10.0.0.5", "203.0.113.9:1234", "203.0.113.9"),
        ("10.0.0.5", "[2001:db8::9]", "2001:db8::9"),
        ("10.0.0.5", "[2001:db8::9]:443", "2001:db8::9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7:80", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, [fd00::7]", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, [fd00::7]:443", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9:", "10.0.0.5"),
        ("10.0.0.5", "203.0.113.9:123456", "10.0.0.5"),
        ("10.0.0.5", "[2001:db8::9]:", "10.0.0.5"),
        ("10.0.0.5", "[2001:db8::9", "10.0.0.5"),
        ("10.0.0.5", "2001:db8::9:443", "2001:db8::9:443"),
        ("10.0.0.5", "[203.0.113.9]:80", "203.0.113.9"),
        ("10.0.0.5", "[example.com]:80", "10.0.0.5"),
        ("10.0.0.5", "example.com:80", "10.0.0.5"),
        ("10.0.0.5", "203.0.113.9:0x50", "10.0.0.5"),
        ("10.0.0.5:1234", "203.0.113.9", "10.0.0.5:1234"),
        ("[fd00::5]", "203.0.113.9", "[fd00::5]"),
    ],
    ids=[
        "no-header",
        "empty-header",
        "blank-hops",
        "one-hop",
        "client-wrote-the-left-entry",
        "through-two-proxies",
        "no-spaces",
        "spoofed-left-of-two-proxies",
        "rightmost-untrusted-wins",
        "trailing-comma",
        "all-trusted-stops-at-the-last",
        "not-an-address",
        "ipv6-proxy",
        "ipv6-client-via-ipv6-proxy-hop",
        "untrusted-peer",
        "untrusted-peer-with-proxy-hop",
        "just-outside-the-network",
        "v4-with-port",
        "bracketed-v6",
        "bracketed-v6-with-port",
        "trusted-v4-with-port",
        "trusted-bracketed-v6",
        "trusted-bracketed-v6-with-port",
        "v4-with-empty-port-is-no-client",
        "v4-with-six-digit-port-is-no-client",
        "bracketed-v6-with-empty-port-is-no-client",
        "unclosed-bracket-is-no-client",
        "bare-v6-ending-in-a-group-is-that-address",
        "bracketed-v4-with-port",
        "bracketed-name-is-no-client",
        "name-with-port-is-no-client",
        "hex-port-is-no-client",
        "peer-with-port-is-not-trusted",
        "bracketed-peer-is-not-trusted",
    ],
)
def test_client_address_with_trusted_proxies(remote_addr, forwarded_for, client):
    assert client_address(environ_from(remote_addr, forwarded_for), PROXIES) == client


@pytest.mark.parametrize(
    "remote_addr,forwarded_for",
    [
        ("10.0.0.5", "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9"),
        ("198.51.100.1", "1.1.1.1, 203.0.113.9"),
    ],
    ids=["private-peer", "loopback-peer", "public-peer"],
)
def test_without_trusted_proxies_x_forwarded_for_is_ignored(remote_addr, forwarded_for):
    assert client_address(environ_from(remote_addr, forwarded_for), ()) == remote_addr


@pytest.mark.parametrize(
    "text,address",
    [
        ("203.0.113.9", ipaddress.IPv4Address("203.0.113.9")),
        ("2001:db8::9", ipaddress.IPv6Address("2001:db8::9")),
        ("2001:DB8:0:0:0:0:0:9", ipaddress.IPv6Address("2001:db8::9")),
        ("::ffff:10.0.0.5", ipaddress.IPv4Address("10.0.0.5")),
        ("::10.0.0.5", ipaddress.IPv6Address("::10.0.0.5")),
        ("[2001:db8::9]", None),
        ("203.0.113.9:1234", None),
        ("[2001:db8::9]:443", None),
        ("[::ffff:10.0.0.5]", None),
        (" 203.0.113.9", None),
        ("unknown", None),
        ("", None),
    ],
    ids=[
        "v4",
        "v6",
        "v6-long-form",
        "v4-mapped-is-v4",
        "v4-compatible-stays-v6",
        "bracketed-v6",
        "v4-with-port",
        "bracketed-v6-with-port",
        "bracketed-v4-mapped",
        "leading-space",
        "not-an-address",
        "empty",
    ],
)
def test_ip_address_reads_plain_addresses_only(text, address):
    assert _ip_address(text) == address
    assert type(_ip_address(text)) is type(address)


def test_ipv4_mapped_proxy_address_is_trusted_like_its_ipv4_address():
    assert client_address(environ_from("::ffff:10.0.0.5", "203.0.113.9"), PROXIES) == "203.0.113.9"


def test_rate_limit_follows_the_forwarded_client_through_a_trusted_proxy():
    app = limited_app(Clock(), trusted_proxies=PROXIES)
    via_proxy = dict(remote_addr="10.0.0.5")
    assert statuses(app, 4, headers={"X-Forwarded-For": "203.0.113.9"}, **via_proxy) == [
        200,
        200,
        200,
        429,
    ]
    assert statuses(app, 1, headers={"X-Forwarded-For": "203.0.113.10"}, **via_proxy) == [200]
    assert statuses(
        app, 1, headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.7"}, remote_addr="10.0.0.6"
    ) == [429]
    # The proxy's own bucket is untouched.
    assert statuses(app, 3, **via_proxy) == [200, 200, 200]


def test_without_trusted_proxies_everyone_behind_a_proxy_shares_its_bucket():
    app = limited_app(Clock())
    assert (
        statuses(app, 3, headers={"X-Forwarded-For": "203.0.113.9"}, remote_addr="10.0.0.5")
        == [200] * 3
    )
    assert statuses(
        app, 1, headers={"X-Forwarded-For": "203.0.113.10"}, remote_addr="10.0.0.5"
    ) == [429]


def test_client_cannot_pick_another_clients_bucket_through_a_trusted_proxy():
    app = limited_app(Clock(), trusted_proxies=PROXIES)
    victim = dict(remote_addr="10.0.0.5", headers={"X-Forwarded-For": "203.0.113.9"})
    # The attacker (198.51.100.7) writes the victim's address; the proxy appends the real one.
    for spoofed in ("203.0.113.9", "1.2.3.4", "203.0.113.9, 10.0.0.7", "unknown"):
        attacker = dict(
            remote_addr="10.0.0.5", headers={"X-Forwarded-For": f"{spoofed}, 198.51.100.7"}
        )
        statuses(app, 2, **attacker)
    assert statuses(app, 1, **attacker) == [429]  # all eight counted against the attacker
    assert statuses(app, 3, **victim) == [200, 200, 200]


def test_client_cannot_pick_another_clients_bucket_with_a_port_or_brackets():
    app = limited_app(Clock(), trusted_proxies=PROXIES)
    victim = dict(remote_addr="10.0.0.5", headers={"X-Forwarded-For": "203.0.113.9"})
    # The victim's address, or a trusted proxy's, in the forms proxies sometimes write: left of
    # the real client (198.51.100.7), which the proxy appends, they are never read.
    for spoofed in (
        "203.0.113.9:80",
        "[203.0.113.9]",
        "[::ffff:203.0.113.9]:443",
        "203.0.113.9, 10.0.0.7:80",
        "203.0.113.9, [fd00::7]",
    ):
        attacker = dict(
            remote_addr="10.0.0.5", headers={"X-Forwarded-For": f"{spoofed}, 198.51.100.7"}
        )
        statuses(app, 1, **attacker)
    assert statuses(app, 1, **attacker) == [429]  # all six counted against the attacker
    assert statuses(app, 3, **victim) == [200, 200, 200]
    # Sent straight to the server, they are ignored: the peer is not a trusted proxy.
    direct = [
        statuses(app, 1, remote_addr="198.51.100.8", headers={"X-Forwarded-For": spoofed})[0]
        for spoofed in ("10.0.0.7:80", "[fd00::7]", "203.0.113.9:80")
    ]
    assert direct == [200, 200, 200]
    assert statuses(app, 1, remote_addr="198.51.100.8") == [
        429
    ]  # all three counted against the peer


def test_direct_client_cannot_pick_a_bucket_with_x_forwarded_for():
    app = limited_app(Clock(), trusted_proxies=PROXIES)
    for spoofed in ("203.0.113.9", "1.2.3.4", "5.6.7.8", "9.9.9.9"):
        statuses(app, 1, remote_addr="198.51.100.7", headers={"X-Forwarded-For": spoofed})
    assert statuses(app, 1, remote_addr="198.51.100.7") == [429]
    assert statuses(app, 1, remote_addr="10.0.0.5", headers={"X-Forwarded-For": "203.0.113.9"}) == [
        200
    ]


# --------------------------------------------------------------------------
# 5. Webhooks: signing keys, dedupe, per-room order, the event file


@pytest.mark.parametrize(
    "key,secret,status,message",
    [
        (API_KEY, API_SECRET, 200, None),
        (OTHER_KEY, OTHER_SECRET, 401, "token signature does not match"),
        (API_KEY, OTHER_SECRET, 401, "token signature does not match"),
        (OTHER_KEY, API_SECRET, 401, "token issuer is not the API key that signed it"),
    ],
    ids=[
        "the-api-key",
        "another-key-pair",
        "the-api-key-with-another-secret",
        "another-key-with-the-api-secret",
    ],
)
def test_webhooks_verify_with_the_api_key_and_secret_only(key, secret, status, message):
    events: list = []
    response = deliver(app_for(on_event=record(events)), event(), key=key, secret=secret)
    if status == 200:
        assert (response.status, response.json()) == OK
        assert events == [event()]
    else:
        assert (response.status, response.json()) == (401, error(message))
        assert events == []


def dedupe_app(clock, events, **overrides):
    return app_for(clock=clock, on_event=record(events), **overrides)


def test_same_event_id_twice_is_taken_once():
    events: list = []
    app = dedupe_app(Clock(), events)
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1"), path="/livekit/webhook").status == 200
    assert deliver(app, event("EV_2")).status == 200
    assert [e["id"] for e in events] == ["EV_1", "EV_2"]


def webhook_facts(caplog) -> list:
    """What each request's line says of its webhook (the app writes the line when no runner does)."""
    lines = [
        record.fields
        for record in caplog.records
        if record.name == "livekit_token_server" and record.getMessage() == "request"
    ]
    return [
        {
            key: fields[key]
            for key in ("status", "event", "id", "room", "duplicate", "reason")
            if key in fields
        }
        for fields in lines
    ]


def test_each_event_is_logged_once_on_its_request_line(caplog):
    events: list = []
    app = dedupe_app(Clock(), events)
    joined = {
        **event("EV_1", kind="participant_joined"),
        "participant": {"identity": "alice", "name": "Alice"},
    }
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        assert deliver(app, joined).status == 200
        assert deliver(app, joined).status == 200
        assert (
            deliver(app, {"event": "egress_started", "egressInfo": {"roomName": "room-9"}}).status
            == 200
        )
        # A field of the wrong type is read before delivery: a 400, never logged as whatever it holds.
        response = deliver(app, {"event": "room_started", "room": {"name": 5}, "id": "EV_3"})
        assert (response.status, response.json()) == (
            400,
            error("event field name has the wrong type"),
        )
    # The room logged is the one the event is ordered by: an egress or ingress event names it in its info.
    assert webhook_facts(caplog) == [
        {"status": 200, "event": "participant_joined", "id": "EV_1", "room": "room-1"},
        {
            "status": 200,
            "event": "participant_joined",
            "id": "EV_1",
            "room": "room-1",
            "duplicate": "true",
        },
        {"status": 200, "event": "egress_started", "id": "", "room": "room-9"},
        {"status": 400, "reason": "event field name has the wrong type"},
    ]
    assert len(events) == 2


def test_a_repeat_with_a_bad_signature_is_still_401():
    events: list = []
    app = dedupe_app(Clock(), events)
    assert deliver(app, event("EV_1")).status == 200
    response = deliver(app, event("EV_1"), secret="forged-secret-0123456789abcdefghijklmn")
    assert (response.status, response.json()) == (401, error("token signature does not match"))


@pytest.mark.parametrize(
    "later,taken_again",
    [(0, False), (1, False), (9.5, False), (10, True), (11, True), (3600, True)],
    ids=["same-second", "1s", "9.5s", "at-the-window", "past-it", "an-hour"],
)
def test_event_id_is_remembered_for_dedupe_seconds(later, taken_again):
    clock, events = Clock(), []
    app = dedupe_app(clock, events, dedupe_seconds=10)
    assert deliver(app, event("EV_1")).status == 200
    clock.step(later)
    assert deliver(app, event("EV_1")).status == 200
    assert len(events) == (2 if taken_again else 1)


def test_event_taken_again_after_the_window_is_remembered_again():
    clock, events = Clock(), []
    app = dedupe_app(clock, events, dedupe_seconds=10)
    deliver(app, event("EV_1"))
    clock.step(10)
    deliver(app, event("EV_1"))
    clock.step(5)
    deliver(app, event("EV_1"))
    assert len(events) == 2


@pytest.mark.parametrize("event_id", [None, ""], ids=["no-id", "empty-id"])
def test_event_without_an_id_is_never_deduped(event_id):
    events: list = []
    app = dedupe_app(Clock(), events)
    for _ in range(3):
        assert deliver(app, event(event_id)).status == 200
    assert len(events) == 3


def test_dedupe_window_zero_never_dedupes():
    events: list = []
    app = dedupe_app(Clock(), events, dedupe_seconds=0)
    for _ in range(3):
        assert deliver(app, event("EV_1")).status == 200
    assert len(events) == 3


def test_failed_handler_is_500_and_the_retry_is_taken():
    calls: list = []

    def on_event(value):
        calls.append(value.id)
        if len(calls) == 1:
            raise RuntimeError("database is down: secret-ish detail")

    app = app_for(clock=Clock(), on_event=on_event)
    response = deliver(app, event("EV_1"))
    assert (response.status, response.json()) == (500, error("Webhook handler failed"))
    assert b"database" not in response.body
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert calls == ["EV_1", "EV_1"]


class CountingLock:
    """A room lock that counts the threads holding it or waiting for it, and announces each change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.users = 0  # guarded by `changed`

    def _count(self, step: int) -> None:
        with self.changed:
            self.users += step
            self.changed.notify_all()

    def __enter__(self):
        self._count(+1)
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        self._count(-1)

    def wait_for_users(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.users == count, timeout=2), (
                self.users,
                count,
            )


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def blocking_app(order: list, gate_id: str):
    """An app whose handler blocks on the event `gate_id` until `release` is set; its room locks count users."""
    entered, release = threading.Event(), threading.Event()

    def on_event(value):
        order.append(("start", value.id))
        if value.id == gate_id:
            entered.set()
            assert release.wait(2)
        order.append(("end", value.id))

    app = app_for(clock=Clock(), on_event=on_event)
    assert len(app.delivery.room_locks) == WebhookDelivery.ROOM_LOCKS == 64
    app.delivery.room_locks = [CountingLock() for _ in range(WebhookDelivery.ROOM_LOCKS)]
    return app, entered, release


def lock_of(app, room: str) -> CountingLock:
    """The lock a room's events are taken under: one of ROOM_LOCKS, by the hash of its name."""
    return app.delivery.room_locks[hash(room) % WebhookDelivery.ROOM_LOCKS]


def a_room(same_lock_as: str = None, other_lock_than: tuple = ()) -> str:
    """A room name on the lock of `same_lock_as`, or on none of the locks of `other_lock_than`."""

    # str hashes change from run to run (PYTHONHASHSEED): the rooms are picked in this process.
    def index(room):
        return hash(room) % WebhookDelivery.ROOM_LOCKS

    for n in range(2, 100_000):
        room = f"room-{n}"
        if room == same_lock_as:
            continue
        if same_lock_as is not None and index(room) == index(same_lock_as):
            return room
        if same_lock_as is None and index(room) not in {index(other) for other in other_lock_than}:
            return room
    raise AssertionError("no such room name")


def test_events_for_one_room_are_taken_one_at_a_time_in_order():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    responses: dict = {}
    first = in_thread(lambda: responses.update(first=deliver(app, event("EV_1", room="room-1"))))
    assert entered.wait(2)
    second = in_thread(lambda: responses.update(second=deliver(app, event("EV_2", room="room-1"))))
    lock_of(app, "room-1").wait_for_users(2)  # the second is queued on the room's lock
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert not first.is_alive() and not second.is_alive()
    assert order == [("start", "EV_1"), ("end", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]
    assert [responses[name].status for name in ("first", "second")] == [200, 200]
    assert all(lock.users == 0 and not lock.lock.locked() for lock in app.delivery.room_locks)


def test_a_repeat_waiting_behind_its_first_delivery_is_not_taken_again():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    responses: list = []
    first = in_thread(lambda: responses.append(deliver(app, event("EV_1"))))
    assert entered.wait(2)
    second = in_thread(lambda: responses.append(deliver(app, event("EV_1"))))
    lock_of(app, "room-1").wait_for_users(2)
    release.set()
    first.join(2)
    second.join(2)
    assert [response.status for response in responses] == [200, 200]
    assert order == [("start", "EV_1"), ("end", "EV_1")]


def test_events_for_rooms_on_different_locks_are_taken_at_the_same_time():
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    other = a_room(other_lock_than=("room-1",))
    first = in_thread(deliver, app, event("EV_1", room="room-1"))
    assert entered.wait(2)
    second = in_thread(deliver, app, event("EV_2", room=other))
    second.join(2)
    assert not second.is_alive()  # done while room-1's handler still blocks
    assert order == [("start", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]
    release.set()
    first.join(2)
    assert order[-1] == ("end", "EV_1")


def test_rooms_that_share_a_lock_are_taken_one_at_a_time():
    # The price of a fixed number of locks: now and then, two rooms wait for each other.
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    twin = a_room(same_lock_as="room-1")
    first = in_thread(deliver, app, event("EV_1", room="room-1"))
    assert entered.wait(2)
    second = in_thread(deliver, app, event("EV_2", room=twin))
    lock_of(app, "room-1").wait_for_users(2)
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert order == [("start", "EV_1"), ("end", "EV_1"), ("start", "EV_2"), ("end", "EV_2")]


def test_room_locks_stay_a_fixed_list_whatever_the_rooms():
    app = app_for(clock=Clock())
    locks = app.delivery.room_locks
    assert len(locks) == WebhookDelivery.ROOM_LOCKS == 64
    assert len({id(lock) for lock in locks}) == 64
    for n in range(200):
        assert deliver(app, event(f"EV_{n}", room=f"room-{n}")).status == 200
    assert app.delivery.room_locks is locks and len(locks) == 64
    assert not any(lock.locked() for lock in locks)


@pytest.mark.parametrize(
    "value",
    [
        lambda room, other: {"event": "egress_started", "egressInfo": {"roomName": room}},
        lambda room, other: {"event": "ingress_started", "ingressInfo": {"roomName": room}},
        lambda room, other: {
            "event": "track_published",
            "room": {"name": room},
            "egressInfo": {"roomName": other},
        },
    ],
    ids=["egress", "ingress", "room-first"],
)
def test_events_without_a_room_object_are_ordered_by_the_room_they_name(value):
    order: list = []
    app, entered, release = blocking_app(order, "EV_1")
    # On a lock of its own: a delivery that read "" or the other room would not queue behind the first.
    room = a_room(other_lock_than=("",))
    other = a_room(other_lock_than=("", room))
    first = in_thread(deliver, app, event("EV_1", room=room))
    assert entered.wait(2)
    second = in_thread(deliver, app, {**value(room, other), "id": "EV_2"})
    lock_of(app, room).wait_for_users(2)
    assert order == [("start", "EV_1")]
    release.set()
    first.join(2)
    second.join(2)
    assert order[2:] == [("start", "EV_2"), ("end", "EV_2")]


def read_lines(path: Path) -> list:
    text = path.read_bytes()
    assert text.endswith(b"\n")
    return [json.loads(line) for line in text.splitlines()]


def test_event_file_holds_each_accepted_event_once_in_order(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"earlier":"line"}\n')
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(path))
    sent = [
        event("EV_1"),
        event("EV_2", room="room-2"),
        event("EV_1"),
        event(None),
        event("EV_3", kind="room_finished"),
    ]
    for value in sent:
        assert deliver(app, value).status == 200
    expected = [
        event("EV_1"),
        event("EV_2", room="room-2"),
        event(None),
        event("EV_3", kind="room_finished"),
    ]
    assert read_lines(path) == [{"earlier": "line"}] + expected
    assert events == expected


def test_event_is_in_the_file_before_the_handler_runs(tmp_path):
    path = tmp_path / "events.jsonl"
    seen_in_file: list = []
    app = app_for(
        clock=Clock(),
        on_event=lambda value: seen_in_file.append(read_lines(path)),
        event_file=str(path),
    )
    deliver(app, event("EV_1"))
    assert seen_in_file == [[event("EV_1")]]


def test_event_file_line_escapes_non_ascii_and_line_breaks(tmp_path):
    path = tmp_path / "events.jsonl"
    app = app_for(clock=Clock(), event_file=str(path))
    value = event("EV_1", room="Zoë\n\u2028李")
    assert deliver(app, value).status == 200
    assert path.read_bytes().count(b"\n") == 1
    assert read_lines(path) == [value]


def test_handler_failure_leaves_the_event_in_the_file_once_per_attempt(tmp_path):
    # Documented as at-least-once: a consumer of the file deduplicates by id.
    path = tmp_path / "events.jsonl"
    failures = [RuntimeError("once")]

    def on_event(value):
        if failures:
            raise failures.pop()

    app = app_for(clock=Clock(), on_event=on_event, event_file=str(path))
    assert deliver(app, event("EV_1")).status == 500
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert read_lines(path) == [event("EV_1"), event("EV_1")]


def test_unwritable_event_file_is_503_and_the_handler_is_not_called(tmp_path):
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(tmp_path))  # a directory
    response = deliver(app, event("EV_1"))
    assert (response.status, response.json()) == (503, error("Could not store the event"))
    assert events == []


def test_event_file_failure_is_not_remembered_as_delivered(tmp_path):
    path = tmp_path / "later" / "events.jsonl"
    events: list = []
    app = app_for(clock=Clock(), on_event=record(events), event_file=str(path))
    assert deliver(app, event("EV_1")).status == 503
    path.parent.mkdir()
    assert deliver(app, event("EV_1")).status == 200
    assert deliver(app, event("EV_1")).status == 200
    assert events == [event("EV_1")]
    assert read_lines(path) == [event("EV_1")]


@pytest.mark.parametrize(
    "event_file", ["events.jsonl", "./events.jsonl", "var/lib/events.jsonl", "~/events.jsonl"]
)
def test_relative_event_file_is_a_settings_error(event_file):
    with pytest.raises(SettingsError) as info:
        settings(event_file=event_file)
    assert str(info.value) == "webhook.event_file (WEBHOOK_EVENT_FILE) must be an absolute path"


@pytest.mark.parametrize(
    "where,reason",
    [
        (lambda tmp: tmp, "Is a directory (give the path of a file, not a directory)"),
        (
            lambda tmp: tmp / "missing" / "events.jsonl",
            "No such file or directory (create its directory, writable by this user)",
        ),
    ],
    ids=["directory", "missing-directory"],
)
def test_check_startup_refuses_an_event_file_it_cannot_open(tmp_path, where, reason):
    path = str(where(tmp_path))
    with pytest.raises(SettingsError) as info:
        check_startup(settings(event_file=path))
    assert (
        str(info.value)
        == f"webhook.event_file (WEBHOOK_EVENT_FILE) cannot be opened: {path}: {reason}"
    )


def test_check_startup_accepts_an_event_file_it_can_open(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"kept\n")
    check_startup(settings(event_file=str(path)))
    assert path.read_bytes() == b"kept\n"


# --------------------------------------------------------------------------
# 6. load_settings for the policy and delivery settings


@pytest.mark.parametrize(
    "variable,text,field,value",
    [
        ("TOKEN_AUTH_SECRETS", f"{LONG_A} {LONG_B}", "auth_secrets", frozenset({LONG_A, LONG_B})),
        (
            "TOKEN_AUTH_SECRETS",
            f" {LONG_A},{LONG_B} ,{LONG_C} ",
            "auth_secrets",
            frozenset({LONG_A, LONG_B, LONG_C}),
        ),
        ("TOKEN_ROOMS", "team-* lobby", "rooms", frozenset({"team-*", "lobby"})),
        ("TOKEN_ROOMS", "*", "rooms", frozenset({"*"})),
        ("TOKEN_CAN_PUBLISH", "false", "can_publish", False),
        ("TOKEN_CAN_SUBSCRIBE", "false", "can_subscribe", False),
        ("TOKEN_CAN_PUBLISH_DATA", "false", "can_publish_data", False),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "camera,microphone",
            "can_publish_sources",
            frozenset({"camera", "microphone"}),
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "screen_share screen_share_audio",
            "can_publish_sources",
            frozenset({"screen_share", "screen_share_audio"}),
        ),
        ("TOKEN_RATE_PER_MINUTE", "0", "rate_per_minute", 0),
        ("TOKEN_RATE_PER_MINUTE", "1000000", "rate_per_minute", 1_000_000),
        ("TOKEN_RATE_BURST", "1", "rate_burst", 1),
        ("TOKEN_RATE_BURST", "1000000", "rate_burst", 1_000_000),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/8 192.168.1.1",
            "trusted_proxies",
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.1/32")),
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "fd00::/8",
            "trusted_proxies",
            (ipaddress.ip_network("fd00::/8"),),
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.1.2.3/8",
            "trusted_proxies",
            (ipaddress.ip_network("10.0.0.0/8"),),
        ),
        ("SERVER_TRUSTED_PROXIES", "", "trusted_proxies", ()),
        ("WEBHOOK_DEDUPE_SECONDS", "0", "dedupe_seconds", 0),
        ("WEBHOOK_DEDUPE_SECONDS", "604800", "dedupe_seconds", 604800),
        (
            "WEBHOOK_EVENT_FILE",
            "/var/lib/lk/events.jsonl",
            "event_file",
            "/var/lib/lk/events.jsonl",
        ),
        ("WEBHOOK_EVENT_FILE", "", "event_file", ""),
    ],
)
def test_setting_from_the_environment(variable, text, field, value):
    assert getattr(load_settings({**KEYS, variable: text}), field) == value


def test_defaults_of_the_policy_and_delivery_settings():
    loaded = load_settings(KEYS)
    expected = dict(
        auth_secrets=frozenset(),
        rooms=frozenset({"*"}),
        can_publish=True,
        can_publish_sources=frozenset(),
        can_subscribe=True,
        can_publish_data=True,
        rate_per_minute=300,
        rate_burst=60,
        trusted_proxies=(),
        dedupe_seconds=600,
        event_file="",
    )
    assert {field: getattr(loaded, field) for field in expected} == expected


@pytest.mark.parametrize(
    "variable,text,message",
    [
        ("TOKEN_CAN_PUBLISH", "no", "TOKEN_CAN_PUBLISH must be true or false"),
        ("TOKEN_CAN_SUBSCRIBE", "off", "TOKEN_CAN_SUBSCRIBE must be true or false"),
        ("TOKEN_CAN_PUBLISH_DATA", "0", "TOKEN_CAN_PUBLISH_DATA must be true or false"),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "camera,webcam",
            "tokens.can_publish_sources (TOKEN_CAN_PUBLISH_SOURCES) takes only: "
            "camera, microphone, screen_share, screen_share_audio",
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "CAMERA",
            "tokens.can_publish_sources (TOKEN_CAN_PUBLISH_SOURCES) takes only: "
            "camera, microphone, screen_share, screen_share_audio",
        ),
        (
            "TOKEN_RATE_PER_MINUTE",
            "1000001",
            "tokens.rate_per_minute (TOKEN_RATE_PER_MINUTE) must be from 0 to 1000000",
        ),
        (
            "TOKEN_RATE_PER_MINUTE",
            "1.5",
            "TOKEN_RATE_PER_MINUTE must be a whole number of at most 9 ASCII digits",
        ),
        ("TOKEN_RATE_BURST", "0", "tokens.rate_burst (TOKEN_RATE_BURST) must be from 1 to 1000000"),
        (
            "TOKEN_RATE_BURST",
            "1000001",
            "tokens.rate_burst (TOKEN_RATE_BURST) must be from 1 to 1000000",
        ),
        ("TOKEN_ROOMS", "", "TOKEN_ROOMS is set but lists nothing; remove it to get the default"),
        (
            "TOKEN_AUTH_SECRETS",
            "",
            "TOKEN_AUTH_SECRETS is set but lists nothing; remove it to get the default",
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            ",",
            "TOKEN_CAN_PUBLISH_SOURCES is set but lists nothing; remove it to get the default",
        ),
        (
            "TOKEN_ROOMS",
            "lobby te*am",
            'tokens.rooms (TOKEN_ROOMS) takes room names, or prefixes ending in "*"',
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/33",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "proxy.local",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/8,nope",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "WEBHOOK_DEDUPE_SECONDS",
            "604801",
            "webhook.dedupe_seconds (WEBHOOK_DEDUPE_SECONDS) must be from 0 to 604800",
        ),
        (
            "WEBHOOK_DEDUPE_SECONDS",
            "1.5",
            "WEBHOOK_DEDUPE_SECONDS must be a whole number of at most 9 ASCII digits",
        ),
        (
            "WEBHOOK_EVENT_FILE",
            "events.jsonl",
            "webhook.event_file (WEBHOOK_EVENT_FILE) must be an absolute path",
        ),
    ],
)
def test_bad_setting_is_an_error_naming_it(variable, text, message):
    with pytest.raises(SettingsError) as info:
        load_settings({**KEYS, variable: text})
    assert str(info.value) == message


def test_bad_flag_in_the_config_file_names_the_key(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[tokens]\ncan_publish = yes\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(KEYS, str(path))
    assert str(info.value) == f"{path}, line 2: tokens.can_publish must be true or false"


def test_every_new_setting_from_the_config_file(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(
        f"""
[server]
trusted_proxies = 10.0.0.0/8
[tokens]
auth_secrets = {AUTH_1} {AUTH_2}
rooms = team-*
can_publish = false
can_publish_sources = camera
can_subscribe = false
can_publish_data = false
rate_per_minute = 30
rate_burst = 10
[webhook]
dedupe_seconds = 60
event_file = {tmp_path / "events.jsonl"}
""",
        encoding="utf-8",
    )
    loaded = load_settings(KEYS, str(path))
    assert loaded == Settings(
        api_key="APIkey",
        api_secret=API_SECRET,
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
        auth_secrets=frozenset({AUTH_1, AUTH_2}),
        rooms=frozenset({"team-*"}),
        can_publish=False,
        can_publish_sources=frozenset({"camera"}),
        can_subscribe=False,
        can_publish_data=False,
        rate_per_minute=30,
        rate_burst=10,
        dedupe_seconds=60,
        event_file=str(tmp_path / "events.jsonl"),
    )


def test_settings_repr_shows_no_secret():
    loaded = load_settings(
        {
            **KEYS,
            "TOKEN_AUTH_SECRETS": f"{AUTH_1} {AUTH_2}",
        }
    )
    text = repr(loaded) + str(loaded)
    assert "rate_per_minute=300" in text  # the repr is there, just without secrets
    for secret in [API_SECRET, AUTH_1, AUTH_2]:
        assert secret not in text
    assert "auth_secrets" not in text


SHORT = "short-secret-of-31-characters-x"


def test_a_short_bearer_secret_is_refused_in_development_mode_too():
    # Development mode exempts only LiveKit's public pair, never a bearer secret.
    with pytest.raises(SettingsError) as info:
        load_settings({"TOKEN_AUTH_SECRETS": SHORT})
    assert str(info.value).startswith(
        "tokens.auth_secrets (TOKEN_AUTH_SECRETS): each must be at least 32 "
    )
    assert SHORT not in str(info.value)


def test_past_max_ids_the_oldest_event_id_is_forgotten_first(monkeypatch):
    monkeypatch.setattr(WebhookDelivery, "MAX_IDS", 2)
    events: list = []
    app = dedupe_app(Clock(), events)
    for event_id in ("EV_1", "EV_2", "EV_3", "EV_1", "EV_3"):
        assert deliver(app, event(event_id)).status == 200
    # EV_1 was forgotten to make room for EV_3, so its repeat is taken again; EV_3's is not.
    assert [e["id"] for e in events] == ["EV_1", "EV_2", "EV_3", "EV_1"]
    assert list(app.delivery.taken) == ["EV_3", "EV_1"]
