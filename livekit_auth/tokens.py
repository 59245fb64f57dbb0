"""LiveKit access tokens: HS256 JWTs with the claims LiveKit Server reads."""

# The names and defaults mirror livekit-api's `livekit.api.access_token`, so code
# moves between the two with an import change. Claims are written in the SDK's
# order and serialization, so for the same input and clock both produce the same
# token, byte for byte.

from __future__ import annotations

import dataclasses
import datetime
import hmac
import json
import math
import time
from typing import List, Optional

from ._strict import b64url_encode, dumps_compact

# The SDK's default lifetime. LiveKit checks exp only when a participant
# connects; an established session outlives its token.
DEFAULT_TTL = datetime.timedelta(hours=6)

# base64url of {"alg":"HS256","typ":"JWT"}, the header PyJWT writes.
_HEADER_SEGMENT = b64url_encode(b'{"alg":"HS256","typ":"JWT"}')

# Wire names of the video grant, in the SDK's field order. One explicit table,
# used both ways: for writing tokens and for reading them back.
VIDEO_WIRE_NAMES = {
    "room_create": "roomCreate",
    "room_list": "roomList",
    "room_record": "roomRecord",
    "room_admin": "roomAdmin",
    "room_join": "roomJoin",
    "room": "room",
    "destination_room": "destinationRoom",
    "can_publish": "canPublish",
    "can_subscribe": "canSubscribe",
    "can_publish_data": "canPublishData",
    "can_publish_sources": "canPublishSources",
    "can_update_own_metadata": "canUpdateOwnMetadata",
    "ingress_admin": "ingressAdmin",
    "hidden": "hidden",
    "recorder": "recorder",
    "agent": "agent",
    "can_manage_agent_session": "canManageAgentSession",
    "can_subscribe_metrics": "canSubscribeMetrics",
}


# What a grant field holds where it is not a bool. None is allowed where it is the default.
_GRANT_KINDS = {"room": str, "destination_room": str, "can_publish_sources": list}


def _has_kind(value: object, kind: type) -> bool:
    if kind is list:
        # A list of strings; a tuple of strings too, which the SDK also writes as a JSON array.
        return type(value) in (list, tuple) and all(type(item) is str for item in value)
    return type(value) is kind


def _check_fields(grants: object) -> None:
    """Check each field's type exactly (True is not a str); None only where it is the default."""
    for field in dataclasses.fields(grants):
        value = getattr(grants, field.name)
        if value is None and field.default is None:
            continue
        if not _has_kind(value, _GRANT_KINDS.get(field.name, bool)):
            raise ValueError(f"grant field {field.name} has the wrong type")


# Grants are mutable, as the SDK's: checked when built, and again by to_wire when a token is signed.
@dataclasses.dataclass(kw_only=True)
class VideoGrants:
    """Permissions in LiveKit's `video` claim. Defaults are the SDK's."""

    room_create: Optional[bool] = None
    room_list: Optional[bool] = None
    room_record: Optional[bool] = None
    room_admin: Optional[bool] = None
    room_join: Optional[bool] = None
    room: str = ""
    destination_room: Optional[str] = None
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    # When set, only these track sources ("camera", "microphone", ...) may be published.
    can_publish_sources: Optional[List[str]] = None
    can_update_own_metadata: Optional[bool] = None
    ingress_admin: Optional[bool] = None
    hidden: Optional[bool] = None
    recorder: Optional[bool] = None
    agent: Optional[bool] = None
    can_manage_agent_session: Optional[bool] = None
    can_subscribe_metrics: Optional[bool] = None

    def __post_init__(self) -> None:
        _check_fields(self)

    def to_wire(self) -> dict:
        """The claim as the SDK writes it: camelCase, None and "" left out. Raises ValueError."""
        _check_fields(self)
        values = {wire: getattr(self, name) for name, wire in VIDEO_WIRE_NAMES.items()}
        return {
            wire: list(v) if type(v) is tuple else v
            for wire, v in values.items()
            if v is not None and v != ""
        }

    @classmethod
    def from_wire(cls, claim: dict) -> "VideoGrants":
        """Read a `video` claim; unknown names are ignored, as LiveKit does. Raises ValueError."""
        return cls(
            **{name: claim[wire] for name, wire in VIDEO_WIRE_NAMES.items() if wire in claim}
        )


@dataclasses.dataclass(kw_only=True)
class SIPGrants:
    """Permissions in LiveKit's `sip` claim."""

    admin: bool = False
    call: bool = False

    def __post_init__(self) -> None:
        _check_fields(self)

    def to_wire(self) -> dict:
        _check_fields(self)
        return {"admin": self.admin, "call": self.call}

    @classmethod
    def from_wire(cls, claim: dict) -> "SIPGrants":
        return cls(**{name: claim[name] for name in ("admin", "call") if name in claim})


def _require_str(value: object, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a string")
    return value


def _require_grants(grants: object, kind: type) -> object:
    if not isinstance(grants, kind):
        raise ValueError(f"grants must be {kind.__name__}")
    return grants


def _is_string_map(value: object) -> bool:
    """A dict of strings to strings (attributes, and the map fields of LiveKit's messages)."""
    if type(value) is not dict:
        return False
    return all(type(key) is str and type(item) is str for key, item in value.items())


def _copy_attributes(attributes: object) -> dict:
    """A copy of `attributes`, which must be a dict of strings to strings. Raises ValueError."""
    if not _is_string_map(attributes):
        raise ValueError("attributes must be a dict of strings to strings")
    return dict(attributes)


def _copy_room_config(config: object) -> dict:
    """A copy of `config`, which must be a JSON object, made through JSON. Raises ValueError."""
    if type(config) is not dict:
        raise ValueError("room config must be a JSON object")
    try:
        # A copy through JSON: later changes to `config` do not reach the
        # token, and what cannot be written as JSON fails here.
        return json.loads(dumps_compact(config))
    except (TypeError, ValueError, RecursionError):
        raise ValueError("room config must hold only JSON values, nested within reason") from None


@dataclasses.dataclass(kw_only=True)
class Claims:
    """What a token says: AccessToken.claims while built, and what TokenVerifier.verify returns.

    The SDK's field names, and mutable like its Claims. A builder's room_config is the JSON object;
    verify gives a RoomConfiguration read by attribute (None when absent or empty, as the SDK) and
    reads absent attributes as {}. Unset claims read as these defaults; only verify sets issuer,
    not_before, expires_at and payload.
    """

    identity: str = ""
    name: str = ""
    kind: str = ""
    metadata: str = ""
    video: Optional[VideoGrants] = None
    sip: Optional[SIPGrants] = None
    attributes: Optional[dict] = None
    sha256: str = ""
    room_preset: str = ""
    room_config: Optional[object] = None  # a dict in a builder, a RoomConfiguration from verify
    issuer: str = ""
    not_before: Optional[int] = None
    expires_at: Optional[int] = None
    payload: dict = dataclasses.field(default_factory=dict)  # every claim, as verify decoded it


# Claims fields to_jwt writes before sub, iss, nbf and exp: the SDK's order, and their wire names.
_PAYLOAD_ORDER = (
    ("name", "name"),
    ("kind", "kind"),
    ("metadata", "metadata"),
    ("video", "video"),
    ("sip", "sip"),
    ("attributes", "attributes"),
    ("sha256", "sha256"),
    ("room_preset", "roomPreset"),
    ("room_config", "roomConfig"),
)

# Claims fields to_jwt writes as strings when set; None and "" are left out, as by the SDK.
_STRING_FIELDS = ("name", "kind", "metadata", "sha256", "room_preset")


def _check_claims_to_sign(claims: Claims) -> None:
    """Check what to_jwt writes as the with_* calls check it, for claims set directly."""
    _require_str(claims.identity, "identity")
    for field in _STRING_FIELDS:
        value = getattr(claims, field)
        if value is not None:
            _require_str(value, field)
    if claims.video is not None:
        _require_grants(claims.video, VideoGrants)
    if claims.sip is not None:
        _require_grants(claims.sip, SIPGrants)
    if claims.attributes is not None:
        _copy_attributes(claims.attributes)
    if claims.room_config is not None:
        _copy_room_config(claims.room_config)


class AccessToken:
    """Builds one access token: with_* calls (ValueError for a wrong type), then to_jwt()."""

    # As in the SDK, the with_* calls set fields of `claims`, which code may also set directly
    # (to_jwt checks them all), and `ttl` is the lifetime.

    def __init__(self, api_key: str, api_secret: str) -> None:
        # Unlike the SDK, no fallback to environment variables: the caller decides.
        if type(api_key) is not str or type(api_secret) is not str or not api_key or not api_secret:
            raise ValueError("api_key and api_secret must be non-empty strings")
        self.api_key = api_key
        self._secret = api_secret.encode("utf-8")
        self.ttl = DEFAULT_TTL
        self.claims = Claims()

    @property
    def identity(self) -> str:
        """The identity (sub claim), as the SDK's AccessToken.identity; also in claims.identity."""
        return self.claims.identity

    @identity.setter
    def identity(self, identity: str) -> None:
        self.claims.identity = identity

    def _set(self, field: str, value: object) -> "AccessToken":
        setattr(self.claims, field, value)
        return self

    def with_identity(self, identity: str) -> "AccessToken":
        return self._set("identity", _require_str(identity, "identity"))

    def with_name(self, name: str) -> "AccessToken":
        return self._set("name", _require_str(name, "name"))

    def with_kind(self, kind: str) -> "AccessToken":
        return self._set("kind", _require_str(kind, "kind"))

    def with_metadata(self, metadata: str) -> "AccessToken":
        return self._set("metadata", _require_str(metadata, "metadata"))

    def with_attributes(self, attributes: dict) -> "AccessToken":
        return self._set("attributes", _copy_attributes(attributes))

    def with_ttl(self, ttl: datetime.timedelta) -> "AccessToken":
        # Any length, as in the SDK: zero or less makes a token that has already expired.
        if not isinstance(ttl, datetime.timedelta):
            raise ValueError("ttl must be a timedelta")
        self.ttl = ttl
        return self

    def with_grants(self, grants: VideoGrants) -> "AccessToken":
        return self._set("video", _require_grants(grants, VideoGrants))

    def with_sip_grants(self, grants: SIPGrants) -> "AccessToken":
        return self._set("sip", _require_grants(grants, SIPGrants))

    def with_sha256(self, sha256: str) -> "AccessToken":
        return self._set("sha256", _require_str(sha256, "sha256"))

    def with_room_preset(self, preset: str) -> "AccessToken":
        return self._set("room_preset", _require_str(preset, "room preset"))

    def with_room_config(self, config: dict) -> "AccessToken":
        """A RoomConfiguration as a JSON object (agent dispatch lives here), written as given."""
        # LiveKit Server reads it with protojson, which takes both snake_case and
        # camelCase names; it is not converted, since map keys inside must stay as they are.
        return self._set("room_config", _copy_room_config(config))

    def to_jwt(self, *, now: Optional[float] = None) -> str:
        """Sign the claims with HS256. `now` (Unix seconds) defaults to the system clock.

        Raises ValueError when a claim has the wrong type, or when the grant joins a room
        without an identity or a room.
        """
        now = time.time() if now is None else now
        claims = self.claims
        _check_claims_to_sign(claims)
        video = claims.video
        if video is not None and video.room_join and (not claims.identity or not video.room):
            raise ValueError("identity and room must be set when joining a room")
        # The payload in the SDK's key order, leaving out unset claims (None) and "" as it does.
        payload = {}
        for field, wire in _PAYLOAD_ORDER:
            value = getattr(claims, field)
            if value is not None and value != "":
                payload[wire] = value.to_wire() if field in ("video", "sip") else value
        payload.update(sub=claims.identity, iss=self.api_key, nbf=math.floor(now))
        payload["exp"] = math.floor(now + self.ttl.total_seconds())
        signing_input = f"{_HEADER_SEGMENT}.{b64url_encode(dumps_compact(payload).encode('ascii'))}"
        signature = hmac.digest(self._secret, signing_input.encode("ascii"), "sha256")
        return f"{signing_input}.{b64url_encode(signature)}"
