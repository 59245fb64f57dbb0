"""The WSGI application (server.py, section 2): called directly on wsgiref test environs,
under wsgiref's validator.

Every response goes through `call`, which also checks what must hold for any
answer: no API secret or traceback in it, no Access-Control-Allow-Credentials,
no repeated header, and a Content-Length that matches the body. The few webhooks
sent with helpers.deliver (an event signed at the app's clock) go through
helpers.call instead, which checks that no secret of the server's is in the answer.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import logging
import re
import sys
import time

import pytest
from livekit import api as sdk

import livekit_auth
from helpers import (
    API_KEY,
    API_SECRET,
    FIXED_NOW,
    OK,
    VECTOR,
    VECTORS,
    Clock,
    app_for,
    dedupe_app,
    deliver,
    error,
    event,
    record,
    settings,
    verify_ours,
    webhook_authorization,
)
import server
from server import (
    MAX_TOKEN_BODY_BYTES,
    MAX_WEBHOOK_BODY_BYTES,
    OPTIONAL_CLIENT_FIELDS,
    LogfmtFormatter,
    Settings,
    make_app,
)
from support_wsgi import Response, UnreadableInput, environ_for, run_app
from vectors import body_sha256

ALL_CLIENT_FIELDS = frozenset(OPTIONAL_CLIENT_FIELDS)
WEBHOOK_VECTORS = ["server-webhook", "sdk-webhook"]


# --------------------------------------------------------------------------
# Helpers


def webhook_app(vector_name: str, events: list, **overrides):
    vector = VECTOR[vector_name]
    return make_app(
        settings(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"], **overrides),
        clock=lambda: vector["now"],
        on_event=events.append,
    )


AUTO = object()


def call(
    app,
    method: str = "POST",
    path: str = "/token",
    body: bytes = b"",
    *,
    content_type="application/json",
    content_length=AUTO,
    headers: dict = None,
    wsgi_input=None,
    validate: bool = True,
    environ: dict = None,
) -> Response:
    """One request; `content_type`/`content_length` None leaves the header out; `environ` adds CGI variables."""
    environ = {
        **environ_for(method, path, io.BytesIO(body) if wsgi_input is None else wsgi_input),
        **(environ or {}),
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if content_length is AUTO:
        content_length = str(len(body))
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    response = run_app(app, environ, validate=validate)

    # What holds for every answer.
    names = [name.lower() for name, _ in response.headers]
    assert len(names) == len(set(names)), response.headers
    assert "access-control-allow-credentials" not in names
    secret = app.settings.api_secret
    assert secret.encode() not in response.body
    assert not any(secret in value for _, value in response.headers)
    assert b"Traceback" not in response.body and b'File "' not in response.body
    if response.status != 204 and method != "HEAD":
        assert response.header("Content-Length") == str(len(response.body))
    return response


def post_json(app, value, **kwargs) -> Response:
    return call(app, "POST", "/token", json.dumps(value).encode(), **kwargs)


def verify_sdk(token: str):
    # The SDK checks exp/nbf against the real clock: mint these with clock=time.time.
    return sdk.TokenVerifier(API_KEY, API_SECRET).verify(token)


def signed_webhook(body: bytes, now: float = FIXED_NOW, ttl: int = 300) -> str:
    return webhook_authorization(API_KEY, API_SECRET, body, now=now, ttl=ttl)


# --------------------------------------------------------------------------
# POST /token, OpenVidu shape: 200 {"token"}


def test_openvidu_token_has_exactly_the_grants_asked_for():
    response = post_json(app_for(), {"roomName": "Test Room", "participantName": "Participant42"})
    assert response.status == 200
    body = response.json()
    assert list(body) == ["token"]
    claims = verify_ours(body["token"])
    assert claims.identity == "Participant42"
    assert claims.video.room_join is True
    assert claims.video.room == "Test Room"
    assert claims.not_before == FIXED_NOW
    assert claims.expires_at == FIXED_NOW + 900
    assert claims.payload == {
        "video": {
            "roomJoin": True,
            "room": "Test Room",
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
        },
        "sub": "Participant42",
        "iss": API_KEY,
        "nbf": FIXED_NOW,
        "exp": FIXED_NOW + 900,
    }


def test_openvidu_token_equals_the_sdk_golden_vector_byte_for_byte():
    # tutorial-token: the SDK's AccessToken with identity Participant42, room
    # "Test Room", default ttl (6 h), devkey/secret, at now = 1735689600.
    vector = VECTOR["tutorial-token"]
    app = make_app(
        Settings(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"], token_ttl=6 * 3600),
        clock=lambda: vector["now"],
    )
    # With the default rate limit, from a client address as every WSGI server gives one.
    response = post_json(
        app,
        {"roomName": "Test Room", "participantName": "Participant42"},
        environ={"REMOTE_ADDR": "192.0.2.1"},
    )
    assert (response.status, response.json()) == (200, {"token": vector["jwt"]})


def test_token_with_the_rate_limit_on_and_no_remote_addr_is_served():
    app = app_for(rate_per_minute=60, rate_burst=1)
    body = {"roomName": "Test Room", "participantName": "Participant42"}
    assert [post_json(app, body).status for _ in range(2)] == [
        200,
        429,
    ]  # one bucket for "no address"


@pytest.mark.parametrize("ttl", [1, 60, 86400], ids=["1s", "1min", "1day"])
def test_openvidu_token_lifetime_is_the_configured_ttl(ttl):
    response = post_json(app_for(token_ttl=ttl), {"roomName": "r", "participantName": "p"})
    claims = verify_ours(response.json()["token"])
    assert (claims.not_before, claims.expires_at) == (FIXED_NOW, FIXED_NOW + ttl)


def test_openvidu_token_verifies_with_the_sdk():
    response = post_json(
        app_for(clock=time.time), {"roomName": "Test Room", "participantName": "Participant42"}
    )
    assert response.status == 200
    token = response.json()["token"]
    claims = verify_sdk(token)
    assert claims.identity == "Participant42"
    assert claims.video.room_join is True
    assert claims.video.room == "Test Room"
    ours = verify_ours(token, now=time.time())
    assert ours.expires_at - ours.not_before == 900


def test_openvidu_shape_ignores_unknown_keys():
    body = {
        "roomName": "r",
        "participantName": "p",
        "extra": 1,
        "roomConfig": {"x": 1},
        "canPublish": False,
    }
    response = post_json(app_for(), body)
    assert response.status == 200
    assert list(response.json()) == ["token"]
    claims = verify_ours(response.json()["token"])
    assert (claims.identity, claims.video.room, claims.room_config) == ("p", "r", None)
    assert claims.video.can_publish is True


OPENVIDU_BAD_FIELDS = [
    ({"participantName": "p"}, "missing-roomName"),
    ({"roomName": "r"}, "missing-participantName"),
    ({}, "empty-object"),
    ({"roomName": "", "participantName": "p"}, "empty-roomName"),
    ({"roomName": "r", "participantName": ""}, "empty-participantName"),
    ({"roomName": 1, "participantName": "p"}, "number-roomName"),
    ({"roomName": "r", "participantName": 42}, "number-participantName"),
    ({"roomName": None, "participantName": "p"}, "null-roomName"),
    ({"roomName": "r", "participantName": None}, "null-participantName"),
    ({"roomName": ["r"], "participantName": "p"}, "list-roomName"),
    ({"roomName": "r", "participantName": ["p"]}, "list-participantName"),
    ({"roomName": True, "participantName": "p"}, "bool-roomName"),
    ({"roomName": "r", "participantName": False}, "bool-participantName"),
    ({"roomName": {"name": "r"}, "participantName": "p"}, "object-roomName"),
    ({"roomname": "r", "participantname": "p"}, "wrong-case-keys"),
]


@pytest.mark.parametrize(
    "body", [row[0] for row in OPENVIDU_BAD_FIELDS], ids=[row[1] for row in OPENVIDU_BAD_FIELDS]
)
def test_openvidu_bad_fields_are_400(body):
    response = post_json(app_for(), body)
    assert (response.status, response.json()) == (
        400,
        error("roomName and participantName are required"),
    )


REFUSED_CHARACTER = object()  # the message depends on the field: see name_message()
NAME_ROWS = [
    ("x" * 257, "must be at most 256 characters", "257-chars"),
    ("\x00", REFUSED_CHARACTER, "NUL"),
    ("a\nb", REFUSED_CHARACTER, "newline"),
    ("a\tb", REFUSED_CHARACTER, "tab"),
    ("a\x1bb", REFUSED_CHARACTER, "escape"),
    ("a\x7fb", REFUSED_CHARACTER, "DEL"),
    ("a\x85b", REFUSED_CHARACTER, "C1-NEL"),
    ("a\u2028b", REFUSED_CHARACTER, "line-separator"),
    ("a\u202eb", REFUSED_CHARACTER, "right-to-left-override"),
    ("a\ufffeb", REFUSED_CHARACTER, "noncharacter"),
]


def name_message(field: str, message) -> str:
    """The 400 message for a bad name: display names (participant_name) and identifiers refuse different sets."""
    if message is not REFUSED_CHARACTER:
        return f"{field} {message}"
    if field == "participant_name":
        return f"{field} must not contain control, separator or bidi-override characters"
    return f"{field} must not contain control, invisible or private-use characters"


@pytest.mark.parametrize("field", ["roomName", "participantName"])
@pytest.mark.parametrize(
    "value,message", [row[:2] for row in NAME_ROWS], ids=[row[2] for row in NAME_ROWS]
)
def test_openvidu_bad_names_are_400(field, value, message):
    body = {"roomName": "r", "participantName": "p", field: value}
    response = post_json(app_for(), body)
    assert (response.status, response.json()) == (400, error(name_message(field, message)))


@pytest.mark.parametrize(
    "value",
    ["x" * 256, "Test Room", "Zoë Œ 会議室 🎉", "a-b_c.d@e", " leading and trailing "],
    ids=["256-chars", "space", "non-ascii", "punctuation", "outer-spaces"],
)
def test_openvidu_names_that_must_pass(value):
    response = post_json(app_for(), {"roomName": value, "participantName": value})
    assert response.status == 200
    claims = verify_ours(response.json()["token"])
    assert (claims.identity, claims.video.room) == (value, value)


# --------------------------------------------------------------------------
# POST /token, LiveKit standard shape: 201 {"server_url", "participant_token"}


def test_standard_token():
    app = app_for(livekit_url="wss://lk.example.com")
    response = post_json(app, {"room_name": "room-1", "participant_identity": "alice"})
    assert response.status == 201
    body = response.json()
    assert list(body) == ["server_url", "participant_token"]
    assert body["server_url"] == "wss://lk.example.com"
    claims = verify_ours(body["participant_token"])
    assert (claims.identity, claims.video.room, claims.video.room_join) == ("alice", "room-1", True)
    assert (claims.not_before, claims.expires_at) == (FIXED_NOW, FIXED_NOW + 900)
    assert (claims.name, claims.metadata, claims.attributes, claims.room_config) == (
        "",
        "",
        {},
        None,
    )


def test_standard_token_verifies_with_the_sdk():
    app = app_for(clock=time.time)
    response = post_json(app, {"room_name": "room-1", "participant_identity": "alice"})
    assert response.status == 201
    claims = verify_sdk(response.json()["participant_token"])
    assert (claims.identity, claims.video.room, claims.video.room_join) == ("alice", "room-1", True)


@pytest.mark.parametrize(
    "body,room,identity",
    [
        ({"room_name": "r"}, "r", r"user-[0-9a-f]{8}"),
        ({"participant_identity": "u"}, r"room-[0-9a-f]{8}", "u"),
        ({"room_name": "", "participant_identity": ""}, r"room-[0-9a-f]{8}", r"user-[0-9a-f]{8}"),
        ({"participant_name": "Alice"}, r"room-[0-9a-f]{8}", r"user-[0-9a-f]{8}"),
    ],
    ids=["no-identity", "no-room", "both-empty", "neither"],
)
def test_standard_token_fills_in_random_room_and_identity(body, room, identity):
    response = post_json(app_for(), body)
    assert response.status == 201
    claims = verify_ours(response.json()["participant_token"])
    assert re.fullmatch(room, claims.video.room)
    assert re.fullmatch(identity, claims.identity)


def test_standard_token_random_names_differ_between_requests():
    tokens = [
        post_json(app_for(), {"participant_name": "A"}).json()["participant_token"]
        for _ in range(2)
    ]
    first, second = (verify_ours(token) for token in tokens)
    assert first.identity != second.identity
    assert first.video.room != second.video.room


def test_standard_token_participant_name_is_allowed_by_default():
    response = post_json(
        app_for(), {"room_name": "r", "participant_identity": "u", "participant_name": "Alice A."}
    )
    assert response.status == 201
    assert verify_ours(response.json()["participant_token"]).name == "Alice A."


FORBIDDEN_ROWS = [
    (
        {"participant_metadata": "m"},
        frozenset(("participant_name",)),
        "participant_metadata",
        "default-metadata",
    ),
    (
        {"participant_attributes": {"a": "b"}},
        frozenset(("participant_name",)),
        "participant_attributes",
        "default-attributes",
    ),
    ({"room_config": {}}, frozenset(("participant_name",)), "room_config", "default-room_config"),
    ({"participant_name": "n"}, frozenset(), "participant_name", "none-name"),
    ({"participant_metadata": ""}, frozenset(), "participant_metadata", "none-empty-metadata"),
    pytest.param(
        {"room_config": None},
        frozenset(("participant_name",)),
        "room_config",
        id="default-null-room_config",
    ),
    pytest.param(
        {"participant_metadata": 5},
        frozenset(),
        "participant_metadata",
        id="none-number-metadata",
    ),
    (
        {"participant_metadata": "m"},
        frozenset(("room_config",)),
        "participant_metadata",
        "other-field-allowed",
    ),
]


@pytest.mark.parametrize(
    "extra,client_fields,field",
    [
        row if isinstance(row, type(pytest.param())) else pytest.param(*row[:3], id=row[3])
        for row in FORBIDDEN_ROWS
    ],
)
def test_standard_fields_not_allowed_by_settings_are_403(extra, client_fields, field):
    body = {"room_name": "r", "participant_identity": "u", **extra}
    response = post_json(app_for(client_fields=client_fields), body)
    assert (response.status, response.json()) == (
        403,
        error(f"{field} may not be set by clients on this server"),
    )


RICH_REQUEST = {
    "room_name": "room-1",
    "participant_identity": "alice",
    "participant_name": "Alice A.",
    "participant_metadata": '{"role":"host"}',
    "participant_attributes": {"team": "red", "seat": "3"},
    "room_config": {"agents": [{"agent_name": "a"}]},
}


def test_standard_token_with_every_client_field():
    response = post_json(app_for(client_fields=ALL_CLIENT_FIELDS), RICH_REQUEST)
    assert response.status == 201
    claims = verify_ours(response.json()["participant_token"])
    assert claims.identity == "alice"
    assert claims.video.room == "room-1"
    assert claims.name == "Alice A."
    assert claims.metadata == '{"role":"host"}'
    assert claims.attributes == {"team": "red", "seat": "3"}
    # Passed through as received, not converted to camelCase.
    assert claims.room_config.to_dict() == {"agents": [{"agent_name": "a"}]}
    assert claims.payload["roomConfig"] == {"agents": [{"agent_name": "a"}]}


def test_standard_token_with_every_client_field_verifies_with_the_sdk():
    response = post_json(app_for(clock=time.time, client_fields=ALL_CLIENT_FIELDS), RICH_REQUEST)
    assert response.status == 201
    claims = verify_sdk(response.json()["participant_token"])
    assert (claims.identity, claims.name, claims.metadata) == (
        "alice",
        "Alice A.",
        '{"role":"host"}',
    )
    assert claims.attributes == {"team": "red", "seat": "3"}
    assert claims.video.room == "room-1"
    assert len(claims.room_config.agents) == 1
    assert claims.room_config.agents[0].agent_name == "a"


ATTRIBUTES_MESSAGE = "participant_attributes must be an object of strings"
STANDARD_TYPE_ROWS = [
    ({"room_name": 5}, "room_name must be a string", "room_name-number"),
    ({"room_name": None}, "room_name must be a string", "room_name-null"),
    ({"room_name": ["r"]}, "room_name must be a string", "room_name-list"),
    ({"participant_identity": True}, "participant_identity must be a string", "identity-bool"),
    ({"participant_identity": {}}, "participant_identity must be a string", "identity-object"),
    ({"participant_name": 1}, "participant_name must be a string", "name-number"),
    ({"participant_name": None}, "participant_name must be a string", "name-null"),
    (
        {"participant_metadata": {"role": "host"}},
        "participant_metadata must be a string",
        "metadata-object",
    ),
    ({"participant_metadata": False}, "participant_metadata must be a string", "metadata-bool"),
    ({"participant_attributes": "team=red"}, ATTRIBUTES_MESSAGE, "attributes-string"),
    ({"participant_attributes": ["a"]}, ATTRIBUTES_MESSAGE, "attributes-list"),
    ({"participant_attributes": None}, ATTRIBUTES_MESSAGE, "attributes-null"),
    ({"participant_attributes": {"a": 1}}, ATTRIBUTES_MESSAGE, "attributes-number-value"),
    ({"participant_attributes": {"a": None}}, ATTRIBUTES_MESSAGE, "attributes-null-value"),
    ({"participant_attributes": {"a": {"b": "c"}}}, ATTRIBUTES_MESSAGE, "attributes-nested"),
    ({"room_config": []}, "room_config must be an object", "room_config-list"),
    ({"room_config": "{}"}, "room_config must be an object", "room_config-string"),
    ({"room_config": None}, "room_config must be an object", "room_config-null"),
    ({"room_config": 0}, "room_config must be an object", "room_config-number"),
]


@pytest.mark.parametrize(
    "extra,message",
    [row[:2] for row in STANDARD_TYPE_ROWS],
    ids=[row[2] for row in STANDARD_TYPE_ROWS],
)
def test_standard_wrong_types_are_400(extra, message):
    body = {"room_name": "r", "participant_identity": "u", **extra}
    response = post_json(app_for(client_fields=ALL_CLIENT_FIELDS), body)
    assert (response.status, response.json()) == (400, error(message))


@pytest.mark.parametrize("field", ["room_name", "participant_identity", "participant_name"])
@pytest.mark.parametrize(
    "value,message", [row[:2] for row in NAME_ROWS], ids=[row[2] for row in NAME_ROWS]
)
def test_standard_bad_names_are_400(field, value, message):
    body = {"room_name": "r", "participant_identity": "u", field: value}
    response = post_json(app_for(client_fields=ALL_CLIENT_FIELDS), body)
    assert (response.status, response.json()) == (400, error(name_message(field, message)))


@pytest.mark.parametrize(
    "body",
    [
        {"room_name": "r", "extra": 1},
        {"room_name": "r", "roomConfig": {}},
        {"room_name": "r", "participant_kind": "agent"},
        {"participant_identity": "u", "can_publish": False},
        {"room_name": "r", "Room_Name": "s"},
    ],
    ids=["extra", "camelCase-roomConfig", "participant_kind", "can_publish", "case-variant"],
)
def test_standard_shape_unknown_keys_are_400(body):
    response = post_json(app_for(client_fields=ALL_CLIENT_FIELDS), body)
    assert (response.status, response.json()) == (
        400,
        error("Request has a field that is not part of LiveKit's token request"),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"roomName": "r", "participantName": "p", "room_name": "r"},
        {"roomName": "r", "participant_identity": "u"},
        {"participantName": "p", "participant_name": "n"},
    ],
    ids=["both-rooms", "roomName-identity", "participantName-name"],
)
def test_mixing_the_two_shapes_is_400(body):
    response = post_json(app_for(), body)
    assert (response.status, response.json()) == (
        400,
        error("Request mixes roomName/participantName with LiveKit's snake_case fields"),
    )


def _room_config_nested(depth: int) -> bytes:
    return b'{"room_name":"r","room_config":{"a":' + b"[" * depth + b"]" * depth + b"}}"


def test_room_config_nested_near_the_recursion_limit_is_never_500():
    app = app_for(client_fields=ALL_CLIENT_FIELDS)
    limit = sys.getrecursionlimit()
    statuses = {}
    for depth in range(max(limit - 200, 1), limit + 20):
        statuses[depth] = call(app, "POST", "/token", _room_config_nested(depth)).status
    assert {depth: status for depth, status in statuses.items() if status not in (201, 400)} == {}


# --------------------------------------------------------------------------
# POST /token: body, Content-Type and Content-Length


def _padded(size: int) -> bytes:
    """A valid OpenVidu request of exactly `size` bytes."""
    head = b'{"roomName":"r","participantName":"p","pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


NOT_UTF8 = "Request body is not UTF-8"
NOT_JSON = "Request body is not valid JSON"
DUPLICATE_KEY = "Request body has a duplicate key"
NAN = "Request body has NaN or Infinity"
SURROGATE = "Request body has an unpaired surrogate"
TOO_DEEP = "Request body is nested too deeply"
NOT_AN_OBJECT = "Request body is not a JSON object"
REQUEST_HEAD = b'{"roomName":"r","participantName":"p","x":'


def _nested(depth: int) -> bytes:
    """A valid request whose "x" nests `depth` arrays: the whole document is depth + 1 deep."""
    return REQUEST_HEAD + b"[" * depth + b"]" * depth + b"}"


# (body, exact errorMessage, id): each rule loads_object enforces says which one failed.
NOT_A_JSON_OBJECT = [
    (b"roomName=r&participantName=p", NOT_JSON, "form-encoded"),
    (b"", NOT_JSON, "empty"),
    (b"   ", NOT_JSON, "whitespace"),
    (b"[]", NOT_AN_OBJECT, "array"),
    (b'[{"roomName":"r","participantName":"p"}]', NOT_AN_OBJECT, "array-of-request"),
    (b'"roomName"', NOT_AN_OBJECT, "string"),
    (b"null", NOT_AN_OBJECT, "null"),
    (b"1", NOT_AN_OBJECT, "number"),
    (b'{"roomName":"r","participantName":"p"', NOT_JSON, "truncated"),
    (b'{"roomName":"r","participantName":"p"} {}', NOT_JSON, "trailing-data"),
    (b'{"roomName":"r\xff","participantName":"p"}', NOT_UTF8, "invalid-utf8"),
    (b'{"roomName":"\xed\xa0\x80","participantName":"p"}', NOT_UTF8, "utf8-encoded-surrogate"),
    ('{"roomName":"r","participantName":"p"}'.encode("utf-16"), NOT_UTF8, "utf16-bom"),
    (
        '{"roomName":"r","participantName":"p"}'.encode("utf-16-le"),
        NOT_JSON,
        "utf16-le",
    ),  # ASCII and NULs: UTF-8
    ('{"roomName":"r","participantName":"p"}'.encode("utf-32"), NOT_UTF8, "utf32"),
    (b'\xef\xbb\xbf{"roomName":"r","participantName":"p"}', NOT_JSON, "utf8-bom"),
    (b'{"roomName":"\\ud800","participantName":"p"}', SURROGATE, "lone-surrogate-escape"),
    (b'{"roomName":"\\udfff","participantName":"p"}', SURROGATE, "lone-low-surrogate-escape"),
    (
        b'{"roomName":"\\ude00\\ud83d","participantName":"p"}',
        SURROGATE,
        "surrogates-in-the-wrong-order",
    ),
    (
        b'{"roomName":"r","participantName":"p","participantName":"q"}',
        DUPLICATE_KEY,
        "duplicate-key",
    ),
    (
        b'{"roomName":"r","participantName":"p","x":{"a":1,"a":1}}',
        DUPLICATE_KEY,
        "nested-duplicate-key",
    ),
    (REQUEST_HEAD + b"NaN}", NAN, "NaN"),
    (REQUEST_HEAD + b"Infinity}", NAN, "Infinity"),
    (REQUEST_HEAD + b"-Infinity}", NAN, "minus-Infinity"),
    (REQUEST_HEAD + b"1e400}", NAN, "overflows-to-infinity"),
    (_nested(64), TOO_DEEP, "65-deep"),
    (_nested(7000), TOO_DEEP, "nested-7000-deep"),
    (REQUEST_HEAD + b"1" * 5000 + b"}", NOT_JSON, "integer-5000-digits"),
    (b"{'roomName':'r','participantName':'p'}", NOT_JSON, "single-quotes"),
    (b'{"roomName":"r","participantName":"p",}', NOT_JSON, "trailing-comma"),
]


@pytest.mark.parametrize(
    "body,message",
    [row[:2] for row in NOT_A_JSON_OBJECT],
    ids=[row[2] for row in NOT_A_JSON_OBJECT],
)
def test_body_that_is_not_a_strict_json_object_is_400_naming_the_rule(body, message):
    assert len(body) <= MAX_TOKEN_BODY_BYTES
    response = call(app_for(), "POST", "/token", body)
    assert (response.status, response.json()) == (400, error(message))


@pytest.mark.parametrize(
    "body",
    [
        _nested(63),
        REQUEST_HEAD + b"1e308}",
        b'{"roomName":"\\ud83d\\ude00","participantName":"p"}',
        REQUEST_HEAD + b"1" * 4300 + b"}",
    ],
    ids=["64-deep", "largest-finite-exponent", "surrogate-pair", "integer-4300-digits"],
)
def test_json_just_inside_each_rule_is_taken(body):
    response = call(app_for(), "POST", "/token", body)
    assert response.status == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ],
    ids=["plain", "charset", "charset-no-space", "upper-case"],
)
def test_json_content_types_are_accepted(content_type):
    response = post_json(
        app_for(), {"roomName": "r", "participantName": "p"}, content_type=content_type
    )
    assert response.status == 200


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "application/json-patch+json",
        "text/json",
        "multipart/form-data; boundary=x",
    ],
    ids=["missing", "empty", "text-plain", "form", "jsonx", "json-patch", "text-json", "multipart"],
)
def test_other_content_types_are_415(content_type):
    response = post_json(
        app_for(), {"roomName": "r", "participantName": "p"}, content_type=content_type
    )
    assert (response.status, response.json()) == (
        415,
        error("Content-Type must be application/json"),
    )


def test_missing_content_length_is_411():
    response = post_json(app_for(), {"roomName": "r", "participantName": "p"}, content_length=None)
    assert (response.status, response.json()) == (411, error("Content-Length is required"))


# int() takes all of these (gunicorn #2977, werkzeug #2716); so does wsgiref's validator.
LENIENT_INT_LENGTHS = [
    ("+38", "plus"),
    ("3_8", "underscore"),
    (" 38", "leading-space"),
    ("38 ", "trailing-space"),
    ("\u0663\u0668", "arabic-indic-digits"),
    ("\uff13\uff18", "fullwidth-digits"),
]
# int() refuses these, and so would the validator: called without it.
INVALID_LENGTHS = [
    ("-1", "negative"),
    ("abc", "letters"),
    ("38.0", "decimal"),
    ("0x26", "hex"),
    ("38, 38", "repeated"),
    ("1" * 13, "13-digits"),
]


@pytest.mark.parametrize(
    "length", [row[0] for row in LENIENT_INT_LENGTHS], ids=[row[1] for row in LENIENT_INT_LENGTHS]
)
def test_content_length_that_int_would_take_is_400(length):
    body = b'{"roomName":"r","participantName":"p"}'
    assert len(body) == 38
    response = call(app_for(), "POST", "/token", body, content_length=length)
    assert (response.status, response.json()) == (
        400,
        error("Content-Length must be a decimal number"),
    )


@pytest.mark.parametrize(
    "length", [row[0] for row in INVALID_LENGTHS], ids=[row[1] for row in INVALID_LENGTHS]
)
def test_content_length_that_is_not_a_number_is_400(length):
    body = b'{"roomName":"r","participantName":"p"}'
    response = call(app_for(), "POST", "/token", body, content_length=length, validate=False)
    assert (response.status, response.json()) == (
        400,
        error("Content-Length must be a decimal number"),
    )


def test_content_length_with_leading_zeros_is_a_number():
    body = b'{"roomName":"r","participantName":"p"}'
    response = call(app_for(), "POST", "/token", body, content_length="0038")
    assert response.status == 200


def test_body_shorter_than_content_length_is_400():
    response = call(
        app_for(), "POST", "/token", b'{"roomName":"r","participantName":"p"}', content_length="100"
    )
    assert (response.status, response.json()) == (
        400,
        error("Request body is shorter than Content-Length"),
    )


def test_body_of_exactly_the_limit_is_read():
    body = _padded(MAX_TOKEN_BODY_BYTES)
    assert len(body) == 16 * 1024
    assert call(app_for(), "POST", "/token", body).status == 200


@pytest.mark.parametrize(
    "length", [str(16 * 1024 + 1), str(10**6), "999999999999"], ids=["limit+1", "1MB", "12-digits"]
)
def test_token_body_over_16_kib_is_413_and_not_read(length):
    wsgi_input = UnreadableInput()
    response = call(app_for(), "POST", "/token", content_length=length, wsgi_input=wsgi_input)
    assert (response.status, response.json()) == (
        413,
        error("Request body must be at most 16384 bytes"),
    )
    assert not wsgi_input.touched


def test_an_unpaired_surrogate_escape_in_a_name_is_400():
    body = b'{"room_name":"r","participant_identity":"p","participant_name":"a\\ud800b"}'
    response = call(app_for(), "POST", "/token", body)
    assert (response.status, response.json()) == (
        400,
        error("Request body has an unpaired surrogate"),
    )


# --------------------------------------------------------------------------
# POST /webhook and /livekit/webhook


WEBHOOK_PATHS = ["/webhook", "/livekit/webhook"]


@pytest.mark.parametrize("path", WEBHOOK_PATHS)
@pytest.mark.parametrize("vector_name", WEBHOOK_VECTORS)
@pytest.mark.parametrize(
    "prefix", ["", "Bearer ", "bearer "], ids=["bare", "Bearer", "bearer-lower"]
)
def test_webhook_golden_vectors_are_accepted(path, vector_name, prefix):
    vector = VECTOR[vector_name]
    events: list = []
    response = call(
        webhook_app(vector_name, events),
        "POST",
        path,
        vector["body"].encode(),
        content_type="application/webhook+json",
        headers={"Authorization": prefix + vector["jwt"]},
    )
    assert (response.status, response.json()) == (200, {"status": "ok"})
    assert [event.to_dict() for event in events] == [json.loads(vector["body"])]


def test_webhook_without_on_event_is_200():
    vector = VECTOR["server-webhook"]
    app = make_app(
        Settings(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"]),
        clock=lambda: vector["now"],
    )
    response = call(
        app, "POST", "/webhook", vector["body"].encode(), headers={"Authorization": vector["jwt"]}
    )
    assert (response.status, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", WEBHOOK_PATHS)
@pytest.mark.parametrize("authorization", [None, ""], ids=["missing", "empty"])
def test_webhook_without_authorization_is_401(path, authorization):
    vector = VECTOR["server-webhook"]
    events: list = []
    headers = {} if authorization is None else {"Authorization": authorization}
    response = call(
        webhook_app("server-webhook", events),
        "POST",
        path,
        vector["body"].encode(),
        headers=headers,
    )
    assert (response.status, response.json()) == (401, error("Authorization header is required"))
    assert events == []


def _tamper(body: str) -> bytes:
    # The vectors' note: a space after a comma must fail with a hash mismatch.
    return body.replace(",", ", ", 1).encode()


def _flip_last_byte(body: str) -> bytes:
    raw = body.encode()
    return raw[:-1] + (b"]" if raw[-1:] == b"}" else b"}")


WEBHOOK_401_ROWS = [
    ("server-webhook", "space-after-comma", 0, "body does not match the signed sha256"),
    ("sdk-webhook", "space-after-comma", 0, "body does not match the signed sha256"),
    ("server-webhook", "last-byte", 0, "body does not match the signed sha256"),
    ("server-webhook", "trailing-newline", 0, "body does not match the signed sha256"),
    ("server-webhook", "none", 3600, "token has expired"),
    ("sdk-webhook", "none", 3600, "token has expired"),
    ("server-webhook", "none", -3600, "token is not valid yet (nbf)"),
]
_BODY_CHANGES = {
    "none": lambda body: body.encode(),
    "space-after-comma": _tamper,
    "last-byte": _flip_last_byte,
    "trailing-newline": lambda body: body.encode() + b"\n",
}


@pytest.mark.parametrize(
    "vector_name,change,clock_offset,message",
    WEBHOOK_401_ROWS,
    ids=[f"{row[0]}-{row[1]}-{row[2]:+d}s" for row in WEBHOOK_401_ROWS],
)
def test_webhook_that_fails_verification_is_401(vector_name, change, clock_offset, message):
    vector = VECTOR[vector_name]
    events: list = []
    app = make_app(
        Settings(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"]),
        clock=lambda: vector["now"] + clock_offset,
        on_event=events.append,
    )
    body = _BODY_CHANGES[change](vector["body"])
    response = call(app, "POST", "/webhook", body, headers={"Authorization": vector["jwt"]})
    assert (response.status, response.json()) == (401, error(message))
    assert events == []


@pytest.mark.parametrize(
    "authorization,message",
    [
        ("not-a-jwt", "token must have three dot-separated segments"),
        ("Bearer ", "token must have three dot-separated segments"),
        ("Basic ZGV2a2V5OnNlY3JldA==", "token must have three dot-separated segments"),
    ],
    ids=["garbage", "bearer-nothing", "basic-auth"],
)
def test_webhook_with_a_malformed_authorization_is_401(authorization, message):
    vector = VECTOR["server-webhook"]
    events: list = []
    response = call(
        webhook_app("server-webhook", events),
        "POST",
        "/webhook",
        vector["body"].encode(),
        headers={"Authorization": authorization},
    )
    assert (response.status, response.json()) == (401, error(message))
    assert events == []


def test_webhook_signed_with_another_secret_is_401():
    vector = VECTOR["server-webhook"]
    events: list = []
    app = make_app(
        Settings(api_key=VECTORS["api_key"], api_secret="another-secret-of-32-characters-or-more"),
        clock=lambda: vector["now"],
        on_event=events.append,
    )
    response = call(
        app, "POST", "/webhook", vector["body"].encode(), headers={"Authorization": vector["jwt"]}
    )
    assert (response.status, response.json()) == (401, error("token signature does not match"))
    assert events == []


def test_webhook_authorized_by_a_token_from_our_token_endpoint_is_401():
    events: list = []
    app = app_for(on_event=events.append)
    token = post_json(app, {"roomName": "r", "participantName": "p"}).json()["token"]
    body = b'{"event":"room_started","room":{"name":"r"}}'
    response = call(app, "POST", "/webhook", body, headers={"Authorization": token})
    assert (response.status, response.json()) == (
        401,
        error("token has no sha256 claim: not a webhook token"),
    )
    assert events == []


NOT_AN_EVENT = [
    (b"[]", "body is not a JSON object", "array"),
    (b'{"x":1}', 'body has no "event" string', "no-event"),
    (b'{"event":""}', 'body has no "event" string', "empty-event"),
    (b'{"event":1}', 'body has no "event" string', "number-event"),
    (b'{"event":null}', 'body has no "event" string', "null-event"),
    (b"not json", "body is not a JSON object", "not-json"),
    (b"", "body is not a JSON object", "empty-body"),
    (
        b'{"event":"room_started","event":"room_finished"}',
        "body is not a JSON object",
        "duplicate-key",
    ),
    (b'{"event":"room_started","x":NaN}', "body is not a JSON object", "NaN"),
    (
        b'{"event":"room_started","x":' + b"1" * 5000 + b"}",
        "body is not a JSON object",
        "integer-5000-digits",
    ),
    (
        b'{"event":"room_started","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "body is not a JSON object",
        "nested-100000-deep",
    ),
    ('{"event":"room_started"}'.encode("utf-16"), "body is not a JSON object", "utf16"),
]


@pytest.mark.parametrize(
    "body,message", [row[:2] for row in NOT_AN_EVENT], ids=[row[2] for row in NOT_AN_EVENT]
)
def test_webhook_with_a_signed_body_that_is_not_an_event_is_400(body, message):
    events: list = []
    app = app_for(on_event=events.append)
    response = call(app, "POST", "/webhook", body, headers={"Authorization": signed_webhook(body)})
    assert (response.status, response.json()) == (400, error(message))
    assert events == []


def test_webhook_signed_by_us_is_accepted():
    events: list = []
    body = b'{"event":"room_finished","room":{"name":"r"},"id":"EV_1"}'
    app = app_for(on_event=events.append)
    response = call(app, "POST", "/webhook", body, headers={"Authorization": signed_webhook(body)})
    assert (response.status, response.json()) == (200, {"status": "ok"})
    assert [event.to_dict() for event in events] == [
        {"event": "room_finished", "room": {"name": "r"}, "id": "EV_1"}
    ]


@pytest.mark.parametrize("path", WEBHOOK_PATHS)
@pytest.mark.parametrize("prefix", ["", "Bearer "], ids=["bare", "Bearer"])
def test_webhook_signed_by_the_sdk_is_accepted(path, prefix):
    events: list = []
    body = b'{"event":"participant_left","room":{"name":"Test Room"},"participant":{"identity":"p"},"id":"EV_2"}'
    token = sdk.AccessToken(API_KEY, API_SECRET).with_sha256(body_sha256(body))
    jwt = token.with_ttl(datetime.timedelta(minutes=5)).to_jwt()  # the SDK mints on the real clock
    app = app_for(clock=time.time, on_event=events.append)
    headers = {"Authorization": prefix + jwt}
    response = call(
        app, "POST", path, body, content_type="application/webhook+json", headers=headers
    )
    assert (response.status, response.json()) == (200, {"status": "ok"})
    assert [event.to_dict() for event in events] == [json.loads(body)]


def test_on_event_receives_a_webhook_event_read_by_attribute():
    events: list = []
    body = (
        b'{"event":"participant_joined","id":"EV_7","createdAt":"1735689600",'
        b'"room":{"sid":"RM_1","name":"Test Room"},"participant":{"identity":"alice","name":"Alice"}}'
    )
    app = app_for(on_event=events.append)
    response = call(app, "POST", "/webhook", body, headers={"Authorization": signed_webhook(body)})
    assert (response.status, response.json()) == (200, {"status": "ok"})
    [event] = events
    assert type(event) is livekit_auth.WebhookEvent
    assert (event.event, event.id, event.room.name, event.participant.identity) == (
        "participant_joined",
        "EV_7",
        "Test Room",
        "alice",
    )
    assert (event.room.sid, event.participant.name, event.created_at) == (
        "RM_1",
        "Alice",
        1735689600,
    )
    assert event.to_dict() == json.loads(body)
    assert event.track.sid == ""  # a message the event lacks reads as empty, as in protobuf


def _handler_failure_app(calls: list, message: str):
    vector = VECTOR["server-webhook"]

    def on_event(event):
        calls.append(event)
        raise RuntimeError(message)

    app = make_app(
        Settings(api_key=VECTORS["api_key"], api_secret=VECTORS["api_secret"]),
        clock=lambda: vector["now"],
        on_event=on_event,
    )
    return app, vector


def test_webhook_handler_failure_is_500():
    calls: list = []
    app, vector = _handler_failure_app(calls, f"handler broke with {API_SECRET}")
    response = call(
        app, "POST", "/webhook", vector["body"].encode(), headers={"Authorization": vector["jwt"]}
    )
    assert (response.status, response.json()) == (500, error("Webhook handler failed"))
    assert len(calls) == 1
    assert API_SECRET.encode() not in response.body


def test_webhook_handler_failure_is_logged_with_its_message_and_traceback(caplog):
    calls: list = []
    app, vector = _handler_failure_app(calls, "the database is down")
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        response = call(
            app,
            "POST",
            "/webhook",
            vector["body"].encode(),
            headers={"Authorization": vector["jwt"]},
        )
    assert (response.status, response.json()) == (500, error("Webhook handler failed"))
    assert (
        b"database" not in response.body
    )  # the handler's message is for the log, not for the caller
    [record] = [
        record for record in caplog.records if record.getMessage() == "webhook handler failed"
    ]
    assert (record.name, record.levelname) == ("livekit_token_server", "ERROR")
    assert record.fields == {"id": json.loads(vector["body"]).get("id", "")}
    kind, raised, _ = record.exc_info
    assert (kind, str(raised)) == (RuntimeError, "the database is down")
    line = LogfmtFormatter().format(record)
    assert line.startswith("time=") and 'msg="webhook handler failed"' in line
    assert (
        "Traceback (most recent call last)" in line and "RuntimeError: the database is down" in line
    )
    assert "\n" not in line  # one line: the traceback is a quoted field


def test_each_webhook_event_is_logged_with_fields(caplog):
    body = b'{"event":"participant_left","id":"EV_9","room":{"name":"r"},"participant":{"identity":"p"}}'
    app = app_for()
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        for _ in range(2):
            response = call(
                app, "POST", "/webhook", body, headers={"Authorization": signed_webhook(body)}
            )
            assert response.status == 200
    # One line per request, written by the app when no runner writes it (as under wsgiref here).
    records = [
        (r.getMessage(), r.fields) for r in caplog.records if r.name == "livekit_token_server"
    ]
    facts = {"client": "127.0.0.1", "method": "POST", "path": "/webhook", "status": 200}
    assert [
        (message, {key: value for key, value in fields.items() if key != "duration_ms"})
        for message, fields in records
    ] == [
        ("request", {**facts, "event": "participant_left", "id": "EV_9", "room": "r"}),
        (
            "request",
            {**facts, "event": "participant_left", "id": "EV_9", "room": "r", "duplicate": "true"},
        ),
    ]


def test_webhook_without_content_length_is_411():
    vector = VECTOR["server-webhook"]
    events: list = []
    response = call(
        webhook_app("server-webhook", events),
        "POST",
        "/webhook",
        vector["body"].encode(),
        content_length=None,
        headers={"Authorization": vector["jwt"]},
    )
    assert (response.status, response.json()) == (411, error("Content-Length is required"))
    assert events == []


@pytest.mark.parametrize("length", ["+1", "1_0"], ids=["plus", "underscore"])
def test_webhook_content_length_is_parsed_strictly(length):
    vector = VECTOR["server-webhook"]
    response = call(
        webhook_app("server-webhook", []),
        "POST",
        "/webhook",
        vector["body"].encode(),
        content_length=length,
        headers={"Authorization": vector["jwt"]},
    )
    assert (response.status, response.json()) == (
        400,
        error("Content-Length must be a decimal number"),
    )


@pytest.mark.parametrize(
    "length", [str(MAX_WEBHOOK_BODY_BYTES + 1), "999999999999"], ids=["limit+1", "12-digits"]
)
def test_webhook_over_1_mib_is_413_and_not_read(length):
    vector = VECTOR["server-webhook"]
    events: list = []
    wsgi_input = UnreadableInput()
    response = call(
        webhook_app("server-webhook", events),
        "POST",
        "/webhook",
        content_length=length,
        wsgi_input=wsgi_input,
        headers={"Authorization": vector["jwt"]},
    )
    assert (response.status, response.json()) == (
        413,
        error("Request body must be at most 1048576 bytes"),
    )
    assert not wsgi_input.touched
    assert events == []


def test_an_unsigned_webhook_gets_401_before_its_body_is_read():
    response = call(
        app_for(),
        "POST",
        "/webhook",
        b"x" * 100,
        headers={"Authorization": "not-a-token"},
        wsgi_input=UnreadableInput(),
    )
    assert response.status == 401


OTHER_KEY, OTHER_SECRET = (
    "wk1",
    "wk1-webhook-secret-0123456789abcdefghij",
)  # a key pair that is not the API key


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


def test_a_repeat_of_a_taken_event_with_a_bad_signature_is_401():
    events: list = []
    app = dedupe_app(Clock(), events)
    assert deliver(app, event("EV_1")).status == 200
    response = deliver(app, event("EV_1"), secret="forged-secret-0123456789abcdefghijklmn")
    assert (response.status, response.json()) == (401, error("token signature does not match"))


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


# --------------------------------------------------------------------------
# Routing


def test_healthz():
    response = call(app_for(), "GET", "/healthz")
    assert (response.status, response.json()) == (200, {"status": "ok"})


def test_healthz_head_has_no_body_and_the_get_length():
    get = call(app_for(), "GET", "/healthz")
    head = call(app_for(), "HEAD", "/healthz")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(get.body))


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nope",
        "/token/",
        "/TOKEN",
        "//token",
        "/token/x",
        "/healthz/",
        "/webhook/",
        "/livekit/webhook/",
        "/livekit",
        "/token.json",
        "/%74oken",
        "/metrics",  # there is no metrics endpoint
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_paths_are_404(method, path):
    response = call(app_for(), method, path, b'{"roomName":"r","participantName":"p"}')
    assert (response.status, response.json()) == (404, error("Not found"))
    assert response.header("Allow") is None


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("GET", "/token", "POST, OPTIONS"),
        ("HEAD", "/token", "POST, OPTIONS"),
        ("PUT", "/token", "POST, OPTIONS"),
        ("DELETE", "/token", "POST, OPTIONS"),
        ("PATCH", "/token", "POST, OPTIONS"),
        ("GET", "/webhook", "POST, OPTIONS"),
        ("GET", "/livekit/webhook", "POST, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("DELETE", "/healthz", "GET, HEAD, OPTIONS"),
    ],
    ids=lambda value: value.replace(", ", "+") if isinstance(value, str) else None,
)
def test_wrong_method_is_405_with_allow(method, path, allow):
    response = call(app_for(), method, path)
    assert response.status == 405
    assert response.header("Allow") == allow
    expected_body = b"" if method == "HEAD" else b'{"errorMessage":"Method not allowed"}'
    assert response.body == expected_body


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_metrics_is_an_unknown_path(method):
    response = call(app_for(), method, "/metrics")
    assert response.status == 404
    assert method == "HEAD" or response.json() == {"errorMessage": "Not found"}
    assert "/metrics" not in server.ROUTES
    assert not hasattr(server, "Metrics")


def test_unexpected_error_is_a_generic_500():
    def broken_clock():
        raise RuntimeError(f"clock broke; secret is {API_SECRET}")

    response = post_json(app_for(clock=broken_clock), {"roomName": "r", "participantName": "p"})
    assert (response.status, response.json()) == (500, error("Internal server error"))


# --------------------------------------------------------------------------
# Headers and CORS


def _one_response_per_status(app) -> dict:
    """A request for each status the app answers with, keyed by that status."""
    vector = VECTOR["server-webhook"]
    ok_token = b'{"roomName":"r","participantName":"p"}'
    return {
        200: lambda **h: call(app, "POST", "/token", ok_token, headers=h),
        201: lambda **h: call(app, "POST", "/token", b'{"room_name":"r"}', headers=h),
        400: lambda **h: call(app, "POST", "/token", b"[]", headers=h),
        401: lambda **h: call(app, "POST", "/webhook", vector["body"].encode(), headers=h),
        403: lambda **h: call(app, "POST", "/token", b'{"room_config":{}}', headers=h),
        404: lambda **h: call(app, "GET", "/nope", headers=h),
        405: lambda **h: call(app, "GET", "/token", headers=h),
        411: lambda **h: call(app, "POST", "/token", ok_token, content_length=None, headers=h),
        413: lambda **h: call(
            app, "POST", "/token", content_length="20000", wsgi_input=UnreadableInput(), headers=h
        ),
        415: lambda **h: call(
            app, "POST", "/token", ok_token, content_type="text/plain", headers=h
        ),
        "healthz-200": lambda **h: call(app, "GET", "/healthz", headers=h),
        "head-200": lambda **h: call(app, "HEAD", "/healthz", headers=h),
    }


RESPONSE_KINDS = [200, 201, 400, 401, 403, 404, 405, 411, 413, 415, "healthz-200", "head-200"]


@pytest.mark.parametrize("kind", RESPONSE_KINDS, ids=str)
@pytest.mark.parametrize(
    "origin", [None, "https://app.example.com", "null"], ids=["no-origin", "origin", "origin-null"]
)
def test_default_settings_send_the_same_headers_on_every_response(kind, origin):
    headers = {} if origin is None else {"Origin": origin}
    response = _one_response_per_status(app_for())[kind](**headers)
    assert response.status == (200 if isinstance(kind, str) else kind)
    expected = {
        "Content-Type": "application/json",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Access-Control-Allow-Origin": "*",
        # So that a page can read a 429's Retry-After and a 401's WWW-Authenticate.
        "Access-Control-Expose-Headers": "Retry-After, WWW-Authenticate",
        "Content-Length": response.header("Content-Length"),
    }
    if kind == 405:
        expected["Allow"] = "POST, OPTIONS"
    assert dict(response.headers) == expected
    assert response.header("Vary") is None


@pytest.mark.parametrize(
    "path,methods",
    [
        ("/token", "POST, OPTIONS"),
        ("/webhook", "POST, OPTIONS"),
        ("/livekit/webhook", "POST, OPTIONS"),
        ("/healthz", "GET, HEAD, OPTIONS"),
    ],
)
def test_preflight_is_204_without_content_headers(path, methods):
    response = call(
        app_for(),
        "OPTIONS",
        path,
        content_type=None,
        content_length=None,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert response.status == 204
    assert response.body == b""
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert response.header("Access-Control-Allow-Methods") == methods
    assert response.header("Access-Control-Allow-Headers") == "Authorization, Content-Type, *"
    assert response.header("Access-Control-Max-Age") == "600"
    assert response.header("Cache-Control") == "no-store"
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("Content-Length") is None
    assert response.header("Content-Type") is None
    assert response.header("Vary") is None


def test_preflight_for_an_unknown_path_is_404():
    headers = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    response = call(app_for(), "OPTIONS", "/nope", headers=headers)
    assert (response.status, response.json()) == (404, error("Not found"))
    assert response.header("Access-Control-Allow-Methods") is None


ALLOWED = "https://app.example.com"
NOT_ALLOWED_ORIGINS = [
    "https://app.example.com.evil.com",
    "https://evil.com",
    "null",
    "https://APP.example.com",
    "http://app.example.com",
    "https://app.example.com:443",
    "https://app.example.com/",
    "https://app.example.co",
    "https://pp.example.com",
    "*",
    "",
    "https://app.example.com, https://evil.com",
]


def test_listed_origin_is_echoed_with_vary():
    app = app_for(allowed_origins=frozenset({ALLOWED}))
    for kind in RESPONSE_KINDS:
        response = _one_response_per_status(app)[kind](Origin=ALLOWED)
        assert response.header("Access-Control-Allow-Origin") == ALLOWED, kind
        assert response.header("Vary") == "Origin", kind


@pytest.mark.parametrize("origin", NOT_ALLOWED_ORIGINS)
def test_unlisted_origin_gets_no_allow_origin_but_vary(origin):
    app = app_for(allowed_origins=frozenset({ALLOWED}))
    for kind in RESPONSE_KINDS:
        response = _one_response_per_status(app)[kind](Origin=origin)
        assert response.header("Access-Control-Allow-Origin") is None, kind
        assert response.header("Vary") == "Origin", kind


def test_no_origin_with_listed_origins_gets_vary_only():
    app = app_for(allowed_origins=frozenset({ALLOWED}))
    response = post_json(app, {"roomName": "r", "participantName": "p"})
    assert response.status == 200
    assert response.header("Access-Control-Allow-Origin") is None
    assert response.header("Vary") == "Origin"


@pytest.mark.parametrize("origin", [ALLOWED, "https://b.example:8443"] + NOT_ALLOWED_ORIGINS[:5])
def test_preflight_with_listed_origins(origin):
    app = app_for(allowed_origins=frozenset({ALLOWED, "https://b.example:8443"}))
    response = call(
        app,
        "OPTIONS",
        "/token",
        content_type=None,
        content_length=None,
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert response.body == b""
    allowed = origin in (ALLOWED, "https://b.example:8443")
    assert response.header("Access-Control-Allow-Origin") == (origin if allowed else None)
    assert response.header("Vary") == "Origin"
    assert response.header("Access-Control-Allow-Methods") == "POST, OPTIONS"
    assert response.header("Content-Length") is None
    assert response.header("Content-Type") is None


def test_headers_are_not_changed_by_earlier_requests():
    # Static header lists are built once; echoing an origin must not leak into them.
    app = app_for(allowed_origins=frozenset({ALLOWED}))
    call(
        app,
        "OPTIONS",
        "/token",
        content_type=None,
        content_length=None,
        headers={"Origin": ALLOWED},
    )
    post_json(app, {"roomName": "r", "participantName": "p"}, headers={"Origin": ALLOWED})
    call(app, "GET", "/token", headers={"Origin": ALLOWED})
    response = post_json(
        app, {"roomName": "r", "participantName": "p"}, headers={"Origin": "https://evil.com"}
    )
    assert response.header("Access-Control-Allow-Origin") is None
    assert [name for name, _ in response.headers].count("Vary") == 1
    assert response.header("Allow") is None


# --------------------------------------------------------------------------
# Development mode: a webhook signed with the public development key is believed only from
# this machine (a `livekit-server --dev` beside it), however the server is reached.


DEV_ONLY_HERE = "In development mode, webhooks are taken only from this machine"


@pytest.mark.parametrize("peer", ["192.0.2.1", "10.0.0.7", "2001:db8::1", ""])
def test_development_mode_refuses_a_webhook_from_another_machine_before_reading_it(peer):
    vector = VECTOR["server-webhook"]
    events: list = []
    app = webhook_app("server-webhook", events)
    assert app.settings.dev_mode
    wsgi_input = UnreadableInput()
    response = call(
        app,
        "POST",
        "/webhook",
        content_length=str(len(vector["body"])),
        wsgi_input=wsgi_input,
        headers={"Authorization": vector["jwt"]},
        environ={"REMOTE_ADDR": peer},
    )
    assert (response.status, response.json()) == (403, error(DEV_ONLY_HERE))
    assert not wsgi_input.touched and events == []


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_development_mode_takes_a_webhook_from_this_machine(peer):
    vector = VECTOR["server-webhook"]
    events: list = []
    app = webhook_app("server-webhook", events)
    response = call(
        app,
        "POST",
        "/webhook",
        vector["body"].encode(),
        headers={"Authorization": vector["jwt"]},
        environ={"REMOTE_ADDR": peer},
    )
    assert (response.status, response.json()) == (200, {"status": "ok"})
    assert len(events) == 1


def test_development_mode_believes_the_client_its_trusted_proxy_names():
    vector = VECTOR["server-webhook"]
    events: list = []
    app = webhook_app(
        "server-webhook", events, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    response = call(
        app,
        "POST",
        "/webhook",
        vector["body"].encode(),
        headers={"Authorization": vector["jwt"], "X-Forwarded-For": "203.0.113.5"},
        environ={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert (response.status, response.json()) == (403, error(DEV_ONLY_HERE))


def test_with_real_credentials_webhooks_come_from_anywhere():
    body = b'{"event":"room_started","id":"EV_far","room":{"name":"r"}}'
    app = app_for()
    assert not app.settings.dev_mode
    response = call(
        app,
        "POST",
        "/webhook",
        body,
        headers={"Authorization": signed_webhook(body)},
        environ={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert (response.status, response.json()) == (200, {"status": "ok"})


# --------------------------------------------------------------------------
# The request's one line: the app hands its facts to the runner, or writes the line itself


def request_records(caplog) -> list:
    return [
        r.fields
        for r in caplog.records
        if r.name == "livekit_token_server" and r.getMessage() == "request"
    ]


def test_under_a_runner_the_app_hands_its_facts_over_and_writes_no_line(caplog):
    facts: dict = {}
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        response = call(
            app_for(),
            "POST",
            "/token",
            json.dumps({"roomName": "r1", "participantName": "p1"}).encode(),
            environ={server.ACCESS_LOG_FIELDS: facts},
        )
    assert response.status == 200
    assert facts == {"room": "r1", "identity": "p1"}
    assert request_records(caplog) == []


def test_without_a_runner_the_app_writes_one_line_with_its_facts(caplog):
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        call(
            app_for(),
            "POST",
            "/token",
            json.dumps({"room_name": "r2", "participant_identity": "p2"}).encode(),
        )
        call(app_for(), "POST", "/token", b"{}", content_type="text/plain")
    first, second = request_records(caplog)
    assert {
        key: first[key] for key in ("client", "method", "path", "status", "room", "identity")
    } == {
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/token",
        "status": 201,
        "room": "r2",
        "identity": "p2",
    }
    assert (second["status"], second["reason"]) == (415, "Content-Type must be application/json")
    assert "room" not in second


def test_names_in_the_line_are_cut_short():
    facts: dict = {}
    body = json.dumps({"roomName": "r" * 200, "participantName": "p" * 65}).encode()
    assert (
        call(app_for(), "POST", "/token", body, environ={server.ACCESS_LOG_FIELDS: facts}).status
        == 200
    )
    assert facts == {"room": "r" * 64 + "...", "identity": "p" * 64 + "..."}


def test_access_log_off_the_app_writes_no_line(caplog):
    with caplog.at_level(logging.INFO, logger="livekit_token_server"):
        call(
            app_for(access_log=False),
            "POST",
            "/token",
            json.dumps({"roomName": "r", "participantName": "p"}).encode(),
        )
    assert request_records(caplog) == []


@pytest.mark.parametrize(
    "headers,trusted",
    [
        ({"X-Forwarded-For": "not-an-address"}, True),
        ({"X-Forwarded-For": ""}, True),
        ({"X-Forwarded-For": "127.0.0.1"}, False),
        ({"Forwarded": "for=127.0.0.1"}, False),
        ({"X-Real-IP": "127.0.0.1"}, False),
        ({"Via": "1.1 proxy"}, False),
    ],
    ids=[
        "garbage-from-trusted-proxy",
        "empty-from-trusted-proxy",
        "untrusted-proxy",
        "forwarded",
        "x-real-ip",
        "via",
    ],
)
def test_development_mode_refuses_a_webhook_that_came_through_a_proxy(headers, trusted):
    # A proxy on this machine would make every client look local.
    vector = VECTOR["server-webhook"]
    events: list = []
    proxies = (ipaddress.ip_network("127.0.0.0/8"),) if trusted else ()
    app = webhook_app("server-webhook", events, trusted_proxies=proxies)
    response = call(
        app,
        "POST",
        "/webhook",
        vector["body"].encode(),
        headers={"Authorization": vector["jwt"], **headers},
        environ={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert (response.status, response.json()) == (403, error(DEV_ONLY_HERE))
    assert events == []


def test_the_app_s_facts_never_replace_the_line_s_own_fields(caplog):
    def app(environ, start_response):
        environ[server.ACCESS_LOG_FIELDS].update(client="203.0.113.1", status=200, room="r")
        start_response("404 Not Found", [])
        return [b""]

    environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "GET", server.ACCESS_LOG_FIELDS: {}}
    app(environ, lambda *args: None)
    fields = server.access_fields(environ, "/x", 404, time.monotonic())
    assert (fields["client"], fields["status"], fields["room"]) == ("127.0.0.1", 404, "r")
