"""The strict decoders in livekit_auth._strict, and the RFC 7520 §4.4 HS256 vector."""

import base64
import hashlib
import hmac
import itertools
import json
import random

import jwt
import pytest

import livekit_auth
from livekit_auth._strict import (
    MAX_JSON_DEPTH,
    b64url_decode,
    b64url_encode,
    dumps_compact,
    loads_object,
)
from vectors import RFC7520_COMPACT, RFC7520_HEADER, RFC7520_KEY, RFC7520_PAYLOAD

# PyJWT warns that "secret" is short; it is the golden vectors' (LiveKit dev) secret.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# --- base64url -------------------------------------------------------------


def test_b64url_round_trips_every_length():
    rng = random.Random(7515)
    for length in range(70):
        raw = rng.randbytes(length)
        segment = b64url_encode(raw)
        assert segment == base64.urlsafe_b64encode(raw).decode().rstrip("=")
        assert b64url_decode(segment) == raw


def test_b64url_accepts_exactly_the_canonical_spelling_of_a_final_group():
    # A decoder that ignores the unused low bits of the last character gives
    # one value several spellings (PyJWT GHSA-hxm8-2xgr-2p9m). Every 2-character
    # group, and every last character after a few 2-character prefixes.
    candidates = ["".join(pair) for pair in itertools.product(ALPHABET, repeat=2)]
    candidates += [prefix + last for prefix in ("QU", "__", "A-") for last in ALPHABET]
    accepted = 0
    for segment in candidates:
        raw = base64.urlsafe_b64decode(segment + "=" * (4 - len(segment)))
        if b64url_encode(raw) == segment:
            assert b64url_decode(segment) == raw
            accepted += 1
        else:
            with pytest.raises(ValueError):
                b64url_decode(segment)
    # Canonical: 4 of 64 last characters after 2 (low 4 bits zero), 16 of 64 after 3.
    assert accepted == 64 * 4 + 3 * 16


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param("QQ==", id="padding"),
        pytest.param("QQ=", id="partial-padding"),
        pytest.param("Q", id="length-1-mod-4"),
        pytest.param("QUJD-_+/", id="standard-alphabet-plus-slash"),
        pytest.param("QU J", id="space"),
        pytest.param("QUJ\n", id="trailing-newline"),
        pytest.param("QUJ\u00e9", id="non-ascii"),
        pytest.param("QUJ\uff24", id="fullwidth-letter"),
        pytest.param("QR", id="nonzero-trailing-bits"),
        pytest.param("QUJ.", id="dot"),
    ],
)
def test_b64url_rejects(segment):
    with pytest.raises(ValueError):
        b64url_decode(segment)


def test_b64url_empty_segment_is_empty_bytes():
    assert b64url_decode("") == b""


# --- JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(b'{"a":1}', {"a": 1}, id="object"),
        pytest.param(
            b' {"a" : [true, null, 1.5, "x"]} \n', {"a": [True, None, 1.5, "x"]}, id="whitespace"
        ),
        pytest.param(
            b'{"a":{"b":1},"c":{"b":2}}',
            {"a": {"b": 1}, "c": {"b": 2}},
            id="same-key-in-sibling-objects",
        ),
        pytest.param(b'{"e":"\\ud83d\\ude00"}', {"e": "\U0001f600"}, id="paired-surrogate-escapes"),
        pytest.param(
            b'{"e":"\\\\ud800"}', {"e": "\\ud800"}, id="escaped-backslash-then-u-d800-text"
        ),
        pytest.param('{"e":"\U0001f600"}'.encode(), {"e": "\U0001f600"}, id="raw-utf8"),
        pytest.param(b'{"x":1e308}', {"x": 1e308}, id="large-finite-float"),
        pytest.param(b'{"x":' + b"9" * 4300 + b"}", {"x": int("9" * 4300)}, id="4300-digit-int"),
    ],
)
def test_loads_object_accepts(text, expected):
    assert loads_object(text) == expected


# loads_object's fixed phrases, one per rule.
NOT_UTF8, NOT_JSON, DUPLICATE, NAN = (
    "is not UTF-8",
    "is not valid JSON",
    "has a duplicate key",
    "has NaN or Infinity",
)
SURROGATE, TOO_DEEP, NOT_OBJECT = (
    "has an unpaired surrogate",
    "is nested too deeply",
    "is not a JSON object",
)


def nested(depth: int, siblings: int = 0) -> bytes:
    """An object whose deepest value is `depth` levels down (the object is level 1), beside `siblings` empty arrays."""
    return (
        b'{"s":['
        + b",".join([b"[]"] * siblings)
        + b'],"a":'
        + b"[" * (depth - 1)
        + b"]" * (depth - 1)
        + b"}"
    )


@pytest.mark.parametrize(
    "text, phrase",
    [
        pytest.param(b"[1]", NOT_OBJECT, id="array"),
        pytest.param(b'"a"', NOT_OBJECT, id="string"),
        pytest.param(b"1", NOT_OBJECT, id="number"),
        pytest.param(b"null", NOT_OBJECT, id="null"),
        pytest.param(b"[" * 70 + b"]" * 70, NOT_OBJECT, id="deep-array-is-first-not-an-object"),
        pytest.param(b"", NOT_JSON, id="empty"),
        pytest.param(b'{"a":1}x', NOT_JSON, id="trailing-garbage"),
        pytest.param(b'{"a":1,}', NOT_JSON, id="trailing-comma"),
        pytest.param(b'{"a":"x\ny"}', NOT_JSON, id="raw-control-character"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', NOT_JSON, id="utf8-bom"),
        pytest.param('{"a":1}'.encode("utf-32-le"), NOT_JSON, id="utf32"),
        pytest.param(b'{"a":' + b"9" * 5000 + b"}", NOT_JSON, id="5000-digit-int"),
        pytest.param(b'{"a":1,"a":2}', DUPLICATE, id="duplicate-key"),
        pytest.param(b'{"o":{"a":1,"a":1}}', DUPLICATE, id="duplicate-key-nested"),
        pytest.param(b'{"a":NaN}', NAN, id="nan"),
        pytest.param(b'{"a":Infinity}', NAN, id="infinity"),
        pytest.param(b'{"a":-Infinity}', NAN, id="minus-infinity"),
        pytest.param(b'{"a":1e400}', NAN, id="float-overflowing-to-infinity"),
        pytest.param(b'{"a":-1e400}', NAN, id="float-overflowing-to-minus-infinity"),
        pytest.param(b'{"a":"\\ud800"}', SURROGATE, id="lone-high-surrogate"),
        pytest.param(b'{"a":"\\uDC00"}', SURROGATE, id="lone-low-surrogate-uppercase"),
        pytest.param(b'{"\\ud800":1}', SURROGATE, id="lone-surrogate-in-key"),
        pytest.param(b'{"a":"\\udc00\\ud800"}', SURROGATE, id="surrogates-in-the-wrong-order"),
        pytest.param(b'{"a":"\xff"}', NOT_UTF8, id="invalid-utf8"),
        pytest.param(b'{"a":"\xed\xa0\x80"}', NOT_UTF8, id="utf8-encoded-surrogate"),
        pytest.param('{"a":1}'.encode("utf-16"), NOT_UTF8, id="utf16"),
        pytest.param(nested(65), TOO_DEEP, id="one-level-past-max-depth"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, TOO_DEEP, id="100000-nested-arrays"),
        pytest.param(
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000, TOO_DEEP, id="100000-nested-objects"
        ),
        pytest.param(b'{"a":' + b"[" * 100_000, TOO_DEEP, id="100000-unclosed-arrays"),
    ],
)
def test_loads_object_rejects_with_value_error_naming_the_rule(text, phrase):
    # ValueError and nothing else: never RecursionError, UnicodeError is a
    # ValueError too, and the callers map ValueError to their error class.
    # The message is one fixed phrase per rule (a server answers "Request body " + it).
    with pytest.raises(ValueError) as caught:
        loads_object(text)
    assert type(caught.value) is ValueError
    assert str(caught.value) == phrase


def test_max_depth_is_a_limit_not_an_off_by_one():
    # The brackets outnumber MAX_JSON_DEPTH in both, so the depth walk runs, not just the count.
    assert loads_object(nested(MAX_JSON_DEPTH, siblings=10)) == json.loads(
        nested(MAX_JSON_DEPTH, siblings=10)
    )
    with pytest.raises(ValueError, match=TOO_DEEP):
        loads_object(nested(MAX_JSON_DEPTH + 1, siblings=10))
    # Few brackets, however deep they could nest, skip the walk.
    assert loads_object(b'{"a":[[[]]]}') == {"a": [[[]]]}


def test_the_package_exports_the_json_helpers():
    assert livekit_auth.loads_object is loads_object and livekit_auth.dumps_compact is dumps_compact


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"sub": "", "iss": "devkey", "nbf": 1, "exp": 2}, id="plain"),
        pytest.param(
            {"name": "Zo\u00eb \U0001f600", "metadata": '{"k":"v"}'}, id="non-ascii-and-quotes"
        ),
        pytest.param({"video": {"canPublishSources": ["camera"], "hidden": False}}, id="nested"),
        pytest.param(
            {"attributes": {}, "roomConfig": {"agents": [{"agentName": "a"}]}}, id="empty-and-deep"
        ),
    ],
)
def test_dumps_compact_matches_pyjwt_serialization(payload):
    # The SDK signs PyJWT's serialization; the same bytes give the same token.
    ours = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{b64url_encode(dumps_compact(payload).encode('ascii'))}"
    assert jwt.encode(payload, "secret", algorithm="HS256").rsplit(".", 1)[0] == ours


def test_dumps_compact_refuses_nan():
    with pytest.raises(ValueError):
        dumps_compact({"x": float("nan")})


# --- RFC 7520 §4.4 ---------------------------------------------------------
# What this vector proves, and what it cannot: its payload is prose, not a JSON
# object with iss and exp, and its key is 32 raw bytes that are not UTF-8 (an
# API secret is a str), so no TokenVerifier can accept it. It checks our
# base64url codec and the HS256 signing input against an independent,
# published JWS; the LiveKit golden vectors check the verifier end to end.


def test_rfc7520_mac_matches_our_own_hmac():
    signing_input, signature = RFC7520_COMPACT.rsplit(".", 1)
    mac = hmac.new(RFC7520_KEY, signing_input.encode("ascii"), hashlib.sha256).digest()
    assert b64url_decode(signature) == mac
    assert b64url_encode(mac) == signature


def test_rfc7520_segments_decode_to_the_exact_bytes():
    header, payload, signature = RFC7520_COMPACT.split(".")
    assert b64url_decode(header) == RFC7520_HEADER
    assert b64url_decode(payload) == RFC7520_PAYLOAD
    assert len(b64url_decode(signature)) == 32
    # The payload segment ends in a partial group (length % 4 == 3): the
    # unpadded form that the RFC prints and that we must write and accept.
    assert len(payload) % 4 == 3


def test_rfc7520_segments_are_what_we_encode():
    signing_input = b64url_encode(RFC7520_HEADER) + "." + b64url_encode(RFC7520_PAYLOAD)
    assert signing_input == RFC7520_COMPACT.rsplit(".", 1)[0]


def test_rfc7520_header_is_strict_json():
    assert loads_object(RFC7520_HEADER) == {
        "alg": "HS256",
        "kid": "018c0ae5-4d9b-471b-bfd6-eef314bc7037",
    }
    # The payload is not JSON at all, which is why the vector stops here.
    with pytest.raises(ValueError):
        loads_object(RFC7520_PAYLOAD)
