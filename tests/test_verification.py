"""Verifying access tokens: golden vectors, bad-input tables against the SDK, leeway, key rotation, fuzzing."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import random
from datetime import timedelta
from typing import Optional

import pytest
from livekit import api

import livekit_auth as la
from helpers import JSON_VALUES, freeze_sdk_clock, mutate_bytes, mutate_claims, mutate_text
from vectors import API_KEY, API_SECRET, TOKEN_VECTORS, VECTORS, WEBHOOK_VECTORS, b64url, sign

# PyJWT warns that "secret" is short; it is the golden vectors' (LiveKit dev) secret.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

NOW = 1735689600  # the golden vectors' clock, 2025-01-01T00:00:00Z
VERIFIER = la.TokenVerifier(API_KEY, API_SECRET)
HEADER = b'{"alg":"HS256","typ":"JWT"}'  # what PyJWT writes
DROP = object()  # a claims() argument that removes the claim


def claims(**changes) -> bytes:
    """A valid payload at NOW (compact JSON, as PyJWT writes it), with some claims changed."""
    payload = {"sub": "alice", "iss": API_KEY, "nbf": NOW, "exp": NOW + 600}
    payload.update(changes)
    return json.dumps(
        {k: v for k, v in payload.items() if v is not DROP}, separators=(",", ":")
    ).encode()


def raw_claims(extra: bytes = b"", *, exp: bytes = b"%d" % (NOW + 600)) -> bytes:
    """A payload written by hand, for what json.dumps cannot write: NaN, duplicate keys, huge numbers."""
    return b'{"sub":"alice","iss":"devkey","exp":' + exp + extra + b"}"


def token(payload: Optional[bytes] = None, header: bytes = HEADER, **sign_options) -> str:
    """A token over exactly these bytes with a valid HS256 MAC."""
    return sign(header, claims() if payload is None else payload, **sign_options)


def sdk_verify(tok, monkeypatch, now=NOW, leeway=timedelta(minutes=1)):
    freeze_sdk_clock(monkeypatch, now)
    return api.TokenVerifier(API_KEY, API_SECRET, leeway=leeway).verify(tok)


VALID = token()


def test_crafted_base_token_is_valid_for_both(monkeypatch):
    # The tables below change one thing in this token; it must pass as it is.
    assert VERIFIER.verify(VALID, now=NOW).identity == "alice"
    assert sdk_verify(VALID, monkeypatch).identity == "alice"


# --- Golden vectors ------------------------------------------------------------

EXPECTED_CLAIMS = {
    "empty-token": dict(identity="", video=None, sip=None, attributes={}),
    "tutorial-token": dict(
        identity="Participant42",
        video=la.VideoGrants(room_join=True, room="Test Room"),
        sip=None,
        attributes={},
    ),
    "rich-token": dict(
        identity="alice",
        name="Alice A.",
        kind="standard",
        metadata='{"role":"host"}',
        video=la.VideoGrants(
            room_join=True,
            room="room-1",
            can_publish=False,
            can_publish_sources=["camera", "microphone"],
            can_update_own_metadata=True,
            hidden=False,
        ),
        sip=la.SIPGrants(admin=False, call=True),
        attributes={"team": "red"},
        room_preset="preset-a",
    ),
    "sdk-webhook": dict(
        identity="",
        sha256="M2eJeYgEzkRmvKLw7a2BPK6VtT6DlEUXv/AzOP7WE9o=",
        video=None,
        sip=None,
        attributes={},
    ),
    "server-webhook": dict(
        identity="",
        sha256="yzHxm00GOBs7Pq7z53zFB/Os8ghTn2yF3Hbs2MdiiXw=",
        video=None,
        sip=None,
        attributes={},
    ),
}


@pytest.mark.parametrize("vector", TOKEN_VECTORS + WEBHOOK_VECTORS, ids=lambda v: v.name)
def test_golden_vector_verifies_to_the_exact_claims(vector):
    expected = dict(
        name="",
        kind="",
        metadata="",
        sha256="",
        room_preset="",
        room_config=None,
        issuer=API_KEY,
        not_before=vector.payload["nbf"],
        expires_at=vector.payload["exp"],
        payload=vector.payload,
    )
    expected.update(EXPECTED_CLAIMS[vector.name])
    assert VERIFIER.verify(vector.jwt, now=vector.now) == la.Claims(**expected)


@pytest.mark.parametrize("vector", TOKEN_VECTORS + WEBHOOK_VECTORS, ids=lambda v: v.name)
def test_golden_vector_clock_comes_from_the_verifier(vector):
    # By the system clock these 2025 tokens are long expired; an injected clock
    # stands in for `now=` (and `now=` wins over it).
    with pytest.raises(la.TokenExpired):
        VERIFIER.verify(vector.jwt)
    assert (
        la.TokenVerifier(API_KEY, API_SECRET, clock=lambda: vector.now).verify(vector.jwt).issuer
        == API_KEY
    )
    with pytest.raises(la.TokenExpired):
        la.TokenVerifier(API_KEY, API_SECRET, clock=lambda: vector.now).verify(
            vector.jwt, now=vector.now + 10**5
        )


# --- Leeway edges: 60 s; exp valid iff exp > now - 60, nbf/iat iff <= now + 60 ---

EDGES = [
    pytest.param(claims(exp=NOW - 61), la.TokenExpired, id="exp-one-second-past-leeway"),
    pytest.param(claims(exp=NOW - 60), la.TokenExpired, id="exp-exactly-at-leeway"),
    pytest.param(claims(exp=NOW - 59, nbf=DROP), None, id="exp-one-second-inside-leeway"),
    pytest.param(claims(nbf=NOW + 60), None, id="nbf-exactly-at-leeway"),
    pytest.param(claims(nbf=NOW + 61), la.TokenNotYetValid, id="nbf-one-second-past-leeway"),
    pytest.param(claims(iat=NOW + 60), None, id="iat-exactly-at-leeway"),
    pytest.param(claims(iat=NOW + 61), la.TokenNotYetValid, id="iat-one-second-past-leeway"),
    pytest.param(
        claims(nbf=NOW + 61, exp=NOW - 61), la.TokenExpired, id="expired-and-not-yet-valid"
    ),
]


@pytest.mark.parametrize("payload, error", EDGES)
def test_leeway_edges_match_the_sdk(payload, error, monkeypatch):
    tok = token(payload)
    if error is None:
        assert VERIFIER.verify(tok, now=NOW).issuer == API_KEY
        sdk_verify(tok, monkeypatch)
    else:
        with pytest.raises(error):
            VERIFIER.verify(tok, now=NOW)
        with pytest.raises(Exception):
            sdk_verify(tok, monkeypatch)


@pytest.mark.parametrize(
    "exp, accepted",
    [(NOW, False), (NOW + 1, True)],
    ids=["exp-equal-to-now", "exp-one-second-ahead"],
)
def test_zero_leeway(exp, accepted, monkeypatch):
    tok = token(claims(exp=exp))
    strict = la.TokenVerifier(API_KEY, API_SECRET, leeway=timedelta(0))
    if accepted:
        strict.verify(tok, now=NOW)
        sdk_verify(tok, monkeypatch, leeway=timedelta(0))
    else:
        with pytest.raises(la.TokenExpired):
            strict.verify(tok, now=NOW)
        with pytest.raises(Exception):
            sdk_verify(tok, monkeypatch, leeway=timedelta(0))


# --- Inputs both reject ----------------------------------------------------------


def _hs512(header: bytes, payload: bytes) -> str:
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    mac = hmac.new(API_SECRET.encode(), signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{b64url(mac)}"


def _unsigned(header: bytes) -> str:
    # The classic "alg": "none" token: no MAC at all.
    return f"{b64url(header)}.{b64url(claims())}."


def _flip_last_char(segment: str) -> str:
    # A different, canonical last character (low bits stay zero).
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return segment[:-1] + alphabet[(alphabet.index(segment[-1]) + 16) % 64]


def _with_signature(tok: str, signature: str) -> str:
    return tok.rsplit(".", 1)[0] + "." + signature


def _noncanonical_signature(tok: str) -> str:
    # Same bytes, last character with a nonzero unused bit: 43 chars carry 258 bits for 256.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    signature = tok.rsplit(".", 1)[1]
    index = alphabet.index(signature[-1])
    return _with_signature(tok, signature[:-1] + alphabet[index ^ 1])


_HEADER_SEG, _PAYLOAD_SEG, _SIGNATURE_SEG = VALID.split(".")

BOTH_REJECT = [
    # The algorithm is pinned, never read from the token.
    pytest.param(_unsigned(b'{"alg":"none"}'), la.BadSignature, id="alg-none-empty-signature"),
    pytest.param(token(header=b'{"alg":"none"}'), la.MalformedToken, id="alg-none-with-hs256-mac"),
    pytest.param(token(header=b'{"alg":"None"}'), la.MalformedToken, id="alg-None-with-hs256-mac"),
    pytest.param(
        token(header=b'{"alg":"hs256"}'), la.MalformedToken, id="alg-lowercase-with-hs256-mac"
    ),
    pytest.param(
        token(header=b'{"alg":"HS512"}'), la.MalformedToken, id="alg-HS512-with-hs256-mac"
    ),
    pytest.param(
        _hs512(b'{"alg":"HS512"}', claims()), la.BadSignature, id="alg-HS512-with-hs512-mac"
    ),
    pytest.param(
        token(header=b'{"alg":"RS256"}'), la.MalformedToken, id="alg-RS256-with-hs256-mac"
    ),
    pytest.param(token(header=b'{"typ":"JWT"}'), la.MalformedToken, id="alg-missing"),
    pytest.param(token(header=b'{"alg":null}'), la.MalformedToken, id="alg-null"),
    pytest.param(token(header=b'{"alg":["HS256"]}'), la.MalformedToken, id="alg-list"),
    # We implement no JWS extension (RFC 7515 §4.1.11).
    pytest.param(
        token(header=b'{"alg":"HS256","crit":["exp"],"exp":1}'),
        la.MalformedToken,
        id="crit-unknown",
    ),
    pytest.param(token(header=b'{"alg":"HS256","crit":[]}'), la.MalformedToken, id="crit-empty"),
    pytest.param(
        token(header=b'{"alg":"HS256","b64":false,"crit":["b64"]}'),
        la.MalformedToken,
        id="b64-false",
    ),
    pytest.param(token(header=b'{"alg":"HS256","kid":1}'), la.MalformedToken, id="kid-int"),
    pytest.param(token(header=b'["alg","HS256"]'), la.MalformedToken, id="header-array"),
    pytest.param(token(header=b"alg=HS256"), la.MalformedToken, id="header-not-json"),
    pytest.param(token(payload=b'["sub"]'), la.MalformedToken, id="payload-array"),
    pytest.param(token(payload=b'"devkey"'), la.MalformedToken, id="payload-string"),
    # Segments.
    pytest.param("", la.MalformedToken, id="empty"),
    pytest.param(f"{_HEADER_SEG}.{_PAYLOAD_SEG}", la.MalformedToken, id="missing-segment"),
    pytest.param(f"{VALID}.{_SIGNATURE_SEG}", la.MalformedToken, id="four-segments"),
    pytest.param(VALID + ".", la.MalformedToken, id="trailing-dot"),
    pytest.param(
        f"{_HEADER_SEG}..{_PAYLOAD_SEG}.{_SIGNATURE_SEG}", la.MalformedToken, id="double-dot"
    ),
    pytest.param(" " + VALID, la.MalformedToken, id="leading-space"),
    pytest.param(VALID + "\n", la.MalformedToken, id="trailing-newline"),
    pytest.param(VALID[:40] + "!" + VALID[41:], la.MalformedToken, id="stray-character"),
    pytest.param(VALID[:40] + "+" + VALID[41:], la.MalformedToken, id="standard-base64-plus"),
    pytest.param(VALID[:40] + "\u00e9" + VALID[41:], la.MalformedToken, id="non-ascii"),
    pytest.param(
        _with_signature(VALID, _SIGNATURE_SEG + "AA"),
        la.MalformedToken,
        id="segment-length-1-mod-4",
    ),
    # PyJWT 2.15 checks the round trip too (GHSA-hxm8-2xgr-2p9m).
    pytest.param(
        _noncanonical_signature(VALID), la.MalformedToken, id="signature-nonzero-trailing-bits"
    ),
    # Signature.
    pytest.param(token(secret="not-the-secret"), la.BadSignature, id="wrong-secret"),
    pytest.param(
        _with_signature(VALID, _flip_last_char(_SIGNATURE_SEG)),
        la.BadSignature,
        id="signature-changed",
    ),
    pytest.param(_with_signature(VALID, ""), la.BadSignature, id="signature-empty"),
    pytest.param(
        _with_signature(VALID, _SIGNATURE_SEG[:-3]), la.BadSignature, id="signature-truncated"
    ),
    pytest.param(
        f"{_HEADER_SEG}.{b64url(claims(sub='mallory'))}.{_SIGNATURE_SEG}",
        la.BadSignature,
        id="payload-changed",
    ),
    pytest.param(
        f"{_HEADER_SEG}.{_flip_last_char(_PAYLOAD_SEG)}.{_SIGNATURE_SEG}",
        la.BadSignature,
        id="payload-one-char-changed",
    ),
    pytest.param(
        _with_signature(VALID, VECTORS["empty-token"].jwt.rsplit(".", 1)[1]),
        la.BadSignature,
        id="signature-of-another-token",
    ),
    # exp: required, an integer.
    pytest.param(token(claims(exp=DROP)), la.MalformedToken, id="exp-missing"),
    pytest.param(token(claims(exp=None)), la.MalformedToken, id="exp-null"),
    pytest.param(token(claims(exp="tomorrow")), la.MalformedToken, id="exp-string-not-a-number"),
    pytest.param(
        token(claims(exp=True)), la.MalformedToken, id="exp-true"
    ),  # PyJWT: int(True) == 1, expired
    pytest.param(token(claims(exp=[NOW + 600])), la.MalformedToken, id="exp-list"),
    pytest.param(token(claims(nbf=None)), la.MalformedToken, id="nbf-null"),
    pytest.param(token(claims(iat="soon")), la.MalformedToken, id="iat-string-not-a-number"),
    pytest.param(token(raw_claims(exp=b"1e400")), la.MalformedToken, id="exp-overflowing-float"),
    pytest.param(token(raw_claims(exp=b"9" * 5000)), la.MalformedToken, id="exp-5000-digits"),
    # iss: exactly the key whose secret signed.
    pytest.param(token(claims(iss="devke")), la.WrongIssuer, id="iss-prefix"),
    pytest.param(token(claims(iss="devkey2")), la.WrongIssuer, id="iss-suffix"),
    pytest.param(token(claims(iss="DevKey")), la.WrongIssuer, id="iss-case"),
    pytest.param(token(claims(iss=" devkey")), la.WrongIssuer, id="iss-space"),
    pytest.param(token(claims(iss=DROP)), la.WrongIssuer, id="iss-missing"),
    pytest.param(token(claims(iss=None)), la.WrongIssuer, id="iss-null"),
    pytest.param(token(claims(iss=["devkey"])), la.WrongIssuer, id="iss-list"),
    # Registered claims LiveKit does not use, with the wrong type or a value.
    pytest.param(token(claims(aud="devkey")), la.MalformedToken, id="aud-set"),
    pytest.param(token(claims(sub=1)), la.MalformedToken, id="sub-int"),
    pytest.param(token(claims(jti=1)), la.MalformedToken, id="jti-int"),
    pytest.param(
        token(raw_claims(b',"x":' + b"9" * 5000)), la.MalformedToken, id="5000-digit-integer"
    ),
]


@pytest.mark.parametrize("tok, error", BOTH_REJECT)
def test_both_reject(tok, error, monkeypatch):
    with pytest.raises(error):
        VERIFIER.verify(tok, now=NOW)
    with pytest.raises(Exception):
        sdk_verify(tok, monkeypatch)


# --- Inputs the SDK accepts and we reject: one row per place we are stricter ---


def _padded(payload: bytes) -> str:
    # Pad the payload segment with "=" and MAC the padded signing input, as a
    # padding-tolerant issuer would; PyJWT strips the "=" before decoding.
    segment = b64url(payload)
    assert len(segment) % 4, "choose a payload whose segment needs padding"
    return token(payload, payload_segment=segment + "=" * (-len(segment) % 4))


def _long_claims(length: int) -> bytes:
    return claims(metadata="x" * length)


STRICTER = [
    # Numeric dates must be JSON integers. PyJWT int()s whatever it gets, so a
    # string, a float, whitespace or "1_735_..." all pass there; LiveKit mints
    # integers, and one spelling leaves nothing to interpret.
    pytest.param(token(claims(exp=str(NOW + 600))), la.MalformedToken, id="exp-numeric-string"),
    pytest.param(
        token(claims(exp=f" {NOW + 600}\n")),
        la.MalformedToken,
        id="exp-numeric-string-with-whitespace",
    ),
    pytest.param(
        token(claims(exp=f"{NOW + 600:_}")),
        la.MalformedToken,
        id="exp-numeric-string-with-underscores",
    ),
    pytest.param(token(claims(exp=NOW + 600.5)), la.MalformedToken, id="exp-float"),
    pytest.param(token(claims(exp=float(NOW + 600))), la.MalformedToken, id="exp-integral-float"),
    pytest.param(token(claims(nbf=str(NOW))), la.MalformedToken, id="nbf-numeric-string"),
    pytest.param(token(claims(nbf=NOW + 0.5)), la.MalformedToken, id="nbf-float"),
    pytest.param(token(claims(iat=str(NOW))), la.MalformedToken, id="iat-numeric-string"),
    pytest.param(token(claims(iat=NOW + 0.5)), la.MalformedToken, id="iat-float"),
    # PyJWT skips a falsy aud; any aud on a LiveKit token is refused.
    pytest.param(token(claims(aud="")), la.MalformedToken, id="aud-empty-string"),
    pytest.param(token(claims(aud=[])), la.MalformedToken, id="aud-empty-list"),
    pytest.param(token(claims(aud=None)), la.MalformedToken, id="aud-null"),
    # LiveKit's own claims have fixed types; the SDK copies whatever is there.
    pytest.param(token(claims(name=5)), la.MalformedToken, id="name-int"),
    pytest.param(token(claims(kind=["agent"])), la.MalformedToken, id="kind-list"),
    pytest.param(token(claims(metadata={"role": "host"})), la.MalformedToken, id="metadata-object"),
    pytest.param(token(claims(sha256=1)), la.MalformedToken, id="sha256-int"),
    pytest.param(token(claims(roomPreset=1)), la.MalformedToken, id="room-preset-int"),
    pytest.param(
        token(claims(attributes={"team": 1})), la.MalformedToken, id="attributes-non-string-value"
    ),
    pytest.param(
        token(claims(attributes={"team": None})), la.MalformedToken, id="attributes-null-value"
    ),
    pytest.param(token(claims(attributes=["team"])), la.MalformedToken, id="attributes-list"),
    pytest.param(token(claims(attributes=None)), la.MalformedToken, id="attributes-null"),
    pytest.param(token(claims(roomConfig=[])), la.MalformedToken, id="room-config-list"),
    pytest.param(token(claims(roomConfig="")), la.MalformedToken, id="room-config-empty-string"),
    pytest.param(
        token(claims(video={"roomJoin": "yes", "room": "r"})),
        la.MalformedToken,
        id="video-bool-as-string",
    ),
    pytest.param(
        token(claims(video={"roomJoin": 1, "room": "r"})), la.MalformedToken, id="video-bool-as-int"
    ),
    pytest.param(
        token(claims(video={"canPublish": None})),
        la.MalformedToken,
        id="video-null-for-non-optional",
    ),
    pytest.param(token(claims(video={"room": 5})), la.MalformedToken, id="video-room-int"),
    pytest.param(
        token(claims(video={"canPublishSources": "camera"})),
        la.MalformedToken,
        id="video-sources-string",
    ),
    pytest.param(
        token(claims(video={"canPublishSources": [1]})),
        la.MalformedToken,
        id="video-sources-int-item",
    ),
    pytest.param(token(claims(sip={"admin": 1})), la.MalformedToken, id="sip-bool-as-int"),
    # Strict JSON (RFC 8259, RFC 7515 §5.2): json.loads keeps the last of
    # duplicate keys, reads NaN, unpaired surrogates, UTF-16/32 and a BOM.
    pytest.param(
        token(raw_claims(b',"exp":%d' % (NOW + 600), exp=b"%d" % (NOW - 3600))),
        la.MalformedToken,
        id="payload-duplicate-exp",
    ),
    pytest.param(
        token(b'{"sub":"alice","iss":"someone","iss":"devkey","exp":%d}' % (NOW + 600)),
        la.MalformedToken,
        id="payload-duplicate-iss",
    ),
    pytest.param(
        token(header=b'{"alg":"none","alg":"HS256"}'), la.MalformedToken, id="header-duplicate-alg"
    ),
    pytest.param(token(raw_claims(b',"x":NaN')), la.MalformedToken, id="nan"),
    pytest.param(token(raw_claims(b',"x":-Infinity')), la.MalformedToken, id="infinity"),
    pytest.param(
        token(raw_claims(b',"x":1e400')), la.MalformedToken, id="float-overflowing-to-infinity"
    ),
    pytest.param(token(raw_claims(b',"name":"\\ud800"')), la.MalformedToken, id="lone-surrogate"),
    pytest.param(token(claims().decode().encode("utf-16")), la.MalformedToken, id="payload-utf16"),
    pytest.param(token(b"\xef\xbb\xbf" + claims()), la.MalformedToken, id="payload-utf8-bom"),
    pytest.param(
        token(header=HEADER.decode().encode("utf-32")), la.MalformedToken, id="header-utf32"
    ),
    # RFC 7797: we implement no JWS extension. PyJWT accepts b64 = true, also
    # listed in crit, since it means "no change".
    pytest.param(
        token(header=b'{"alg":"HS256","b64":true}'), la.MalformedToken, id="header-b64-true"
    ),
    pytest.param(
        token(header=b'{"alg":"HS256","b64":true,"crit":["b64"]}'),
        la.MalformedToken,
        id="header-crit-b64",
    ),
    # base64url without padding (RFC 7515 §2): one spelling per token. PyJWT
    # strips trailing "=" before decoding.
    pytest.param(VALID + "=", la.MalformedToken, id="signature-padded"),
    pytest.param(_padded(claims(sub="al")), la.MalformedToken, id="payload-padded"),
    # A str, and a bounded one: PyJWT takes bytes and any length.
    pytest.param(VALID.encode("ascii"), la.MalformedToken, id="token-as-bytes"),
    pytest.param(
        token(_long_claims(la.MAX_TOKEN_LENGTH)),
        la.MalformedToken,
        id="longer-than-max-token-length",
    ),
]


@pytest.mark.parametrize("tok, error", STRICTER)
def test_stricter_than_the_sdk(tok, error, monkeypatch):
    sdk_verify(tok, monkeypatch)  # the SDK accepts it...
    with pytest.raises(error):  # ...and we refuse it, with this class
        VERIFIER.verify(tok, now=NOW)


def test_padded_payload_row_is_padded():
    # The padding row means something only if the segment really ends in "=".
    tok = _padded(claims(sub="al"))
    assert tok.split(".")[1].endswith("=")


def _token_of_length(length: int) -> str:
    # Metadata grows the payload segment by 4 characters per 3 bytes; try the
    # few metadata lengths around the estimate for one that lands exactly.
    estimate = (length - len(token(_long_claims(0)))) * 3 // 4
    for metadata_length in range(estimate - 4, estimate + 4):
        tok = token(_long_claims(metadata_length))
        if len(tok) == length:
            return tok
    raise AssertionError(f"no token of exactly {length} characters")


def test_length_limit_edge():
    # A cap, not an off-by-one: exactly 64 KiB verifies, one more does not. The documented limit is
    # written out, not read from la.MAX_TOKEN_LENGTH, so a changed constant fails here (tests/mutate.py).
    limit = 64 * 1024
    assert la.MAX_TOKEN_LENGTH == limit
    assert VERIFIER.verify(_token_of_length(limit), now=NOW).issuer == API_KEY
    with pytest.raises(la.MalformedToken):
        VERIFIER.verify(_token_of_length(limit + 1), now=NOW)


# --- Grant claims must be objects, as the SDK requires ----------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("video", None),
        ("sip", None),
        ("inference", None),
        ("observability", None),
        ("video", []),
        ("inference", 5),
        ("observability", []),
        ("agent", 5),
        ("agentEndpoint", "x"),
        ("agentThread", []),
    ],
    ids=lambda value: repr(value),
)
def test_grant_claims_that_are_not_objects_are_rejected_as_by_the_sdk(name, value, monkeypatch):
    tok = token(claims(**{name: value}))
    with pytest.raises(Exception):
        sdk_verify(tok, monkeypatch)
    with pytest.raises(la.MalformedToken, match=f"{name} claim must be an object"):
        VERIFIER.verify(tok, now=NOW)


@pytest.mark.parametrize("name", ["agent", "agentEndpoint", "agentThread"])
def test_null_agent_grants_read_as_absent_as_in_the_sdk(name, monkeypatch):
    tok = token(claims(**{name: None}))
    sdk_verify(tok, monkeypatch)
    assert VERIFIER.verify(tok, now=NOW).payload[name] is None


# --- Key rotation ----------------------------------------------------------------

ROTATING = la.TokenVerifier(keys={"k1": "s1", "k2": "s2"})


@pytest.mark.parametrize("key, secret", [("k1", "s1"), ("k2", "s2")])
def test_rotation_accepts_each_key(key, secret):
    assert ROTATING.verify(token(claims(iss=key), secret=secret), now=NOW).issuer == key


@pytest.mark.parametrize(
    "key, secret, error",
    [
        ("k1", "s2", la.WrongIssuer),  # signed with k2's secret, claims to be k1
        ("k2", "s1", la.WrongIssuer),
        ("k3", "s1", la.WrongIssuer),  # a key we do not have, a secret we do
        ("k1", "s3", la.BadSignature),  # a secret we do not have
        ("k1", "k1", la.BadSignature),  # the key is not a secret
    ],
    ids=["k1-signed-by-s2", "k2-signed-by-s1", "unknown-key", "unknown-secret", "key-as-secret"],
)
def test_rotation_rejects(key, secret, error):
    with pytest.raises(error):
        ROTATING.verify(token(claims(iss=key), secret=secret), now=NOW)


def test_rotation_adds_the_positional_pair():
    verifier = la.TokenVerifier("k0", "s0", keys={"k1": "s1"})
    assert verifier.verify(token(claims(iss="k0"), secret="s0"), now=NOW).issuer == "k0"
    assert verifier.verify(token(claims(iss="k1"), secret="s1"), now=NOW).issuer == "k1"


def test_shared_secret_matches_either_key():
    verifier = la.TokenVerifier(keys={"k1": "same", "k2": "same"})
    for key in ("k1", "k2"):
        assert verifier.verify(token(claims(iss=key), secret="same"), now=NOW).issuer == key


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        (("devkey", ""), {}),
        (("", "secret"), {}),
        ((), {"keys": {}}),
        ((), {"keys": {"k1": ""}}),
        ((), {"keys": {"": "s1"}}),
        ((), {"keys": {"k1": 1}}),
        ((), {"keys": {"k1": b"s1"}}),
        (("devkey", ""), {"keys": {"k1": "s1"}}),
        (("", "secret"), {"keys": {"k1": "s1"}}),
    ],
    ids=[
        "nothing",
        "empty-secret",
        "empty-key",
        "empty-keys",
        "keys-empty-secret",
        "keys-empty-key",
        "keys-int-secret",
        "keys-bytes-secret",
        "empty-secret-beside-keys",  # half a pair is refused, not dropped, when keys has pairs
        "empty-key-beside-keys",
    ],
)
def test_verifier_needs_non_empty_string_pairs(args, kwargs, monkeypatch):
    # No fallback to the environment, even when it is set.
    monkeypatch.setenv("LIVEKIT_API_KEY", "envkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "envsecret")
    with pytest.raises(ValueError):
        la.TokenVerifier(*args, **kwargs)


# --- Error messages are fixed text ------------------------------------------------


def test_error_messages_never_echo_input_or_secret():
    secret = "s3cr3t-MARKER-secret"
    verifier = la.TokenVerifier("MARKERkey", secret)
    inputs = [
        "MARKER",
        token(claims(iss="MARKERkey", sub=1), secret=secret),
        token(claims(iss="MARKER-other"), secret=secret),
        token(claims(iss="MARKERkey", exp="MARKER"), secret=secret),
        token(claims(iss="MARKERkey", exp=NOW - 3600), secret=secret),
        token(claims(iss="MARKERkey"), secret="MARKER-wrong"),
        token(claims(iss="MARKERkey"), header=b'{"alg":"MARKER"}', secret=secret),
    ]
    for tok in inputs:
        with pytest.raises(la.LiveKitAuthError) as caught:
            verifier.verify(tok, now=NOW)
        message = str(caught.value)
        assert "MARKER" not in message and "s3cr3t" not in message
        assert all(len(part) < 4 or part not in message for part in tok.split("."))


# Each refusal's exact class and message: str(err) is the errorMessage a client reads, so the
# wording is behaviour too (tests/mutate.py changes each message and expects a test to fail).
LEEWAY_SECONDS = 60  # DEFAULT_LEEWAY
MESSAGES = [
    pytest.param(VALID.encode(), la.MalformedToken, "token must be a string", id="not-a-string"),
    pytest.param("a" * (64 * 1024 + 1), la.MalformedToken, "token is too long", id="too-long"),
    pytest.param(
        "a.b", la.MalformedToken, "token must have three dot-separated segments", id="two-segments"
    ),
    pytest.param(
        "!" + VALID,
        la.MalformedToken,
        "token header is not canonical unpadded base64url",
        id="header-not-base64url",
    ),
    pytest.param(
        f"{_HEADER_SEG}.!{_PAYLOAD_SEG}.{_SIGNATURE_SEG}",
        la.MalformedToken,
        "token payload is not canonical unpadded base64url",
        id="payload-not-base64url",
    ),
    pytest.param(
        VALID + "=",
        la.MalformedToken,
        "token signature is not canonical unpadded base64url",
        id="signature-not-base64url",
    ),
    pytest.param(
        _with_signature(VALID, _flip_last_char(_SIGNATURE_SEG)),
        la.BadSignature,
        "token signature does not match",
        id="signature-changed",
    ),
    pytest.param(
        token(header=b"alg=HS256"),
        la.MalformedToken,
        "token header is not a JSON object",
        id="header-not-json",
    ),
    pytest.param(
        token(payload=b'["sub"]'),
        la.MalformedToken,
        "token payload is not a JSON object",
        id="payload-array",
    ),
    pytest.param(
        token(header=b'{"alg":"none"}'), la.MalformedToken, "token alg must be HS256", id="alg-none"
    ),
    pytest.param(
        token(header=b'{"alg":"HS256","crit":[]}'),
        la.MalformedToken,
        "token header uses an unsupported extension",
        id="crit-empty",
    ),
    pytest.param(
        token(header=b'{"alg":"HS256","kid":1}'),
        la.MalformedToken,
        "token kid must be a string",
        id="kid-int",
    ),
    pytest.param(
        token(claims(iss="devke")),
        la.WrongIssuer,
        "token issuer is not the API key that signed it",
        id="iss-prefix",
    ),
    pytest.param(
        token(claims(exp=DROP)), la.MalformedToken, "token has no exp claim", id="exp-missing"
    ),
    pytest.param(
        token(claims(exp=NOW + 0.5)),
        la.MalformedToken,
        "exp claim must be an integer",
        id="exp-float",
    ),
    pytest.param(
        token(claims(nbf="1")), la.MalformedToken, "nbf claim must be an integer", id="nbf-string"
    ),
    pytest.param(
        token(claims(exp=NOW - LEEWAY_SECONDS)), la.TokenExpired, "token has expired", id="expired"
    ),
    pytest.param(
        token(claims(nbf=NOW + LEEWAY_SECONDS + 1)),
        la.TokenNotYetValid,
        "token is not valid yet (nbf)",
        id="nbf-future",
    ),
    pytest.param(
        token(claims(iat=NOW + LEEWAY_SECONDS + 1)),
        la.TokenNotYetValid,
        "token is not valid yet (iat)",
        id="iat-future",
    ),
    pytest.param(
        token(claims(aud="devkey")), la.MalformedToken, "token has an aud claim", id="aud-set"
    ),
    pytest.param(
        token(claims(sub=1)), la.MalformedToken, "sub claim must be a string", id="sub-int"
    ),
    pytest.param(
        token(claims(attributes=["team"])),
        la.MalformedToken,
        "attributes claim must map strings to strings",
        id="attributes-list",
    ),
    pytest.param(
        token(claims(roomConfig=[])),
        la.MalformedToken,
        "roomConfig claim must be an object",
        id="room-config-list",
    ),
    pytest.param(
        token(claims(video=5)), la.MalformedToken, "video claim must be an object", id="video-int"
    ),
    pytest.param(
        token(claims(video={"roomJoin": "yes"})),
        la.MalformedToken,
        "token grants have a field of the wrong type",
        id="video-field-wrong-type",
    ),
]
LEEWAY_SECONDS = 60


@pytest.mark.parametrize("tok, error, message", MESSAGES)
def test_each_refusal_has_its_exact_class_and_message(tok, error, message):
    with pytest.raises(la.LiveKitAuthError) as caught:
        VERIFIER.verify(tok, now=NOW)
    assert (type(caught.value), str(caught.value)) == (error, message)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), {}, "at least one api_key and api_secret pair is required"),
        ((), {"keys": {"k1": ""}}, "api_key and api_secret must be non-empty strings"),
    ],
    ids=["nothing", "keys-empty-secret"],
)
def test_verifier_refusals_have_their_exact_message(args, kwargs, message):
    with pytest.raises(ValueError) as caught:
        la.TokenVerifier(*args, **kwargs)
    assert str(caught.value) == message


# --- The contract: verify returns Claims or raises LiveKitAuthError ----------------

_CLAIM_NAMES = (
    "sub",
    "iss",
    "exp",
    "nbf",
    "iat",
    "aud",
    "jti",
    "name",
    "kind",
    "metadata",
    "sha256",
    "roomPreset",
    "roomConfig",
    "attributes",
    "video",
    "sip",
)
_HEADERS = (
    HEADER,
    b'{"alg":"HS256"}',
    b'{"alg":"none"}',
    b'{"alg":"HS256","kid":1}',
    b'{"alg":"HS256","crit":["b64"],"b64":true}',
    b'{"alg":"HS256","alg":"HS256"}',
    b"[]",
    b"",
    b"\xff",
    b"[" * 40000,
)


def _fuzz_token(rng: random.Random) -> object:
    seed = rng.choice(SEEDS)
    kind = rng.randrange(4)
    if kind == 0:  # edits of the token text: mostly stopped by base64url or the MAC
        return mutate_text(rng, seed, la.MAX_TOKEN_LENGTH)
    payload = VERIFIER.verify(seed, now=FUZZ_NOW).payload
    if kind == 1:  # signed: a claim replaced, removed or added, so claim checks run
        for _ in range(rng.randint(1, 3)):
            payload = mutate_claims(rng, payload, _CLAIM_NAMES)
        return token(json.dumps(payload).encode())
    if kind == 2:  # signed: the payload JSON text edited, so the parser runs
        return token(mutate_bytes(rng, json.dumps(payload).encode()))
    return token(
        json.dumps(payload).encode(), header=rng.choice(_HEADERS)
    )  # signed: another header


FUZZ_NOW = NOW + 5  # every golden vector is valid then
SEEDS = [v.jwt for v in VECTORS.values()]
SEEDS.append(token(claims(video={"roomJoin": True, "room": "r"}, roomConfig={"agents": []})))


def test_random_mutations_return_claims_or_raise_livekit_auth_error():
    rng = random.Random(20250101)
    outcomes = collections.Counter()
    for case in range(4000):
        candidate = _fuzz_token(rng)
        try:
            result = VERIFIER.verify(candidate, now=FUZZ_NOW)
        except la.LiveKitAuthError as error:
            outcomes[type(error).__name__] += 1
        except Exception as error:  # the contract is broken: show the case to reproduce it
            pytest.fail(f"case {case}: {type(error).__name__}: {error} for {candidate!r:.300}")
        else:
            assert type(result) is la.Claims
            outcomes["ok"] += 1
    # The mutations must reach every stage, or the contract was barely tested.
    stages = {
        "ok",
        "MalformedToken",
        "BadSignature",
        "WrongIssuer",
        "TokenExpired",
        "TokenNotYetValid",
    }
    assert set(outcomes) == stages, outcomes
    assert min(outcomes.values()) >= 10, outcomes


def test_json_values_used_by_the_fuzzer_cover_every_type():
    # The claim fuzzer is only as good as its values.
    assert {type(v) for v in JSON_VALUES} == {type(None), bool, int, float, str, list, dict}


@pytest.mark.parametrize("where", ["header", "payload"])
def test_deep_nesting_is_malformed_not_recursion_error(where):
    # 45,000 levels: far past the recursion limit, and still under
    # MAX_TOKEN_LENGTH, so the parser (not the length check) meets it, after a valid MAC.
    deep = b"[" * 45_000
    tok = token(deep) if where == "payload" else token(header=deep)
    assert len(tok) < la.MAX_TOKEN_LENGTH
    with pytest.raises(la.MalformedToken):
        VERIFIER.verify(tok, now=NOW)


# --- Documented exceptions: the SDK refuses, we accept (README, "livekit_auth as a library") ---


@pytest.mark.parametrize(
    "change, read",
    [
        # roomConfig: only "an object" is checked when verifying; its protobuf field types are
        # LiveKit's schema, checked as each field is read.
        ({"roomConfig": {"name": 5}}, lambda config: config.name),
        ({"roomConfig": {"agents": "x"}}, lambda config: config.agents),
        (
            {"roomConfig": {"agents": [{"agentName": 1}]}},
            lambda config: config.agents[0].agent_name,
        ),
        # Grant fields by exact wire name, as LiveKit Server reads them; the SDK also maps RoomJoin.
        ({"video": {"RoomJoin": True, "room": "r"}}, None),
    ],
    ids=[
        "room-config-name-int",
        "room-config-agents-string",
        "room-config-agent-name-int",
        "grant-name-case-variant",
    ],
)
def test_documented_exceptions_where_the_sdk_refuses_or_reads_otherwise(change, read, monkeypatch):
    tok = token(claims(**change))
    try:
        sdk_claims = sdk_verify(tok, monkeypatch)
    except Exception:
        sdk_claims = None
    ours = VERIFIER.verify(tok, now=NOW)
    if "video" in change:
        assert sdk_claims.video.room_join is True and ours.video.room_join is None
    else:
        assert sdk_claims is None and ours.room_config.to_dict() == change["roomConfig"]
        # Read, the field of the wrong type raises the token's error, with fixed text.
        with pytest.raises(la.MalformedToken) as caught:
            read(ours.room_config)
        wrong = {
            f"roomConfig field {name} has the wrong type"
            for name in ("name", "agents", "agentName")
        }
        assert str(caught.value) in wrong


# --- roomConfig read by attribute: a value of its kind, or MalformedToken ------------------------


def verified_room_config(config: dict):
    return VERIFIER.verify(token(claims(roomConfig=config)), now=NOW).room_config


def agent(config: dict) -> dict:
    return {"agents": [config]}


@pytest.mark.parametrize(
    "config, read, expected",
    [
        pytest.param({"name": "r"}, lambda c: c.name, "r", id="name"),
        pytest.param({"metadata": "m"}, lambda c: c.metadata, "m", id="metadata"),
        pytest.param({"emptyTimeout": 30}, lambda c: c.empty_timeout, 30, id="empty-timeout"),
        pytest.param(
            {"departureTimeout": 20}, lambda c: c.departure_timeout, 20, id="departure-timeout"
        ),
        pytest.param({"maxParticipants": "5"}, lambda c: c.max_participants, 5, id="int-as-string"),
        pytest.param(
            {"minPlayoutDelay": 100}, lambda c: c.min_playout_delay, 100, id="min-playout-delay"
        ),
        pytest.param(
            {"maxPlayoutDelay": 200}, lambda c: c.max_playout_delay, 200, id="max-playout-delay"
        ),
        pytest.param({"syncStreams": True}, lambda c: c.sync_streams, True, id="sync-streams"),
        pytest.param({"tags": {"t": "v"}}, lambda c: c.tags, {"t": "v"}, id="tags"),
        pytest.param({"empty_timeout": 30}, lambda c: c.empty_timeout, 30, id="by-field-name"),
        pytest.param({"name": "r"}, lambda c: c.empty_timeout, 0, id="absent-int"),
        pytest.param({"name": "r"}, lambda c: c.sync_streams, False, id="absent-bool"),
        pytest.param({"name": "r"}, lambda c: c.tags, {}, id="absent-map"),
        pytest.param({"name": "r"}, lambda c: c.agents, [], id="absent-repeated"),
        pytest.param({"agents": None}, lambda c: c.agents, [], id="null-repeated"),
        pytest.param(
            agent({"agentName": "a"}), lambda c: c.agents[0].agent_name, "a", id="agent-name"
        ),
        pytest.param(
            agent({"agent_name": "a"}), lambda c: c.agents[0].agent_name, "a", id="agent-field-name"
        ),
        pytest.param(
            agent({"metadata": "m"}), lambda c: c.agents[0].metadata, "m", id="agent-metadata"
        ),
        pytest.param(
            agent({"deployment": "d"}), lambda c: c.agents[0].deployment, "d", id="agent-deployment"
        ),
        pytest.param(
            agent({"attributes": {"k": "v"}}),
            lambda c: c.agents[0].attributes,
            {"k": "v"},
            id="map",
        ),
        pytest.param(agent({}), lambda c: c.agents[0].attributes, {}, id="agent-absent-map"),
        pytest.param(
            agent({}), lambda c: c.agents[0].restart_policy, "JRP_ON_FAILURE", id="enum-default"
        ),
        pytest.param(
            agent({"restartPolicy": "JRP_NEVER"}),
            lambda c: c.agents[0].restart_policy,
            "JRP_NEVER",
            id="enum-name",
        ),
        pytest.param({"agents": [{}, {}]}, lambda c: len(c.agents), 2, id="two-agents"),
    ],
)
def test_room_config_fields_read_as_protobuf_does(config, read, expected):
    # tests/test_parity.py checks each field against the SDK's RoomConfiguration.
    value = read(verified_room_config(config))
    assert (value, type(value)) == (expected, type(expected))


def test_room_config_messages_have_the_sdks_names():
    room_config = verified_room_config(agent({"agentName": "a"}))
    assert type(room_config).__name__ == "RoomConfiguration"
    assert type(room_config.agents[0]).__name__ == "RoomAgentDispatch"
    assert room_config.to_dict() == agent({"agentName": "a"})


@pytest.mark.parametrize(
    "config, read",
    [
        pytest.param({"emptyTimeout": 1.5}, lambda c: c.empty_timeout, id="int-as-float"),
        pytest.param({"syncStreams": "true"}, lambda c: c.sync_streams, id="bool-as-string"),
        pytest.param({"tags": {"t": 1}}, lambda c: c.tags, id="map-int-value"),
        pytest.param({"agents": {"agentName": "a"}}, lambda c: c.agents, id="repeated-as-object"),
        pytest.param(
            {"agents": [{"agentName": "a"}, None]}, lambda c: c.agents, id="repeated-with-null"
        ),
        pytest.param({"agents": ["a"]}, lambda c: c.agents, id="repeated-of-strings"),
        pytest.param(
            agent({"restartPolicy": 1}), lambda c: c.agents[0].restart_policy, id="enum-as-number"
        ),
    ],
)
def test_room_config_field_of_the_wrong_type_raises_malformed_token_when_read(config, read):
    with pytest.raises(la.MalformedToken, match="^roomConfig field [A-Za-z]+ has the wrong type$"):
        read(verified_room_config(config))


def read_every_field(message) -> int:
    """Read each attribute of a message and of the messages in it and in its lists; returns how many."""
    count = 0
    for name in dir(type(message)):
        if isinstance(getattr(type(message), name), la.webhook._Field):
            value = getattr(message, name)
            items = value if type(value) is list else [value]
            for item in items:
                assert type(item) in (str, int, bool, dict) or isinstance(item, la.webhook._Message)
                count += 1 if type(item) in (str, int, bool, dict) else read_every_field(item)
    return count


ROOM_CONFIG_SEEDS = [
    {"name": "r", "emptyTimeout": 30, "agents": [{"agentName": "a", "attributes": {"k": "v"}}]},
    {"agents": [{"agent_name": "a", "restartPolicy": "JRP_NEVER"}], "max_participants": "5"},
    {"syncStreams": True, "tags": {"t": "v"}, "metadata": "m", "agents": [{"deployment": "d"}]},
]
ROOM_CONFIG_NAMES = ("name", "emptyTimeout", "max_participants", "syncStreams", "agents", "tags")
AGENT_NAMES = ("agentName", "agent_name", "metadata", "deployment", "restartPolicy", "attributes")


def test_random_room_config_values_read_or_raise_malformed_token():
    # The contract goes on past verify: a field read returns a value of its kind, or raises
    # MalformedToken.
    rng = random.Random(20250104)
    outcomes = collections.Counter()
    for _ in range(2000):
        config = rng.choice(ROOM_CONFIG_SEEDS)
        for _ in range(rng.randint(1, 3)):
            config = mutate_claims(rng, config, ROOM_CONFIG_NAMES)
        agents = config.get("agents")
        if type(agents) is list and agents and type(agents[0]) is dict:
            config["agents"] = [mutate_claims(rng, agents[0], AGENT_NAMES)]
        try:
            room_config = VERIFIER.verify(token(claims(roomConfig=config)), now=NOW).room_config
        except la.MalformedToken:  # a lone surrogate, refused anywhere in a token
            outcomes["refused by verify"] += 1
            continue
        try:
            read_every_field(room_config)
        except la.MalformedToken:
            outcomes["MalformedToken"] += 1
        else:
            outcomes["ok"] += 1
    assert min(outcomes["ok"], outcomes["MalformedToken"]) >= 100, outcomes
