"""Verifying LiveKit webhook requests, and reading their events."""

# LiveKit Server POSTs the event as JSON (Content-Type application/webhook+json)
# and puts a JWT in Authorization whose sha256 claim is the standard, padded
# base64 of SHA-256 over the exact body bytes. The body is protobuf-JSON (int64
# as strings, spacing LiveKit chooses), so it is hashed as received, never
# re-serialized, and read field by field as protobuf would read it.

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Optional, Union

from ._strict import loads_object
from .errors import MalformedToken, MalformedWebhook, WebhookBodyMismatch
from .tokens import Claims, _is_string_map

if TYPE_CHECKING:  # for annotations only: verification imports this module
    from .verification import TokenVerifier

# Standard base64 (RFC 4648 §4) of 32 bytes: 43 characters and one "=". The 43rd holds the last
# 4 bits and two zero bits, so only the characters whose value is a multiple of 4 can end it.
_SHA256_BASE64 = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")

# WebhookEvent fields that hold messages (protobuf JSON names).
_EVENT_OBJECTS = ("room", "participant", "track", "egressInfo", "ingressInfo", "job")

# protobuf-JSON writes int64 as a string; at most 20 digits, so int() stays cheap.
_INTEGER = re.compile(r"-?[0-9]{1,20}")


class _Message:
    """A protobuf message read from its JSON object (protobuf-JSON, as LiveKit writes it)."""

    # What a value of the wrong type raises, and where the JSON came from, for its message.
    _error_class = MalformedWebhook
    _source = "event"

    def __init__(self, data: dict) -> None:
        if type(data) is not dict:
            raise self._error_class(f"{self._source} is not a JSON object")
        self._data = data

    def to_dict(self) -> dict:
        """The JSON object read (the same dict, not a copy)."""
        return self._data

    def __eq__(self, other: object) -> bool:
        # As protobuf messages compare: the same type, and the same content.
        return type(other) is type(self) and other._data == self._data


def _is_int64(value: object) -> bool:
    # protobuf-JSON writes int64 as a string, and reads a number too.
    if type(value) is str:
        return _INTEGER.fullmatch(value) is not None
    return type(value) is int


def _is_list_of_objects(value: object) -> bool:
    return type(value) is list and all(type(item) is dict for item in value)


class _Field:
    """A field of a message, read by attribute from the JSON as protobuf reads it."""

    # kind: str, int (int64 too), bool, dict (a map of strings), a message class, or list
    # (repeated, of the message class `item`). An enum is a str, read as its name; its
    # `default` is the name of its value 0. Absent or null, a field reads as its default.

    def __init__(self, kind: type, default: object = None, item: Optional[type] = None) -> None:
        self.kind = kind
        self.default = default
        self.item = item

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        # protobuf's JSON name: lowerCamelCase.
        first, *rest = name.split("_")
        self.wire = first + "".join(word.title() for word in rest)

    def __get__(self, message: Optional[_Message], owner: type) -> object:
        if message is None:
            return self
        value = message._data.get(self.wire)
        if value is None:
            # protobuf also reads a field by its own name (snake_case).
            value = message._data.get(self.name)
        if value is None:
            return self.absent()
        if not self.has_kind(value):
            raise message._error_class(f"{message._source} field {self.wire} has the wrong type")
        if self.kind is list:
            return [self.item(item) for item in value]
        # int() reads an int64 string, dict() copies a map, a message class wraps its object;
        # str() and bool() give back the value they are given.
        return self.kind(value)

    def __set__(self, message: _Message, value: object) -> None:
        # Read-only, as the fields read: a value set here would disagree with to_dict().
        raise AttributeError(f"field {self.name} is read-only")

    def __delete__(self, message: _Message) -> None:
        raise AttributeError(f"field {self.name} is read-only")

    def absent(self) -> object:
        if self.default is not None:
            return self.default
        if issubclass(self.kind, _Message):
            return self.kind({})
        return self.kind()

    def has_kind(self, value: object) -> bool:
        if self.kind is int:
            return _is_int64(value)
        if self.kind is dict:
            return _is_string_map(value)
        if self.kind is list:
            return _is_list_of_objects(value)
        if issubclass(self.kind, _Message):
            return type(value) is dict
        return type(value) is self.kind


# The fields handlers read most, of livekit-api 1.2's messages (livekit_webhook.proto,
# livekit_models.proto, livekit_egress.proto, livekit_ingress.proto, livekit_agent.proto).
# tests/test_parity.py checks each field against the SDK.


class Room(_Message):
    sid = _Field(str)
    name = _Field(str)
    metadata = _Field(str)
    num_participants = _Field(int)
    creation_time = _Field(int)
    empty_timeout = _Field(int)
    max_participants = _Field(int)


class ParticipantInfo(_Message):
    sid = _Field(str)
    identity = _Field(str)
    name = _Field(str)
    metadata = _Field(str)
    joined_at = _Field(int)
    state = _Field(str, "JOINING")
    kind = _Field(str, "STANDARD")
    attributes = _Field(dict)


class TrackInfo(_Message):
    sid = _Field(str)
    name = _Field(str)
    mime_type = _Field(str)
    width = _Field(int)
    height = _Field(int)
    muted = _Field(bool)
    type = _Field(str, "AUDIO")
    source = _Field(str, "UNKNOWN")


class EgressInfo(_Message):
    egress_id = _Field(str)
    room_id = _Field(str)
    room_name = _Field(str)
    error = _Field(str)
    started_at = _Field(int)
    ended_at = _Field(int)
    status = _Field(str, "EGRESS_STARTING")


class IngressState(_Message):
    status = _Field(str, "ENDPOINT_INACTIVE")


class IngressInfo(_Message):
    ingress_id = _Field(str)
    name = _Field(str)
    stream_key = _Field(str)
    url = _Field(str)
    room_name = _Field(str)
    participant_identity = _Field(str)
    participant_name = _Field(str)
    input_type = _Field(str, "RTMP_INPUT")
    state = _Field(IngressState)


class Job(_Message):
    id = _Field(str)
    agent_name = _Field(str)
    type = _Field(str, "JT_ROOM")


class WebhookEvent(_Message):
    """A webhook event read by attribute, with the SDK's names: event.room.name, event.created_at.

    WebhookEvent(data) reads a parsed event (read_event's dict, or a stored to_dict()); to_dict()
    gives it back. As in protobuf, absent fields and messages read as their defaults ("", 0, False,
    {}, an empty message) and int64 strings as int; an enum reads as its name ("VIDEO") where the
    SDK gives its number. Only the fields declared in these classes are attributes (to_dict() has
    all); a value of the wrong type raises MalformedWebhook.
    """

    event = _Field(str)
    id = _Field(str)
    created_at = _Field(int)
    num_dropped = _Field(int)
    room = _Field(Room)
    participant = _Field(ParticipantInfo)
    track = _Field(TrackInfo)
    egress_info = _Field(EgressInfo)
    ingress_info = _Field(IngressInfo)
    job = _Field(Job)


class WebhookReceiver:
    """Checks that LiveKit signed a webhook request, and reads its event (the SDK's receive)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def receive(
        self, body: Union[bytes, str], auth_token: str, *, now: Optional[float] = None
    ) -> WebhookEvent:
        """The event of a verified webhook request; raises only LiveKitAuthError subclasses."""
        # The steps are the public ones: authorize(auth_token), read_event(), WebhookEvent.
        return WebhookEvent(self.read_event(body, self.authorize(auth_token, now=now)))

    def authorize(self, authorization: str, *, now: Optional[float] = None) -> Claims:
        """The claims of Authorization alone, so that a server can refuse before it reads the body.

        `authorization`: the bare JWT LiveKit sends, or with a "Bearer " prefix (the SDK refuses
        that). The token must verify (TokenVerifier.verify) and carry a sha256 claim in padded
        standard base64: without one, any access token would pass as a webhook.
        """
        if type(authorization) is not str or not authorization:
            raise MalformedToken("Authorization is missing")
        if authorization[:7].lower() == "bearer ":
            authorization = authorization[7:]
        claims = self._verifier.verify(authorization, now=now)
        _signed_digest(claims)
        return claims

    def read_event(self, body: Union[bytes, str], claims: Claims) -> dict:
        """The event in `body`, whose SHA-256 must be the sha256 of `claims` (from authorize()).

        The event must be a JSON object with a non-empty string "event", a string "id" if any, and
        objects for the message fields handlers read first (room, participant, track, egressInfo,
        ingressInfo, job).
        """
        if type(body) is str:
            try:
                body = body.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedWebhook("body is not valid UTF-8") from None
        elif type(body) is not bytes:
            raise MalformedWebhook("body must be bytes")
        if not hmac.compare_digest(hashlib.sha256(body).digest(), _signed_digest(claims)):
            raise WebhookBodyMismatch("body does not match the signed sha256")

        try:
            event = loads_object(body)
        except ValueError:
            raise MalformedWebhook("body is not a JSON object") from None
        if type(event.get("event")) is not str or not event["event"]:
            raise MalformedWebhook('body has no "event" string')
        # Deeper structure is LiveKit's protobuf schema, which grows with each
        # release, and is not checked: the signature already proves who sent it.
        if type(event.get("id", "")) is not str or any(
            type(event[name]) is not dict for name in _EVENT_OBJECTS if name in event
        ):
            raise MalformedWebhook("body does not have the shape of a LiveKit event")
        return event


def _signed_digest(claims: Claims) -> bytes:
    """The body digest a webhook token signs; MalformedToken if it has none or a malformed one."""
    if not claims.sha256:
        raise MalformedToken("token has no sha256 claim: not a webhook token")
    if not _SHA256_BASE64.fullmatch(claims.sha256):
        raise MalformedToken("sha256 claim is not padded standard base64 of 32 bytes")
    return base64.b64decode(claims.sha256)
