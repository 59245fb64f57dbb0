"""Building access tokens: golden bytes, the SDK conformance table run both ways, validation."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import time
from datetime import timedelta
from typing import Optional

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from jwt import ExpiredSignatureError
from livekit import api
from livekit.api import access_token as sdk_access_token
from livekit.protocol.room import RoomConfiguration

import livekit_auth as la
from helpers import freeze_sdk_clock, our_view, sdk_view
from livekit_auth.tokens import VIDEO_WIRE_NAMES
from vectors import API_KEY, API_SECRET, VECTORS, body_sha256

# PyJWT warns that "secret" is short; it is the golden vectors' (LiveKit dev) secret.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

NOW = 1735689600  # the golden vectors' clock, 2025-01-01T00:00:00Z


def payload_of(token: str) -> dict:
    """The payload as plain json reads it, independent of our verifier."""
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# --- Golden vectors: the SDK's exact bytes -----------------------------------
# Each recipe is the vector's `made_with`, written once for both libraries
# (same method and class names), so it also shows code moves by an import change.

GOLDEN_RECIPES = {
    "empty-token": lambda lib, token: token,
    "tutorial-token": lambda lib, token: token.with_identity("Participant42").with_grants(
        lib.VideoGrants(room_join=True, room="Test Room")
    ),
    # Rebuilt from its payload.
    "rich-token": lambda lib, token: (
        token.with_identity("alice")
        .with_name("Alice A.")
        .with_kind("standard")
        .with_metadata('{"role":"host"}')
        .with_grants(
            lib.VideoGrants(
                room_join=True,
                room="room-1",
                can_publish=False,
                can_publish_sources=["camera", "microphone"],
                can_update_own_metadata=True,
                hidden=False,
            )
        )
        .with_sip_grants(lib.SIPGrants(admin=False, call=True))
        .with_attributes({"team": "red"})
        .with_room_preset("preset-a")
        .with_ttl(timedelta(minutes=10))
    ),
    "sdk-webhook": lambda lib, token: token.with_sha256(
        body_sha256(VECTORS["sdk-webhook"].body)
    ).with_ttl(timedelta(minutes=5)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_RECIPES))
def test_golden_tokens_byte_for_byte(name):
    vector = VECTORS[name]
    token = GOLDEN_RECIPES[name](la, la.AccessToken(API_KEY, API_SECRET))
    assert token.to_jwt(now=vector.now) == vector.jwt
    # Anywhere in that second gives the same token: whole seconds, floored, like the SDK.
    assert token.to_jwt(now=vector.now + 0.999) == vector.jwt
    assert token.to_jwt(now=vector.now + 1) != vector.jwt


@pytest.mark.parametrize("name", sorted(GOLDEN_RECIPES))
def test_sdk_on_a_frozen_clock_reproduces_the_golden_tokens(name, monkeypatch):
    # Checks the recipes and the clock freezing that the conformance table relies on.
    freeze_sdk_clock(monkeypatch, VECTORS[name].now)
    token = GOLDEN_RECIPES[name](api, api.AccessToken(API_KEY, API_SECRET))
    assert token.to_jwt() == VECTORS[name].jwt


# --- Conformance table, run both ways against the SDK ------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One token's inputs, applied with the same calls to either library."""

    identity: Optional[str] = None
    name: Optional[str] = None
    kind: Optional[str] = None
    metadata: Optional[str] = None
    attributes: Optional[dict] = None
    video: Optional[dict] = None  # VideoGrants keyword arguments (same names in both)
    sip: Optional[dict] = None
    room_preset: Optional[str] = None
    room_config: Optional[dict] = None  # protobuf JSON, in the order MessageToDict writes
    sha256: Optional[str] = None
    ttl: Optional[timedelta] = None

    def build(self, lib):
        token = lib.AccessToken(API_KEY, API_SECRET)
        if self.identity is not None:
            token.with_identity(self.identity)
        if self.name is not None:
            token.with_name(self.name)
        if self.kind is not None:
            token.with_kind(self.kind)
        if self.metadata is not None:
            token.with_metadata(self.metadata)
        if self.attributes is not None:
            token.with_attributes(self.attributes)
        if self.video is not None:
            token.with_grants(lib.VideoGrants(**self.video))
        if self.sip is not None:
            token.with_sip_grants(lib.SIPGrants(**self.sip))
        if self.room_preset is not None:
            token.with_room_preset(self.room_preset)
        if self.room_config is not None:
            # Ours takes the JSON object; the SDK a protobuf RoomConfiguration.
            config = (
                self.room_config if lib is la else ParseDict(self.room_config, RoomConfiguration())
            )
            token.with_room_config(config)
        if self.sha256 is not None:
            token.with_sha256(self.sha256)
        if self.ttl is not None:
            token.with_ttl(self.ttl)
        return token

    def expected(self) -> dict:
        """The claims a verifier must read back, with the SDK's own dataclasses for the grant defaults."""
        return {
            "identity": self.identity or "",
            "name": self.name or "",
            "kind": self.kind or "",
            "metadata": self.metadata or "",
            "video": dataclasses.asdict(api.VideoGrants(**(self.video or {}))),
            "sip": dataclasses.asdict(api.SIPGrants(**(self.sip or {}))),
            "attributes": {} if self.attributes is None else self.attributes,
            "sha256": self.sha256 or "",
            "room_preset": self.room_preset or "",
            "room_config": self.room_config,
        }


JOIN = {"room_join": True, "room": "room-1"}
OPTIONAL_FLAGS = (
    "can_update_own_metadata",
    "ingress_admin",
    "hidden",
    "recorder",
    "agent",
    "can_manage_agent_session",
    "can_subscribe_metrics",
)

CASES = [
    pytest.param(Case(), id="nothing-set"),
    pytest.param(Case(identity="alice"), id="identity"),
    pytest.param(
        Case(identity="zoe", name='Zo\u00eb \U0001f600 "Q" \\ </script>'),
        id="name-non-ascii-and-escapes",
    ),
    pytest.param(Case(identity="bot", kind="agent"), id="kind-agent"),
    pytest.param(Case(identity="caller", kind="sip"), id="kind-sip"),
    pytest.param(Case(identity="u", metadata='{"role":"host","n":[1,2]}'), id="metadata-json-text"),
    pytest.param(Case(identity="u", metadata=""), id="metadata-empty-is-left-out"),
    pytest.param(
        Case(identity="u", attributes={"team": "red", "e": "\U0001f600", "empty": ""}),
        id="attributes",
    ),
    pytest.param(Case(identity="u", attributes={}), id="attributes-empty-object-is-written"),
    pytest.param(Case(identity="u", video=JOIN), id="video-join"),
    pytest.param(Case(video={}), id="video-defaults"),
    pytest.param(Case(video={"room_join": False}), id="video-join-false-needs-no-identity"),
    pytest.param(
        Case(
            video={
                "room_create": True,
                "room_list": True,
                "room_record": True,
                "room_admin": True,
                "room": "r",
            }
        ),
        id="video-room-admin-without-identity",
    ),
    pytest.param(
        Case(
            identity="u",
            video={**JOIN, "can_publish": False, "can_subscribe": False, "can_publish_data": False},
        ),
        id="video-no-permissions",
    ),
    pytest.param(
        Case(
            identity="u",
            video={
                **JOIN,
                "can_publish_sources": [
                    "camera",
                    "microphone",
                    "screen_share",
                    "screen_share_audio",
                ],
            },
        ),
        id="video-publish-sources",
    ),
    pytest.param(
        Case(identity="u", video={**JOIN, "can_publish_sources": []}),
        id="video-publish-sources-empty",
    ),
    pytest.param(
        Case(identity="u", video={**JOIN, **dict.fromkeys(OPTIONAL_FLAGS, True)}),
        id="video-optional-flags-true",
    ),
    # An explicit False is written, unlike None: LiveKit tells "denied" from "unset".
    pytest.param(
        Case(identity="u", video={**JOIN, **dict.fromkeys(OPTIONAL_FLAGS, False)}),
        id="video-optional-flags-false",
    ),
    pytest.param(
        Case(identity="u", video={**JOIN, "room_admin": True, "destination_room": "room-2"}),
        id="video-destination-room",
    ),
    pytest.param(Case(identity="u", sip={"admin": True, "call": False}), id="sip-admin"),
    pytest.param(Case(identity="u", sip={}), id="sip-defaults"),
    pytest.param(Case(identity="u", room_preset="preset-a"), id="room-preset"),
    pytest.param(
        Case(identity="u", room_config={"agents": [{"agentName": "a", "metadata": "m"}]}),
        id="room-config-agent-dispatch",
    ),
    # Map keys inside stay as written (snake_key is not camelCased).
    pytest.param(
        Case(
            identity="u",
            room_config={
                "name": "r",
                "emptyTimeout": 30,
                "departureTimeout": 20,
                "maxParticipants": 5,
                "agents": [{"agentName": "a", "attributes": {"snake_key": "v"}}],
            },
        ),
        id="room-config-fields-and-map",
    ),
    pytest.param(
        Case(sha256=body_sha256(b'{"event":"room_started"}'), ttl=timedelta(minutes=5)),
        id="webhook-sha256",
    ),
    pytest.param(Case(identity="u", ttl=timedelta(seconds=1)), id="ttl-1s"),
    pytest.param(
        Case(identity="u", ttl=timedelta(seconds=90, milliseconds=500)), id="ttl-fractional"
    ),
    pytest.param(Case(identity="u", ttl=timedelta(days=30)), id="ttl-30-days"),
    pytest.param(
        Case(
            identity="alice",
            name="Alice",
            kind="standard",
            metadata="m",
            attributes={"a": "b"},
            video={**JOIN, "can_publish_sources": ["camera"], "hidden": True},
            sip={"call": True},
            room_preset="p",
            room_config={"agents": [{"agentName": "a"}]},
            ttl=timedelta(hours=1),
        ),
        id="everything",
    ),
]


@pytest.fixture
def now(monkeypatch):
    # The real clock, so the SDK would accept the tokens even unfrozen, frozen
    # anyway so both libraries mint in the same second; a quarter second in,
    # so that flooring to whole seconds is exercised.
    value = math.floor(time.time()) + 0.25
    freeze_sdk_clock(monkeypatch, value)
    return value


@pytest.mark.parametrize("case", CASES)
def test_our_token_verifies_with_the_sdk(case, now):
    token = case.build(la).to_jwt(now=now)
    assert sdk_view(api.TokenVerifier(API_KEY, API_SECRET).verify(token)) == case.expected()


@pytest.mark.parametrize("case", CASES)
def test_sdk_token_verifies_with_ours(case, now):
    token = case.build(api).to_jwt()
    claims = la.TokenVerifier(API_KEY, API_SECRET).verify(token, now=now)
    assert our_view(claims) == case.expected()
    # Ours tells an absent grant from a default one.
    assert (claims.video is None) == (case.video is None)
    assert (claims.sip is None) == (case.sip is None)
    assert claims.issuer == API_KEY
    assert claims.not_before == math.floor(now)
    assert claims.expires_at == math.floor(now + (case.ttl or la.DEFAULT_TTL).total_seconds())
    assert claims.payload == payload_of(token)


@pytest.mark.parametrize("case", CASES)
def test_same_bytes_as_the_sdk(case, now):
    assert case.build(la).to_jwt(now=now) == case.build(api).to_jwt()


def test_room_config_rows_are_canonical_protobuf_json():
    # Otherwise a row could pass the byte test only by luck of key order.
    for param in CASES:
        config = param.values[0].room_config
        if config is not None:
            canonical = MessageToDict(ParseDict(config, RoomConfiguration()))
            assert json.dumps(canonical) == json.dumps(config), param.id


def test_rows_cover_every_video_grant_field():
    defaults = dataclasses.asdict(api.VideoGrants())
    covered = {
        name
        for param in CASES
        for name, value in (param.values[0].video or {}).items()
        if value != defaults[name]
    }
    assert covered == set(defaults)


def test_grant_classes_and_defaults_match_the_sdk():
    for ours, sdk in ((la.VideoGrants, api.VideoGrants), (la.SIPGrants, api.SIPGrants)):
        assert [f.name for f in dataclasses.fields(ours)] == [
            f.name for f in dataclasses.fields(sdk)
        ]
        assert dataclasses.asdict(ours()) == dataclasses.asdict(sdk())
    # Our one wire-name table is what the SDK derives field by field.
    assert VIDEO_WIRE_NAMES == {
        f.name: sdk_access_token.snake_to_lower_camel(f.name)
        for f in dataclasses.fields(api.VideoGrants)
    }
    assert la.DEFAULT_TTL == sdk_access_token.DEFAULT_TTL == timedelta(hours=6)


# --- Builder validation --------------------------------------------------------


@pytest.mark.parametrize(
    "identity, room",
    [("", "room-1"), ("alice", ""), ("", "")],
    ids=["no-identity", "no-room", "neither"],
)
def test_joining_a_room_needs_identity_and_room(identity, room):
    ours = la.AccessToken(API_KEY, API_SECRET).with_identity(identity)
    with pytest.raises(ValueError):
        ours.with_grants(la.VideoGrants(room_join=True, room=room)).to_jwt(now=NOW)
    # The SDK refuses the same.
    sdk = api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
    with pytest.raises(ValueError):
        sdk.with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt()


BAD_BUILDER_CALLS = [
    pytest.param(lambda t: t.with_identity(1), id="identity-int"),
    pytest.param(lambda t: t.with_identity(None), id="identity-none"),
    pytest.param(lambda t: t.with_name(b"alice"), id="name-bytes"),
    pytest.param(lambda t: t.with_kind(None), id="kind-none"),
    pytest.param(lambda t: t.with_metadata({"role": "host"}), id="metadata-dict-not-text"),
    pytest.param(lambda t: t.with_attributes({"a": 1}), id="attribute-value-int"),
    pytest.param(lambda t: t.with_attributes({"a": None}), id="attribute-value-none"),
    pytest.param(lambda t: t.with_attributes({1: "a"}), id="attribute-key-int"),
    pytest.param(lambda t: t.with_attributes([("a", "b")]), id="attributes-pairs"),
    pytest.param(lambda t: t.with_ttl(3600), id="ttl-int-seconds"),
    pytest.param(lambda t: t.with_ttl(None), id="ttl-none"),
    pytest.param(lambda t: t.with_grants({"room_join": True}), id="grants-dict"),
    pytest.param(lambda t: t.with_grants(api.VideoGrants()), id="grants-the-sdk-class"),
    pytest.param(lambda t: t.with_grants(la.SIPGrants()), id="grants-sip-as-video"),
    pytest.param(lambda t: t.with_sip_grants(la.VideoGrants()), id="sip-grants-video"),
    pytest.param(lambda t: t.with_sip_grants(api.SIPGrants()), id="sip-grants-the-sdk-class"),
    pytest.param(lambda t: t.with_sha256(b"x"), id="sha256-bytes"),
    pytest.param(lambda t: t.with_room_preset(1), id="room-preset-int"),
    pytest.param(lambda t: t.with_room_config('{"agents":[]}'), id="room-config-json-text"),
    pytest.param(lambda t: t.with_room_config(RoomConfiguration()), id="room-config-protobuf"),
    pytest.param(
        lambda t: t.with_room_config({"a": object()}).to_jwt(now=NOW), id="room-config-not-json"
    ),
    pytest.param(
        lambda t: t.with_room_config({"a": float("nan")}).to_jwt(now=NOW), id="room-config-nan"
    ),
    pytest.param(lambda t: la.VideoGrants(room_join="yes"), id="grant-bool-as-str"),
    pytest.param(lambda t: la.VideoGrants(room_join=1), id="grant-bool-as-int"),
    pytest.param(lambda t: la.VideoGrants(room=None), id="grant-room-none"),
    pytest.param(lambda t: la.VideoGrants(can_publish=None), id="grant-can-publish-none"),
    pytest.param(lambda t: la.VideoGrants(destination_room=1), id="grant-destination-room-int"),
    pytest.param(lambda t: la.VideoGrants(can_publish_sources="camera"), id="grant-sources-str"),
    pytest.param(
        lambda t: la.VideoGrants(can_publish_sources=["camera", 1]), id="grant-sources-item-int"
    ),
    pytest.param(lambda t: la.VideoGrants(can_publish_sources={"camera"}), id="grant-sources-set"),
    pytest.param(lambda t: la.SIPGrants(admin=None), id="sip-admin-none"),
    pytest.param(lambda t: la.SIPGrants(call="yes"), id="sip-call-str"),
]


@pytest.mark.parametrize("call", BAD_BUILDER_CALLS)
def test_wrong_types_raise_value_error(call):
    with pytest.raises(ValueError):
        call(la.AccessToken(API_KEY, API_SECRET))


@pytest.mark.parametrize(
    "sources",
    [["camera", "microphone"], ("camera", "microphone"), []],
    ids=["list", "tuple", "empty-list"],
)
def test_publish_sources_are_built_written_and_read_back_as_by_the_sdk(sources, now):
    ours = la.AccessToken(API_KEY, API_SECRET)
    ours.with_grants(la.VideoGrants(can_publish_sources=sources))
    theirs = api.AccessToken(API_KEY, API_SECRET)
    theirs.with_grants(api.VideoGrants(can_publish_sources=sources))
    # Kept as given, as the SDK keeps it; a tuple is written as a JSON array by both.
    assert ours.claims.video.can_publish_sources == theirs.claims.video.can_publish_sources
    token = ours.to_jwt(now=now)
    assert token == theirs.to_jwt()
    # Read back, a list: `== ["camera", ...]` holds with either library.
    read = la.TokenVerifier(API_KEY, API_SECRET).verify(token, now=now).video.can_publish_sources
    sdk_read = api.TokenVerifier(API_KEY, API_SECRET).verify(token).video.can_publish_sources
    assert (read, type(read)) == (sdk_read, type(sdk_read)) == (list(sources), list)


def test_attributes_are_copied():
    # The token is what the caller passed to with_attributes, not what the dict became later.
    attributes = {"team": "red"}
    token = la.AccessToken(API_KEY, API_SECRET).with_attributes(attributes)
    attributes["team"] = "blue"
    assert payload_of(token.to_jwt(now=NOW))["attributes"] == {"team": "red"}


@pytest.mark.parametrize(
    "key, secret",
    [
        ("", "secret"),
        ("devkey", ""),
        (None, "secret"),
        ("devkey", None),
        (b"devkey", "secret"),
        ("devkey", b"secret"),
    ],
    ids=["key-empty", "secret-empty", "key-none", "secret-none", "key-bytes", "secret-bytes"],
)
def test_access_token_needs_key_and_secret(key, secret, monkeypatch):
    # Unlike the SDK there is no fallback to the environment, even when it is set.
    monkeypatch.setenv("LIVEKIT_API_KEY", "envkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "envsecret")
    with pytest.raises(ValueError):
        la.AccessToken(key, secret)


@pytest.mark.parametrize(
    "ttl",
    [
        timedelta(0),
        timedelta(microseconds=-1),
        timedelta(seconds=-1),
        timedelta(seconds=-1.5),
        timedelta(days=-1),
    ],
    ids=["zero", "minus-1us", "minus-1s", "minus-1.5s", "minus-1-day"],
)
def test_ttl_of_zero_or_less_makes_the_sdks_expired_token(ttl, now):
    # How tests make an expired token with the SDK: the same exp and nbf, byte for byte.
    token = la.AccessToken(API_KEY, API_SECRET).with_identity("u").with_ttl(ttl).to_jwt(now=now)
    assert token == api.AccessToken(API_KEY, API_SECRET).with_identity("u").with_ttl(ttl).to_jwt()
    assert payload_of(token)["nbf"] == math.floor(now)
    assert payload_of(token)["exp"] == math.floor(now + ttl.total_seconds())
    # Expired at once for a verifier without leeway, ours and the SDK's alike.
    with pytest.raises(la.TokenExpired):
        la.TokenVerifier(API_KEY, API_SECRET, leeway=timedelta(0)).verify(token, now=now)
    with pytest.raises(ExpiredSignatureError):
        api.TokenVerifier(API_KEY, API_SECRET, leeway=timedelta(0)).verify(token)


def test_ttl_of_one_second_is_allowed():
    payload = payload_of(
        la.AccessToken(API_KEY, API_SECRET).with_ttl(timedelta(seconds=1)).to_jwt(now=NOW)
    )
    assert payload["exp"] - payload["nbf"] == 1


def test_default_ttl_is_six_hours():
    payload = payload_of(la.AccessToken(API_KEY, API_SECRET).to_jwt(now=NOW))
    assert (payload["nbf"], payload["exp"]) == (NOW, NOW + 21600)


def test_to_jwt_defaults_to_the_system_clock():
    before = math.floor(time.time())
    token = la.AccessToken(API_KEY, API_SECRET).to_jwt()
    after = math.floor(time.time())
    assert before <= payload_of(token)["nbf"] <= after


def test_a_builder_can_sign_again():
    # Each to_jwt starts from a fresh copy of the keyed MAC.
    token = la.AccessToken(API_KEY, API_SECRET).with_identity("alice")
    first = token.to_jwt(now=NOW)
    assert token.to_jwt(now=NOW) == first
    assert token.with_identity("bob").to_jwt(now=NOW) != first


# --- token.claims: what the with_* calls set, and what code sets directly, as in the SDK ---


def test_claims_hold_what_the_with_calls_set():
    token = la.AccessToken(API_KEY, API_SECRET)
    assert token.claims == la.Claims() and token.identity == ""
    token.with_identity("alice").with_name("Alice").with_grants(
        la.VideoGrants(room_join=True, room="r")
    )
    token.with_attributes({"team": "red"}).with_room_config(
        {"agents": [{"agentName": "a"}]}
    ).with_sha256("x")
    claims = token.claims
    assert (claims.identity, claims.name, claims.attributes, claims.sha256) == (
        "alice",
        "Alice",
        {"team": "red"},
        "x",
    )
    assert (claims.video.room, claims.sip, claims.kind) == ("r", None, "")
    assert claims.room_config == {"agents": [{"agentName": "a"}]}
    assert token.identity == "alice"
    # The builder's own claims, as the SDK's: later calls change them.
    token.with_name("Bob")
    assert claims is token.claims and claims.name == "Bob"
    # The registered claims are the verifier's to fill in: to_jwt writes them from api_key, now and ttl.
    assert (claims.issuer, claims.not_before, claims.expires_at, claims.payload) == (
        "",
        None,
        None,
        {},
    )


def set_claims_directly(lib, token):
    """SDK-style code that sets the builder's claims and grants by assignment, not with_* calls."""
    token.identity = "alice"
    token.ttl = timedelta(minutes=5)
    token.claims.name = "Alice"
    token.claims.metadata = '{"role":"host"}'
    token.claims.attributes = {"team": "red"}
    token.claims.sha256 = body_sha256(b'{"event":"room_started"}')
    token.claims.room_preset = None  # unset, the SDK's default
    token.claims.video = lib.VideoGrants(room_join=True)
    token.claims.video.room = "room-1"
    token.claims.video.can_publish_sources = ["camera"]
    token.claims.sip = lib.SIPGrants()
    token.claims.sip.call = True
    return token


def test_claims_set_directly_are_signed_as_by_the_sdk(now):
    ours = set_claims_directly(la, la.AccessToken(API_KEY, API_SECRET))
    theirs = set_claims_directly(api, api.AccessToken(API_KEY, API_SECRET))
    token = ours.to_jwt(now=now)
    assert token == theirs.to_jwt()
    claims = la.TokenVerifier(API_KEY, API_SECRET).verify(token, now=now)
    assert (claims.identity, claims.name) == ("alice", "Alice")
    assert (claims.video.room, claims.sip.call) == ("room-1", True)
    assert claims.expires_at - claims.not_before == 300


def test_a_grant_changed_after_with_grants_is_signed_as_changed(now):
    grants = la.VideoGrants()
    token = la.AccessToken(API_KEY, API_SECRET).with_identity("u").with_grants(grants)
    grants.room_join = True
    grants.room = "room-1"
    assert payload_of(token.to_jwt(now=now))["video"]["roomJoin"] is True
    # The join check sees the change too.
    grants.room = ""
    with pytest.raises(ValueError):
        token.to_jwt(now=now)


# Values of the wrong type set directly: the SDK would sign them; to_jwt refuses them, as the
# with_* calls do.
BAD_DIRECT_SETS = [
    pytest.param(lambda t: setattr(t, "identity", 1), id="identity-int"),
    pytest.param(lambda t: setattr(t.claims, "identity", None), id="claims-identity-none"),
    pytest.param(lambda t: setattr(t.claims, "name", 5), id="name-int"),
    pytest.param(lambda t: setattr(t.claims, "kind", b"agent"), id="kind-bytes"),
    pytest.param(lambda t: setattr(t.claims, "metadata", {"role": "host"}), id="metadata-dict"),
    pytest.param(lambda t: setattr(t.claims, "sha256", b"x"), id="sha256-bytes"),
    pytest.param(lambda t: setattr(t.claims, "room_preset", 1), id="room-preset-int"),
    pytest.param(lambda t: setattr(t.claims, "video", {"roomJoin": True}), id="video-dict"),
    pytest.param(lambda t: setattr(t.claims, "video", api.VideoGrants()), id="video-the-sdk-class"),
    pytest.param(lambda t: setattr(t.claims, "sip", la.VideoGrants()), id="sip-video"),
    pytest.param(lambda t: setattr(t.claims, "attributes", {"a": 1}), id="attribute-value-int"),
    pytest.param(lambda t: setattr(t.claims, "attributes", [("a", "b")]), id="attributes-pairs"),
    pytest.param(lambda t: t.claims.attributes.update({1: "a"}), id="attribute-key-int-later"),
    pytest.param(
        lambda t: setattr(t.claims, "room_config", RoomConfiguration()), id="config-protobuf"
    ),
    pytest.param(lambda t: setattr(t.claims, "room_config", {"a": object()}), id="config-not-json"),
    pytest.param(lambda t: setattr(t.claims.video, "room_join", "yes"), id="grant-bool-as-str"),
    pytest.param(lambda t: setattr(t.claims.video, "room", None), id="grant-room-none"),
    pytest.param(
        lambda t: setattr(t.claims.video, "can_publish_sources", "a"), id="grant-sources-str"
    ),
    pytest.param(
        lambda t: t.claims.video.can_publish_sources.append(1), id="grant-source-int-later"
    ),
    pytest.param(lambda t: setattr(t.claims.sip, "admin", None), id="sip-admin-none"),
]


@pytest.mark.parametrize("change", BAD_DIRECT_SETS)
def test_claims_set_directly_with_the_wrong_type_are_refused_by_to_jwt(change):
    token = la.AccessToken(API_KEY, API_SECRET).with_identity("u").with_attributes({"a": "b"})
    token.with_grants(la.VideoGrants(can_publish_sources=["camera"]))
    token.with_sip_grants(la.SIPGrants())
    assert token.to_jwt(now=NOW)
    change(token)
    with pytest.raises(ValueError):
        token.to_jwt(now=NOW)


def test_empty_strings_are_left_out_of_the_payload_as_by_the_sdk():
    token = (
        la.AccessToken(API_KEY, API_SECRET)
        .with_name("")
        .with_kind("")
        .with_sha256("")
        .with_room_preset("")
    )
    assert payload_of(token.to_jwt(now=NOW)) == {
        "sub": "",
        "iss": API_KEY,
        "nbf": NOW,
        "exp": NOW + 21600,
    }
