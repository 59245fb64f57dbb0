"""Verifying LiveKit webhook requests.

LiveKit Server POSTs the event as JSON (Content-Type application/webhook+json)
and puts a JWT in Authorization whose sha256 claim is the standard, padded
base64 of SHA-256 over the exact body bytes. The body is protobuf-JSON (int64
as strings, spacing LiveKit chooses), so it is hashed as received, never
re-serialized.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Optional, Union

from ._strict import loads_object
from .errors import MalformedToken, MalformedWebhook, WebhookBodyMismatch
from .verification import Claims, TokenVerifier

# Standard base64 (RFC 4648 §4) of 32 bytes: 43 characters and one "=".
_SHA256_BASE64 = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")

# WebhookEvent fields that hold messages (protobuf JSON names).
_EVENT_OBJECTS = ("room", "participant", "track", "egressInfo", "ingressInfo", "job")


class WebhookReceiver:
    """Checks that a webhook request was signed by LiveKit and returns its event."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def receive(
        self, body: Union[bytes, str], authorization: str, *, now: Optional[float] = None
    ) -> dict:
        """Verify a webhook request and return the event as a dict: authorize(), then read_event().

        Raises a LiveKitAuthError subclass, and nothing else, for any input.
        """
        return self.read_event(body, self.authorize(authorization, now=now))

    def authorize(self, authorization: str, *, now: Optional[float] = None) -> Claims:
        """Verify a webhook's Authorization header alone, so a server can refuse before reading the body.

        `authorization` is the bare JWT LiveKit sends, or the same with a
        "Bearer " prefix (which the SDK refuses). The token must verify (see
        TokenVerifier.verify) and carry a sha256 claim in padded standard
        base64; a token without one is never a webhook, or any access token
        would pass.
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

        The event must be a JSON object with a non-empty string "event", a
        string "id" if any, and objects for the message fields handlers read
        first (room, participant, track, egressInfo, ingressInfo, job). Deeper
        structure is LiveKit's protobuf schema, which grows with each release,
        and is not checked: the signature already proves who sent it.
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
        if type(event.get("id", "")) is not str or any(
            type(event[name]) is not dict for name in _EVENT_OBJECTS if name in event
        ):
            raise MalformedWebhook("body does not have the shape of a LiveKit event")
        return event


def _signed_digest(claims: Claims) -> bytes:
    """The body digest a webhook token signs. Raises MalformedToken if it has none, or a malformed one."""
    if not claims.sha256:
        raise MalformedToken("token has no sha256 claim: not a webhook token")
    if not _SHA256_BASE64.fullmatch(claims.sha256):
        raise MalformedToken("sha256 claim is not padded standard base64 of 32 bytes")
    return base64.b64decode(claims.sha256)
