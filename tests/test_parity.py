"""One piece of SDK-style code run against `livekit.api` and `livekit_auth`: the same values from both.

`sdk_style_code(api)` is written as a livekit-api user writes it; moving it is
the import change `from livekit import api` -> `import livekit_auth as api`.
Its clock is injected (the SDK's frozen, ours patched), so the tokens match.
Where the two differ on purpose (README, "livekit_auth vs livekit-api"), a
test below pins the difference.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import time
import types
from datetime import timedelta

import pytest
from google.protobuf.json_format import MessageToDict, MessageToJson, Parse, ParseDict
from livekit import api as sdk
from livekit.protocol import models
from livekit.protocol.room import RoomConfiguration

import livekit_auth as la
import livekit_auth.tokens
from helpers import freeze_sdk_clock
from vectors import WEBHOOK_VECTORS

KEY, SECRET = "parity-key", "a-parity-secret-of-at-least-32-characters"
ROOM_CONFIG = {
    "name": "room-1",
    "emptyTimeout": 30,
    "agents": [{"agentName": "helper", "metadata": "m"}],
}

# Webhook bodies as LiveKit writes them (protobuf-JSON: camelCase, int64 as strings, defaults left out).
FULL_BODY = json.dumps(
    {
        "event": "track_published",
        "id": "EV_1",
        "createdAt": "1735689605",
        "numDropped": 2,
        "room": {
            "sid": "RM_1",
            "name": "room-1",
            "metadata": "m",
            "numParticipants": 3,
            "creationTime": "1735689600",
        },
        "participant": {
            "sid": "PA_1",
            "identity": "alice",
            "name": "Alice",
            "metadata": '{"role":"host"}',
            "joinedAt": "1735689601",
            "attributes": {"team": "red"},
            "state": "ACTIVE",
        },
        "track": {
            "sid": "TR_1",
            "name": "cam",
            "type": "VIDEO",
            "muted": True,
            "width": 1280,
            "height": 720,
        },
        "egressInfo": {
            "egressId": "EG_1",
            "roomName": "room-1",
            "status": "EGRESS_COMPLETE",
            "startedAt": "17",
        },
        "ingressInfo": {
            "ingressId": "IN_1",
            "name": "obs",
            "roomName": "room-1",
            "inputType": "WHIP_INPUT",
        },
    },
    separators=(",", ":"),
).encode()
# An event that lacks messages and fields: each reads as protobuf's default ("", 0, False, empty message).
SPARSE_BODY = b'{"event":"participant_left","participant":{"identity":"bob"},"track":{}}'
BODIES = [
    pytest.param(FULL_BODY, id="full"),
    pytest.param(SPARSE_BODY, id="sparse"),
    *(pytest.param(vector.body, id=vector.name) for vector in WEBHOOK_VECTORS),
]


def room_config(api):
    # The one place the calling code differs: the SDK takes a protobuf message, ours its JSON object.
    return ParseDict(ROOM_CONFIG, RoomConfiguration()) if api is sdk else ROOM_CONFIG


def plain(grants) -> dict:
    return dataclasses.asdict(grants)


def sdk_style_code(api, body: bytes) -> dict:
    """Build, verify and receive as the SDK's users do; return every value read."""
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_kind("standard")
        .with_metadata('{"role":"host"}')
        .with_attributes({"team": "red", "e": "\U0001f600"})
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room="room-1",
                can_publish=False,
                can_publish_sources=["camera", "microphone"],
                can_update_own_metadata=True,
                hidden=False,
                agent=True,
            )
        )
        .with_sip_grants(api.SIPGrants(call=True))
        .with_room_preset("preset-a")
        .with_room_config(room_config(api))
        .with_ttl(timedelta(minutes=10))
    )
    jwt = token.to_jwt()
    claims = api.TokenVerifier(KEY, SECRET).verify(jwt)

    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    auth_token = (
        api.AccessToken(KEY, SECRET).with_sha256(digest).with_ttl(timedelta(minutes=5)).to_jwt()
    )
    # As the SDK's own webhook tests sign one: the claim set on the builder, not with with_sha256.
    assigned = api.AccessToken(KEY, SECRET)
    assigned.claims.sha256 = digest
    assigned.ttl = timedelta(minutes=5)
    assigned_token = assigned.to_jwt()
    receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    event = receiver.receive(body.decode(), auth_token)
    by_keyword = receiver.receive(body.decode(), auth_token=auth_token)
    room, participant, track = event.room, event.participant, event.track
    config = claims.room_config
    agent = config.agents[0]
    return {
        "jwt": jwt,
        "auth_token": auth_token,
        "assigned token": assigned_token,
        "received with it": receiver.receive(body.decode(), assigned_token) == event,
        "events compare by value": event == by_keyword,
        "token": (token.identity, token.ttl, token.api_key),
        "built": [
            getattr(token.claims, name)
            for name in ("name", "kind", "metadata", "attributes", "room_preset")
        ],
        "built grants": (plain(token.claims.video), plain(token.claims.sip)),
        "webhook built sha256": api.AccessToken(KEY, SECRET).with_sha256(digest).claims.sha256,
        "claims": [
            getattr(claims, name)
            for name in ("identity", "name", "kind", "metadata", "attributes", "sha256")
        ],
        "room_preset": claims.room_preset,
        "video": (
            claims.video.room,
            claims.video.room_join,
            claims.video.can_publish,
            claims.video.can_subscribe,
        ),
        "video more": (
            claims.video.can_publish_data,
            claims.video.can_publish_sources,
            claims.video.can_update_own_metadata,
            claims.video.hidden,
            claims.video.agent,
            claims.video.room_admin,
            claims.video.destination_room,
        ),
        "sip": (claims.sip.admin, claims.sip.call),
        "room config": (config.name, config.empty_timeout, config.max_participants),
        "room config more": (config.sync_streams, len(config.agents)),
        "agent": (agent.agent_name, agent.metadata, agent.deployment, dict(agent.attributes)),
        "claims compare by value": claims == api.TokenVerifier(KEY, SECRET).verify(jwt),
        "event": (event.event, event.id, event.created_at, event.num_dropped),
        "by keyword": (
            by_keyword.event,
            by_keyword.id,
            by_keyword.room.name,
            by_keyword.participant.identity,
        ),
        "room": (
            room.sid,
            room.name,
            room.metadata,
            room.num_participants,
            room.creation_time,
            room.empty_timeout,
        ),
        "room more": (room.max_participants,),
        "participant": (
            participant.identity,
            participant.sid,
            participant.name,
            participant.metadata,
        ),
        "participant more": (participant.joined_at,),
        "attributes": dict(participant.attributes),
        "track": (track.sid, track.name, track.muted, track.width, track.height, track.mime_type),
        "egress": (
            event.egress_info.egress_id,
            event.egress_info.room_name,
            event.egress_info.started_at,
        ),
        "ingress": (
            event.ingress_info.ingress_id,
            event.ingress_info.name,
            event.ingress_info.room_name,
        ),
        "ingress more": (event.ingress_info.url, event.ingress_info.participant_identity),
        "job": (event.job.id, event.job.agent_name),
    }


@pytest.fixture
def clock(monkeypatch):
    """Both libraries on one clock: the SDK's frozen, ours patched where AccessToken reads it.

    The real time, a quarter second in, so the verifiers (ours on the system
    clock) accept the tokens, and flooring to whole seconds is exercised.
    """
    now = math.floor(time.time()) + 0.25
    freeze_sdk_clock(monkeypatch, now)
    monkeypatch.setattr(livekit_auth.tokens, "time", types.SimpleNamespace(time=lambda: now))
    return now


@pytest.mark.parametrize("body", BODIES)
def test_the_same_code_reads_the_same_values(body, clock):
    ours, theirs = sdk_style_code(la, body), sdk_style_code(sdk, body)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == theirs[name], name
    assert ours["jwt"] == theirs["jwt"]  # byte for byte, room config included


def test_a_sparse_event_reads_as_protobufs_defaults(clock):
    values = sdk_style_code(la, SPARSE_BODY)
    assert values["event"] == ("participant_left", "", 0, 0)
    assert values["room"] == ("", "", "", 0, 0, 0)
    assert values["participant"] == ("bob", "", "", "")
    assert values["attributes"] == {}
    assert values["track"] == ("", "", False, 0, 0, "")
    assert values["egress"] == ("", "", 0)
    assert values["job"] == ("", "")


# --- Every field of our tables, read from events the SDK wrote ---------------------


def our_fields(message) -> list:
    return [
        name
        for name in dir(type(message))
        if isinstance(getattr(type(message), name), la.webhook._Field)
    ]


def assert_same_fields(ours, theirs, path: str = "event") -> int:
    """Compare every field ours reads with the SDK's; returns how many were compared."""
    compared = 0
    for name in our_fields(ours):
        field = theirs.DESCRIPTOR.fields_by_name[name]  # KeyError: a name the SDK does not have
        value, expected = getattr(ours, name), getattr(theirs, name)
        if type(value) is list:  # a repeated message
            assert len(value) == len(expected), f"{path}.{name}"
            for index, (item, expected_item) in enumerate(zip(value, expected)):
                compared += assert_same_fields(item, expected_item, f"{path}.{name}[{index}]")
            continue
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            compared += assert_same_fields(value, expected, f"{path}.{name}")
            continue
        if field.enum_type is not None:  # ours reads the name, the SDK the number
            expected = field.enum_type.values_by_number[expected].name
        elif field.message_type is not None:  # a map
            expected = dict(expected)
        assert (value, type(value)) == (expected, type(expected)), f"{path}.{name}"
        compared += 1
    return compared


def _filled(message, depth: int = 0):
    """An SDK message with every field our tables read set to a value other than its default."""
    ours = _ours_for(message.DESCRIPTOR.name)
    for name in our_fields(ours):
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, name).update({"k": "v", "snake_key": "\U0001f600"})
        elif field.message_type is not None:
            getattr(message, name).CopyFrom(_filled(type(getattr(message, name))(), depth + 1))
        elif field.enum_type is not None:
            setattr(message, name, field.enum_type.values[-1].number)
        elif field.type == field.TYPE_BOOL:
            setattr(message, name, True)
        elif field.type == field.TYPE_STRING:
            setattr(message, name, f'{name}-{depth} "\u00e9"')
        elif field.type in (field.TYPE_INT64, field.TYPE_UINT64):
            setattr(
                message, name, 2**53 + 1
            )  # past a double's precision: int64 must be read as a string
        else:
            setattr(message, name, 2**31 - 1)
    return message


def _classes(cls=la.WebhookEvent) -> dict:
    """Our message classes by name, from WebhookEvent down."""
    found = {cls.__name__: cls}
    for name in our_fields(cls({})):
        value = getattr(cls({}), name)
        if isinstance(value, la.webhook._Message):
            found.update(_classes(type(value)))
    return found


def _ours_for(name: str):
    return _classes()[name]({})


LEAVES = 46  # fields of our tables that are not messages, counted through every message


def test_every_field_matches_the_sdk_on_a_filled_event():
    event = _filled(sdk.WebhookEvent())
    body = MessageToJson(event).encode()
    assert b'"createdAt": "9007199254740993"' in body  # int64 as a string, as LiveKit writes it
    theirs = sdk.WebhookEvent.FromString(event.SerializeToString())
    assert assert_same_fields(la.WebhookEvent(json.loads(body)), theirs) == LEAVES


@pytest.mark.parametrize(
    "body", [b'{"event":"room_started"}', SPARSE_BODY, *(v.body for v in WEBHOOK_VECTORS)]
)
def test_every_field_matches_the_sdk_on_sparse_events(body):
    assert (
        assert_same_fields(la.WebhookEvent(json.loads(body)), Parse(body, sdk.WebhookEvent()))
        == LEAVES
    )


def test_our_message_names_are_the_sdks():
    assert {name for name in _classes()} == {
        "WebhookEvent",
        "Room",
        "ParticipantInfo",
        "TrackInfo",
        "EgressInfo",
        "IngressInfo",
        "IngressState",
        "Job",
    }


# --- The differences, each pinned (README, "livekit_auth vs livekit-api") -------------


def test_enums_read_as_names_where_the_sdk_gives_numbers(clock):
    body = FULL_BODY.decode()
    auth = sdk.AccessToken(KEY, SECRET).with_sha256(
        base64.b64encode(hashlib.sha256(FULL_BODY).digest()).decode()
    )
    theirs = sdk.WebhookReceiver(sdk.TokenVerifier(KEY, SECRET)).receive(body, auth.to_jwt())
    ours = la.WebhookReceiver(la.TokenVerifier(KEY, SECRET)).receive(body, auth.to_jwt())
    assert (ours.track.type, theirs.track.type) == ("VIDEO", models.TrackType.VIDEO)
    assert (
        ours.participant.state
        == models.ParticipantInfo.State.Name(theirs.participant.state)
        == "ACTIVE"
    )
    # Absent, an enum reads as the name of its value 0.
    assert (ours.track.source, theirs.track.source) == ("UNKNOWN", 0)


def test_receive_returns_our_webhook_event_with_to_dict():
    event = la.WebhookEvent(json.loads(FULL_BODY))
    assert event.to_dict() == json.loads(FULL_BODY)
    assert event.room.to_dict() == json.loads(FULL_BODY)["room"]
    assert la.WebhookEvent({"event": "room_started"}).egress_info.to_dict() == {}
    assert type(event.participant).__name__ == "ParticipantInfo"
    # Only the listed common fields are attributes; the rest is in to_dict().
    with pytest.raises(AttributeError):
        event.participant.permission
    assert not hasattr(event, "HasField")


def test_token_claims_differences(clock):
    ours, theirs = (
        api.AccessToken(KEY, SECRET).with_identity("alice").with_room_config(room_config(api))
        for api in (la, sdk)
    )
    # The SDK keeps identity on the token only; ours in claims.identity too.
    assert (ours.identity, theirs.identity) == ("alice", "alice")
    assert (ours.claims.identity, theirs.claims.identity) == ("alice", "")
    # room_config: the JSON object here, a RoomConfiguration there.
    assert ours.claims.room_config == MessageToDict(theirs.claims.room_config) == ROOM_CONFIG
    # Unset, sha256 and room_preset read "" here, None there; attributes None in both.
    fresh = la.AccessToken(KEY, SECRET).claims, sdk.AccessToken(KEY, SECRET).claims
    assert [(c.sha256, c.room_preset, c.attributes, c.video, c.sip) for c in fresh] == [
        ("", "", None, None, None),
        (None, None, None, None, None),
    ]


def test_verified_claims_differences(clock):
    jwt = la.AccessToken(KEY, SECRET).with_identity("alice").to_jwt()
    ours, theirs = (
        la.TokenVerifier(KEY, SECRET).verify(jwt),
        sdk.TokenVerifier(KEY, SECRET).verify(jwt),
    )
    # Absent grants: None here, the SDK's defaults there; room_preset "" here, None there.
    assert (ours.video, ours.sip, ours.room_preset) == (None, None, "")
    assert (theirs.video, theirs.sip, theirs.room_preset) == (
        sdk.VideoGrants(),
        sdk.SIPGrants(),
        None,
    )
    # Ours also has the registered claims.
    assert (ours.issuer, ours.not_before, ours.expires_at) == (
        KEY,
        math.floor(clock),
        math.floor(clock) + 6 * 3600,
    )


# --- roomConfig read back by attribute, field by field against the SDK's RoomConfiguration ---

ROOM_CONFIGS = [
    pytest.param(
        {
            "name": "room-1",
            "emptyTimeout": 30,
            "departureTimeout": 20,
            "maxParticipants": 5,
            "metadata": "m",
            "minPlayoutDelay": 100,
            "maxPlayoutDelay": 200,
            "syncStreams": True,
            "agents": [
                {"agentName": "a", "metadata": "x", "deployment": "d", "attributes": {"k": "v"}},
                {"agentName": "b", "restartPolicy": "JRP_NEVER"},
            ],
            "tags": {"t": "v"},
        },
        id="every-field",
    ),
    # As a server passes a client's object through: protobuf reads a field by either name.
    pytest.param(
        {"agents": [{"agent_name": "a"}], "empty_timeout": 30, "sync_streams": True},
        id="snake-case",
    ),
    pytest.param({"emptyTimeout": "30", "maxParticipants": "5"}, id="numbers-as-strings"),
    pytest.param({"agents": []}, id="no-agents"),
    pytest.param({"name": None, "agents": None, "tags": None}, id="nulls-are-defaults"),
    pytest.param({"egress": {"room": {"roomName": "r"}}}, id="only-a-field-not-read-here"),
]
ROOM_CONFIG_LEAVES = 9  # name, metadata, five integers, sync_streams, tags
AGENT_LEAVES = 5  # agent_name, metadata, deployment, restart_policy, attributes


@pytest.mark.parametrize("config", ROOM_CONFIGS)
def test_verified_room_config_reads_as_the_sdks(config, clock):
    jwt = la.AccessToken(KEY, SECRET).with_room_config(config).to_jwt()
    ours = la.TokenVerifier(KEY, SECRET).verify(jwt).room_config
    theirs = sdk.TokenVerifier(KEY, SECRET).verify(jwt).room_config
    assert type(ours).__name__ == type(theirs).__name__ == "RoomConfiguration"
    leaves = ROOM_CONFIG_LEAVES + AGENT_LEAVES * len(theirs.agents)
    assert assert_same_fields(ours, theirs, "room_config") == leaves
    assert ours.to_dict() == config


@pytest.mark.parametrize("config", [None, {}], ids=["absent", "empty"])
def test_verified_room_config_absent_or_empty_is_none_as_in_the_sdk(config, clock):
    token = la.AccessToken(KEY, SECRET)
    if config is not None:
        token.with_room_config(config)
    jwt = token.to_jwt()
    assert la.TokenVerifier(KEY, SECRET).verify(jwt).room_config is None
    assert sdk.TokenVerifier(KEY, SECRET).verify(jwt).room_config is None


def test_verified_claims_and_events_compare_by_value_as_the_sdks(clock):
    jwts = [
        la.AccessToken(KEY, SECRET).with_room_config({"agents": [{"agentName": name}]}).to_jwt()
        for name in ("a", "b")
    ]
    bodies = [FULL_BODY.decode(), SPARSE_BODY.decode()]
    digests = [base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in bodies]
    for api in (la, sdk):
        verifier = api.TokenVerifier(KEY, SECRET)
        first = verifier.verify(jwts[0])
        again = verifier.verify(jwts[0])
        other = verifier.verify(jwts[1])
        assert first == again and first.room_config == again.room_config
        assert first != other and first.room_config.agents != other.room_config.agents
        # A message is not equal to its JSON object, in either library.
        assert first.room_config != {"agents": [{"agentName": "a"}]}
        receiver = api.WebhookReceiver(verifier)
        auths = [api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt() for digest in digests]
        events = [receiver.receive(body, auth) for body, auth in zip(bodies, auths)]
        assert events[0] == receiver.receive(bodies[0], auths[0])
        assert events[0] != events[1] and events[0].room != events[1].room
