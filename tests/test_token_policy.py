"""Token policy (server.py, section 3): who may get a token, what it may hold, and how often.

Bearer secrets on /token, the room and name policy, grants from settings, the
rate limit per client address and X-Forwarded-For. The app is called directly
under wsgiref's validator, on an injected clock that the tests step: nothing
here sleeps. The settings behind the policy are tested in test_settings.py.
"""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest
from livekit import api as sdk

from helpers import (
    API_KEY,
    API_SECRET,
    AUTH_1,
    AUTH_2,
    FIXED_NOW,
    OK,
    VECTOR,
    VECTORS,
    Clock,
    app_for,
    call,
    deliver,
    error,
    event,
    freeze_sdk_clock,
    record,
    settings,
    verify_ours,
)
from server import (
    client_address,
    MAX_NAME_LENGTH,
    HTTPError,
    Settings,
    SettingsError,
    TokenPolicy,
    _ip_address,
    _rate_key,
    load_settings,
    make_app,
)
from support_wsgi import Response, UnreadableInput

# The vectors' secret is LiveKit's 6-byte dev secret, which PyJWT warns about.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


KEYS = {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": API_SECRET}  # for load_settings

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


def post_token(app, value, **kwargs) -> Response:
    return call(app, "POST", "/token", json.dumps(value).encode(), **kwargs)


def openvidu(room: str = "Test Room", identity: str = "Participant42") -> dict:
    return {"roomName": room, "participantName": identity}


# --------------------------------------------------------------------------
# Bearer secrets on /token


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
        return  # refusing it at startup would do too
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
# Room and name policy, grants from settings

ROOM_REFUSED = (403, error("This room is not open to tokens from this server"))


@pytest.mark.parametrize(
    "room,allowed",
    [
        ("lobby", True),
        ("team-a", True),
        ("team-standup", True),
        ("team-", False),  # a prefix rule needs at least one character after it
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


# Which characters names may hold. Room names and identities end up in URLs,
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
def test_identifiers_refuse_invisible_private_use_and_noncharacters(field, char):
    response = post_utf8(app_for(), NAME_FIELDS[field](f"a{char}b"))
    assert (response.status, response.json()) == (400, error(IDENTIFIER_MESSAGE.format(field)))


@pytest.mark.parametrize("field", ROOM_AND_IDENTITY_FIELDS)
@pytest.mark.parametrize(
    "text", [row[0] for row in IDENTIFIER_ACCEPTED], ids=[row[1] for row in IDENTIFIER_ACCEPTED]
)
def test_identifiers_keep_ordinary_text(field, text):
    response = post_utf8(app_for(), NAME_FIELDS[field](f"a{text}b"))
    assert response.status == _success(field)
    token = response.json()["token" if _success(field) == 200 else "participant_token"]
    claims = verify_ours(token)
    assert f"a{text}b" in (claims.identity, claims.video.room)


@pytest.mark.parametrize(
    "char", [row[0] for row in DISPLAY_NAME_REFUSED], ids=[row[1] for row in DISPLAY_NAME_REFUSED]
)
def test_display_names_refuse_controls_separators_noncharacters_and_bidi_overrides(char):
    response = post_utf8(app_for(), NAME_FIELDS["participant_name"](f"Alice {char} B"))
    assert (response.status, response.json()) == (
        400,
        error(DISPLAY_NAME_MESSAGE.format("participant_name")),
    )


@pytest.mark.parametrize(
    "text", [row[0] for row in DISPLAY_NAME_ACCEPTED], ids=[row[1] for row in DISPLAY_NAME_ACCEPTED]
)
def test_display_names_keep_emoji_sequences_and_directional_marks(text):
    name = f"Alice {text} B"
    response = post_utf8(app_for(), NAME_FIELDS["participant_name"](name))
    assert response.status == 201
    assert verify_ours(response.json()["participant_token"]).name == name


@pytest.mark.parametrize(
    "text,accepted",
    [(row[0], row[0] == "\u2764\ufe0f") for row in DISPLAY_NAME_ACCEPTED[:4]],
    ids=[row[1] for row in DISPLAY_NAME_ACCEPTED[:4]],
)
def test_what_display_names_keep_is_refused_in_identities_where_invisible(text, accepted):
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
def test_surrogates_are_refused_even_where_json_cannot_carry_them(text, identifier):
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
def test_a_prefix_rule_needs_at_least_one_character_after_the_prefix(room, status):
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
# Rate limit per client address

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
# X-Forwarded-For

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
