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
from .tokens import Claims

if TYPE_CHECKING:  # for annotations only: verification imports this module
    from .verification import TokenVerifier

# Standard base64 (RFC 4648 §4) of 32 bytes: 43 characters and one "=".
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


def _absent(default: object) -> object:
    """What an absent (or null) field reads as, as protobuf reads it."""
    if type(default) is list:
        return []
    if isinstance(default, type):
        return default({})
    return default


def _convert(value: object, default: object) -> object:
    """`value` read as the kind `default` gives, or _WRONG_TYPE."""
    if type(default) is list:
        # [a message class]: a repeated field of that message.
        if type(value) is list and all(type(item) is dict for item in value):
            return [default[0](item) for item in value]
    elif default is dict:
        # A map of strings to strings.
        if type(value) is dict and all(type(v) is str for v in value.values()):
            return dict(value)
    elif isinstance(default, type):
        # A message class.
        if type(value) is dict:
            return default(value)
    elif type(default) is int:
        if type(value) is int or type(value) is str and _INTEGER.fullmatch(value):
            return int(value)
    elif type(value) is type(default):
        # A string, an enum's name, or a bool.
        return value
    return _WRONG_TYPE


_WRONG_TYPE = object()


def _field(name: str, default: object) -> property:
    """Reads field `name` by its JSON name; `default`: what an absent one reads as, and its kind."""
    first, *rest = name.split("_")
    # protobuf's JSON name: lowerCamelCase.
    wire = first + "".join(word.title() for word in rest)

    def read(message: _Message) -> object:
        value = message._data.get(wire)
        if value is None:
            # protobuf also reads a field by its own name (snake_case).
            value = message._data.get(name)
        if value is None:
            return _absent(default)
        converted = _convert(value, default)
        if converted is _WRONG_TYPE:
            raise message._error_class(f"{message._source} field {wire} has the wrong type")
        return converted

    return property(read)


def _message(
    name: str, strings: str = "", ints: str = "", base: type = _Message, **others: object
) -> type:
    """A subclass of `base` with these fields: strings, ints, and others with their defaults."""
    fields = {**dict.fromkeys(strings.split(), ""), **dict.fromkeys(ints.split(), 0), **others}
    return type(name, (base,), {attr: _field(attr, default) for attr, default in fields.items()})


# The fields handlers read most, of livekit-api 1.2's messages (livekit_webhook.proto,
# livekit_models.proto, livekit_egress.proto, livekit_ingress.proto, livekit_agent.proto).
# An enum reads as its name; its default is the name of its value 0. tests/test_parity.py
# checks each field against the SDK.
_Room = _message(
    "Room", "sid name metadata", "num_participants creation_time empty_timeout max_participants"
)
_ParticipantInfo = _message(
    "ParticipantInfo",
    "sid identity name metadata",
    "joined_at",
    state="JOINING",
    kind="STANDARD",
    attributes=dict,
)
_TrackInfo = _message(
    "TrackInfo", "sid name mime_type", "width height", muted=False, type="AUDIO", source="UNKNOWN"
)
_EgressInfo = _message(
    "EgressInfo",
    "egress_id room_id room_name error",
    "started_at ended_at",
    status="EGRESS_STARTING",
)
_IngressInfo = _message(
    "IngressInfo",
    "ingress_id name stream_key url room_name participant_identity participant_name",
    input_type="RTMP_INPUT",
    state=_message("IngressState", status="ENDPOINT_INACTIVE"),
)
_EVENT = _message(
    "WebhookEvent",
    "event id",
    "created_at num_dropped",
    room=_Room,
    participant=_ParticipantInfo,
    track=_TrackInfo,
    egress_info=_EgressInfo,
    ingress_info=_IngressInfo,
    job=_message("Job", "id agent_name", type="JT_ROOM"),
)


class WebhookEvent(_EVENT):
    """A webhook event read by attribute, with the SDK's snake_case names: event.room.name,
    event.created_at.

    WebhookEvent(data) reads a parsed event (read_event's dict, or a stored to_dict()); to_dict()
    gives it back. As in protobuf, absent fields and messages read as their defaults ("", 0, False,
    {}, an empty message) and int64 strings as int; an enum reads as its name ("VIDEO") where the
    SDK gives its number. Only the fields in the tables above are attributes (to_dict() has all); a
    value of the wrong type raises MalformedWebhook.
    """


class WebhookReceiver:
    """Checks that a webhook request was signed by LiveKit and returns its event (the SDK's
    receive).
    """

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def receive(
        self, body: Union[bytes, str], auth_token: str, *, now: Optional[float] = None
    ) -> WebhookEvent:
        """Verify a webhook request and return its event; for any input, raises only
        LiveKitAuthError subclasses.
        """
        # The steps are the public ones: authorize(auth_token), read_event(), WebhookEvent.
        return WebhookEvent(self.read_event(body, self.authorize(auth_token, now=now)))

    def authorize(self, authorization: str, *, now: Optional[float] = None) -> Claims:
        """Verify a webhook's Authorization header alone, so a server can refuse before reading the
        body.

        `authorization` is the bare JWT LiveKit sends, or the same with a "Bearer " prefix (which
        the SDK refuses). The token must verify (see TokenVerifier.verify) and carry a sha256 claim
        in padded standard base64; a token without one is never a webhook, or any access token would
        pass.
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
    """The body digest a webhook token signs. Raises MalformedToken if it has none, or a malformed
    one.
    """
    if not claims.sha256:
        raise MalformedToken("token has no sha256 claim: not a webhook token")
    if not _SHA256_BASE64.fullmatch(claims.sha256):
        raise MalformedToken("sha256 claim is not padded standard base64 of 32 bytes")
    return base64.b64decode(claims.sha256)
