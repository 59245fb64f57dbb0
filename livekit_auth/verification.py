"""Verifying LiveKit access tokens: strict HS256 JWT (RFC 7519, RFC 8725)."""

from __future__ import annotations

import datetime
import hmac
import time
from typing import Callable, Mapping, Optional

from ._strict import b64url_decode, loads_object
from .errors import BadSignature, MalformedToken, TokenExpired, TokenNotYetValid, WrongIssuer
from .tokens import Claims, SIPGrants, VideoGrants, _is_string_map
from .webhook import _Field, _Message

# LiveKit's own leeway for clock skew between the token's minter and its reader.
DEFAULT_LEEWAY = datetime.timedelta(minutes=1)

# Far above any real token (metadata and room config included), far below
# anything that would make verifying it costly.
MAX_TOKEN_LENGTH = 64 * 1024

# Grant claims of livekit-api 1.2; video and sip are read into Claims, the others stay in payload.
_GRANT_CLAIMS = (
    "video",
    "sip",
    "inference",
    "observability",
    "agent",
    "agentEndpoint",
    "agentThread",
)
# The SDK reads these three as absent when null, and fails on null for the others.
_NULLABLE_GRANT_CLAIMS = ("agent", "agentEndpoint", "agentThread")

# Claims whose type LiveKit fixes, read into Claims when present.
_STRING_CLAIMS = ("sub", "name", "kind", "metadata", "sha256", "roomPreset", "jti")


class _ClaimMessage(_Message):
    """A message in a token's roomConfig claim: a field of the wrong type raises MalformedToken."""

    _error_class = MalformedToken
    _source = "roomConfig"


# livekit-api 1.2's RoomConfiguration (livekit_room.proto; egress only in to_dict()) and its
# RoomAgentDispatch (livekit_agent_dispatch.proto), read by attribute as WebhookEvent is.


class RoomAgentDispatch(_ClaimMessage):
    agent_name = _Field(str)
    metadata = _Field(str)
    deployment = _Field(str)
    restart_policy = _Field(str, "JRP_ON_FAILURE")
    attributes = _Field(dict)


class RoomConfiguration(_ClaimMessage):
    name = _Field(str)
    metadata = _Field(str)
    empty_timeout = _Field(int)
    departure_timeout = _Field(int)
    max_participants = _Field(int)
    min_playout_delay = _Field(int)
    max_playout_delay = _Field(int)
    sync_streams = _Field(bool)
    agents = _Field(list, item=RoomAgentDispatch)
    tags = _Field(dict)


def _numeric_date(payload: dict, name: str) -> Optional[int]:
    # RFC 7519 §2 allows fractions, but every LiveKit minter writes whole
    # seconds, and PyJWT truncates: an integer is the one unambiguous form.
    value = payload.get(name)
    if type(value) is not int and name in payload:
        raise MalformedToken(f"{name} claim must be an integer")
    return value


def _decode_segment(segment: str, what: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError:
        raise MalformedToken(f"token {what} is not canonical unpadded base64url") from None


def _load_segment(raw: bytes, what: str) -> dict:
    try:
        return loads_object(raw)
    except ValueError:
        raise MalformedToken(f"token {what} is not a JSON object") from None


class TokenVerifier:
    """Verifies tokens signed with one API key, or several during key rotation.

    `keys` maps API key to API secret; api_key/api_secret add one more pair.
    The token's iss names the key; its signature must match that key's secret.
    """

    def __init__(
        self,
        api_key: str = "",
        api_secret: str = "",
        *,
        keys: Optional[Mapping[str, str]] = None,
        leeway: datetime.timedelta = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        pairs = dict(keys or {})
        if api_key or api_secret:
            pairs[api_key] = api_secret
        if not pairs:
            raise ValueError("at least one api_key and api_secret pair is required")
        for key, secret in pairs.items():
            if type(key) is not str or type(secret) is not str or not key or not secret:
                raise ValueError("api_key and api_secret must be non-empty strings")
        self._secrets = {key: secret.encode("utf-8") for key, secret in pairs.items()}
        self._leeway = leeway.total_seconds()
        self._clock = clock

    def verify(self, token: str, *, now: Optional[float] = None) -> Claims:
        """Verify an access token and return its claims.

        Checked, in this order: three canonical base64url segments; the HS256 MAC over the exact
        bytes received, in constant time, before any JSON is read; the header is a JSON object
        with alg exactly "HS256" and no crit or b64 and a string kid if any; the payload is a JSON
        object; iss is the key whose secret matched; exp is present, an integer and not past (with
        leeway); nbf and iat, when present, integers and not in the future (with leeway); no aud;
        LiveKit's claims have their types.

        Raises a LiveKitAuthError subclass, and nothing else, for any input.
        """
        if type(token) is not str:
            raise MalformedToken("token must be a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken("token is too long")
        segments = token.split(".")
        if len(segments) != 3:
            raise MalformedToken("token must have three dot-separated segments")
        header_raw, payload_raw, signature = map(
            _decode_segment, segments, ("header", "payload", "signature")
        )

        # Segments are canonical base64url, hence ASCII: this is the exact input that was signed.
        signing_input = token[: len(segments[0]) + 1 + len(segments[1])].encode("ascii")
        signed_by = [
            key
            for key, secret in self._secrets.items()
            if hmac.compare_digest(hmac.digest(secret, signing_input, "sha256"), signature)
        ]
        if not signed_by:
            raise BadSignature("token signature does not match")

        header = _load_segment(header_raw, "header")
        # The algorithm is pinned, never taken from the token (RFC 8725 §3.1).
        if header.get("alg") != "HS256":
            raise MalformedToken("token alg must be HS256")
        # We implement no JWS extension, so none may be critical (RFC 7515 §4.1.11).
        if "crit" in header or "b64" in header:
            raise MalformedToken("token header uses an unsupported extension")
        if "kid" in header and type(header["kid"]) is not str:
            raise MalformedToken("token kid must be a string")

        payload = _load_segment(payload_raw, "payload")
        issuer = payload.get("iss")
        if type(issuer) is not str or issuer not in signed_by:
            raise WrongIssuer("token issuer is not the API key that signed it")
        return self._check_claims(payload, issuer, self._clock() if now is None else now)

    def _check_times(self, payload: dict, now: float) -> tuple:
        """(exp, nbf) of a token that is valid at `now`, within the leeway; nbf may be None."""
        expires_at = _numeric_date(payload, "exp")
        if expires_at is None:
            raise MalformedToken("token has no exp claim")
        not_before = _numeric_date(payload, "nbf")
        issued_at = _numeric_date(payload, "iat")
        if expires_at <= now - self._leeway:
            raise TokenExpired("token has expired")
        if not_before is not None and not_before > now + self._leeway:
            raise TokenNotYetValid("token is not valid yet (nbf)")
        if issued_at is not None and issued_at > now + self._leeway:
            raise TokenNotYetValid("token is not valid yet (iat)")
        return expires_at, not_before

    def _check_claims(self, payload: dict, issuer: str, now: float) -> Claims:
        expires_at, not_before = self._check_times(payload, now)
        # LiveKit tokens have no audience; PyJWT rejects one it was not told to expect.
        if "aud" in payload:
            raise MalformedToken("token has an aud claim")
        for name in _STRING_CLAIMS:
            if name in payload and type(payload[name]) is not str:
                raise MalformedToken(f"{name} claim must be a string")
        attributes = payload.get("attributes", {})
        if not _is_string_map(attributes):
            raise MalformedToken("attributes claim must map strings to strings")
        room_config = payload.get("roomConfig")
        if room_config is not None and type(room_config) is not dict:
            raise MalformedToken("roomConfig claim must be an object")
        # As the SDK: None when absent or empty, else read by attribute (fields checked when read).
        room_config = RoomConfiguration(room_config) if room_config else None
        # Grant claims are objects, as the SDK requires: video and sip, when present, are dicts.
        for name in _GRANT_CLAIMS:
            value = payload.get(name, {})
            if type(value) is not dict and not (value is None and name in _NULLABLE_GRANT_CLAIMS):
                raise MalformedToken(f"{name} claim must be an object")
        try:
            video = VideoGrants.from_wire(payload["video"]) if "video" in payload else None
            sip = SIPGrants.from_wire(payload["sip"]) if "sip" in payload else None
        except ValueError:
            raise MalformedToken("token grants have a field of the wrong type") from None

        return Claims(
            identity=payload.get("sub", ""),
            name=payload.get("name", ""),
            kind=payload.get("kind", ""),
            metadata=payload.get("metadata", ""),
            video=video,
            sip=sip,
            attributes=attributes,
            sha256=payload.get("sha256", ""),
            room_preset=payload.get("roomPreset", ""),
            room_config=room_config,
            issuer=issuer,
            not_before=not_before,
            expires_at=expires_at,
            payload=payload,
        )
