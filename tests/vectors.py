"""Golden vectors: tokens made by the official SDK, and the RFC 7520 §4.4 HS256 example.

The LiveKit vectors are in tests/livekit-vectors.json. They were produced with livekit-api
1.2.2 and PyJWT 2.15.1, key "devkey", secret "secret", the SDK clock frozen at
now = 1735689600 (2025-01-01T00:00:00Z); each vector's `made_with` records
the SDK call, e.g. for "tutorial-token":

    AccessToken().with_identity("Participant42")
        .with_grants(VideoGrants(room_join=True, room="Test Room")).to_jwt()

"server-webhook" reproduces what LiveKit Server (Go, livekit/protocol webhook
sender) puts in a webhook's Authorization header; livekit-api's
WebhookReceiver accepted it at now = 1735689607.

Also here: `sign`, which MACs arbitrary header and payload bytes, so tests can
craft tokens whose signature is valid and reach the checks behind it. It uses
only hmac and base64, not livekit_auth, so it cannot share a bug with it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Optional, Union

VECTORS_PATH = Path(__file__).resolve().parent / "livekit-vectors.json"


@dataclasses.dataclass(frozen=True)
class GoldenVector:
    name: str
    made_with: str
    now: int
    jwt: str
    header: dict
    payload: dict
    body: Optional[bytes]  # webhook vectors only: the exact bytes that were hashed


def _load() -> tuple[str, str, dict[str, GoldenVector]]:
    try:
        document = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(f"golden vectors missing: expected {VECTORS_PATH}") from None
    vectors = {}
    for raw in document["vectors"]:
        body = raw.get("body")
        vectors[raw["name"]] = GoldenVector(
            name=raw["name"],
            made_with=raw["made_with"],
            now=raw["now"],
            jwt=raw["jwt"],
            header=raw["header"],
            payload=raw["payload"],
            body=None if body is None else body.encode("utf-8"),
        )
    expected = {"empty-token", "tutorial-token", "rich-token", "sdk-webhook", "server-webhook"}
    if set(vectors) != expected:
        raise RuntimeError(f"{VECTORS_PATH} holds {sorted(vectors)}, expected {sorted(expected)}")
    return document["api_key"], document["api_secret"], vectors


API_KEY, API_SECRET, VECTORS = _load()
TOKEN_VECTORS = [v for v in VECTORS.values() if v.body is None]
WEBHOOK_VECTORS = [v for v in VECTORS.values() if v.body is not None]


def b64url(raw: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(
    header: bytes,
    payload: bytes,
    secret: Union[str, bytes] = API_SECRET,
    *,
    header_segment: Optional[str] = None,
    payload_segment: Optional[str] = None,
) -> str:
    """A compact JWS over exactly these bytes with a valid HS256 MAC.

    The segments default to the canonical base64url of header and payload;
    pass them to sign a non-canonical spelling (padding, say) as it stands.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if header_segment is None:
        header_segment = b64url(header)
    if payload_segment is None:
        payload_segment = b64url(payload)
    signing_input = f"{header_segment}.{payload_segment}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def body_sha256(body: bytes) -> str:
    """The webhook sha256 claim: padded standard base64 of SHA-256 over the body."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


# RFC 7520 §4.4 (HMAC-SHA2 integrity protection), compact serialization.
# Key: the "k" of the symmetric key of §3.5 (kid 018c0ae5-...), 32 raw bytes.
RFC7520_KEY = base64.urlsafe_b64decode("hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg=")
# §4.4.2: the JWS Protected Header, serialized without whitespace.
RFC7520_HEADER = b'{"alg":"HS256","kid":"018c0ae5-4d9b-471b-bfd6-eef314bc7037"}'
# §4: the payload (UTF-8, with U+2019 apostrophes), not JSON.
RFC7520_PAYLOAD = (
    "It\u2019s a dangerous business, Frodo, going out your door. You step onto the "
    "road, and if you don't keep your feet, there\u2019s no knowing where you might "
    "be swept off to."
).encode("utf-8")
# §4.4.3: the complete JWS. Cross-checked against our own HMAC in test_strict.py.
RFC7520_COMPACT = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9"
    ".SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IH"
    "N0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG"
    "5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4"
    ".s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0"
)
