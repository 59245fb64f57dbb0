"""Verifying webhook requests: golden vectors, the SDK both ways, bad-input tables, fuzzing."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import time
from datetime import timedelta

import pytest
from google.protobuf.json_format import ParseDict
from livekit import api
from livekit.protocol.webhook import WebhookEvent

import livekit_auth as la
from helpers import freeze_sdk_clock, mutate_bytes, mutate_claims, mutate_text
from vectors import API_KEY, API_SECRET, VECTORS, WEBHOOK_VECTORS, body_sha256, sign

# PyJWT warns that "secret" is short; it is the golden vectors' (LiveKit dev) secret.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

NOW = 1735689600  # the golden vectors' clock, 2025-01-01T00:00:00Z
RECEIVER = la.WebhookReceiver(la.TokenVerifier(API_KEY, API_SECRET))
BODY = VECTORS["sdk-webhook"].body
EVENT = json.loads(BODY)


def webhook_token(
    body: bytes = BODY, *, sha256: str = None, now: float = NOW, secret: str = API_SECRET
) -> str:
    """An Authorization token for this body, as the SDK mints it (5 minutes)."""
    return (
        la.AccessToken(API_KEY, secret)
        .with_sha256(body_sha256(body) if sha256 is None else sha256)
        .with_ttl(timedelta(minutes=5))
        .to_jwt(now=now)
    )


def sdk_receive(body: bytes, authorization: str, monkeypatch, now: float = NOW) -> WebhookEvent:
    freeze_sdk_clock(monkeypatch, now)
    receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
    return receiver.receive(body.decode("utf-8"), authorization)  # the SDK takes the body as str


def as_event(event: dict) -> WebhookEvent:
    return ParseDict(event, WebhookEvent(), ignore_unknown_fields=True)


# --- Golden vectors ------------------------------------------------------------


@pytest.mark.parametrize("vector", WEBHOOK_VECTORS, ids=lambda v: v.name)
def test_webhook_vector_returns_the_event(vector):
    assert vector.payload["sha256"] == body_sha256(vector.body)
    assert RECEIVER.receive(vector.body, vector.jwt, now=vector.now).to_dict() == json.loads(
        vector.body
    )


@pytest.mark.parametrize("vector", WEBHOOK_VECTORS, ids=lambda v: v.name)
def test_webhook_vector_is_the_event_the_sdk_reads(vector, monkeypatch):
    event = RECEIVER.receive(vector.body, vector.jwt, now=vector.now)
    assert sdk_receive(vector.body, vector.jwt, monkeypatch, now=vector.now) == as_event(
        event.to_dict()
    )


@pytest.mark.parametrize(
    "authorization",
    ["{}", "Bearer {}", "bearer {}", "BEARER {}"],
    ids=["bare", "bearer", "bearer-lowercase", "bearer-uppercase"],
)
@pytest.mark.parametrize("body_as_str", [False, True], ids=["body-bytes", "body-str"])
def test_webhook_accepts_bare_or_bearer_token_and_bytes_or_str(authorization, body_as_str):
    # LiveKit sends the bare token; the auth-scheme is case-insensitive (RFC 9110 §11.1).
    vector = VECTORS["server-webhook"]
    body = vector.body.decode("utf-8") if body_as_str else vector.body
    event = RECEIVER.receive(body, authorization.format(vector.jwt), now=vector.now)
    assert event.to_dict() == json.loads(vector.body)


def test_sdk_rejects_the_bearer_prefix_we_accept(monkeypatch):
    with pytest.raises(Exception):
        sdk_receive(BODY, "Bearer " + webhook_token(), monkeypatch)
    assert RECEIVER.receive(BODY, "Bearer " + webhook_token(), now=NOW).to_dict() == EVENT


@pytest.mark.parametrize("vector", WEBHOOK_VECTORS, ids=lambda v: v.name)
def test_a_space_after_any_comma_breaks_the_hash(vector, monkeypatch):
    # The body is hashed as received, never re-serialized: the vector's note.
    commas = [i for i, byte in enumerate(vector.body) if byte == ord(",")]
    assert commas
    for i in commas:
        tampered = vector.body[: i + 1] + b" " + vector.body[i + 1 :]
        assert json.loads(tampered) == json.loads(vector.body)  # same JSON, other bytes
        with pytest.raises(la.WebhookBodyMismatch):
            RECEIVER.receive(tampered, vector.jwt, now=vector.now)
    with pytest.raises(Exception, match="hash mismatch"):
        sdk_receive(tampered, vector.jwt, monkeypatch, now=vector.now)


def test_sha256_set_on_the_builders_claims_signs_a_webhook_as_with_the_sdk(monkeypatch):
    # How the SDK's own tests sign a webhook: the claim set on the builder, not with with_sha256.
    freeze_sdk_clock(monkeypatch, NOW)
    ours, theirs = la.AccessToken(API_KEY, API_SECRET), api.AccessToken(API_KEY, API_SECRET)
    ours.claims.sha256 = body_sha256(BODY)
    theirs.claims.sha256 = body_sha256(BODY)
    authorization = ours.to_jwt(now=NOW)
    assert authorization == theirs.to_jwt()
    assert RECEIVER.receive(BODY.decode(), authorization, now=NOW).to_dict() == EVENT
    assert sdk_receive(BODY, authorization, monkeypatch).event == EVENT["event"]
    with pytest.raises(la.WebhookBodyMismatch):
        RECEIVER.receive(BODY + b" ", authorization, now=NOW)


# --- Conformance both ways, on the real clock ------------------------------------

BODIES = [
    pytest.param(VECTORS["sdk-webhook"].body, id="room-started"),
    pytest.param(VECTORS["server-webhook"].body, id="participant-joined"),
    pytest.param(
        '{"event":"room_finished","room":{"name":"Zo\u00eb \U0001f600"}}'.encode(),
        id="non-ascii-utf8",
    ),
    pytest.param(
        b'{\n  "event": "track_published",\n  "track": {"sid": "TR_1", "type": "VIDEO"}\n}\n',
        id="pretty-printed",
    ),
    pytest.param(
        b'{"event":"egress_ended","egressInfo":{"egressId":"EG_1","status":"EGRESS_COMPLETE"}}',
        id="egress",
    ),
    pytest.param(b'{"event":"room_started","futureField":{"x":[1,2]}}', id="unknown-field"),
]


@pytest.fixture
def now(monkeypatch):
    value = math.floor(time.time()) + 0.25
    freeze_sdk_clock(monkeypatch, value)
    return value


@pytest.mark.parametrize("body", BODIES)
def test_sdk_webhook_passes_ours(body, now):
    sdk_token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_sha256(body_sha256(body))
        .with_ttl(timedelta(minutes=5))
    )
    authorization = sdk_token.to_jwt()
    assert RECEIVER.receive(body, authorization, now=now).to_dict() == json.loads(body)


@pytest.mark.parametrize("body", BODIES)
def test_our_webhook_passes_the_sdk(body, now):
    receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
    event = receiver.receive(body.decode("utf-8"), webhook_token(body, now=now))
    assert event == as_event(json.loads(body))


# --- Inputs both reject ----------------------------------------------------------


def signed(body: bytes, error: type, id: str):
    """A row whose token signs this exact body, so the body's own check is what fails."""
    return pytest.param(body, webhook_token(body), error, id=id)


ACCESS_TOKEN = (
    la.AccessToken(API_KEY, API_SECRET)
    .with_identity("alice")
    .with_grants(la.VideoGrants(room_join=True, room="room-1"))
    .to_jwt(now=NOW)
)
_URLSAFE = body_sha256(BODY).replace("+", "-").replace("/", "_")
assert _URLSAFE != body_sha256(BODY), "the url-safe row needs a hash with + or /"

BOTH_REJECT = [
    # A token from /token has no sha256: it must never pass as a webhook.
    pytest.param(BODY, ACCESS_TOKEN, la.MalformedToken, id="access-token-without-sha256"),
    pytest.param(BODY, webhook_token(sha256=""), la.MalformedToken, id="sha256-empty"),
    pytest.param(
        BODY.replace(b"room-1", b"room-2"),
        webhook_token(),
        la.WebhookBodyMismatch,
        id="body-one-byte-changed",
    ),
    pytest.param(BODY[:-1], webhook_token(), la.WebhookBodyMismatch, id="body-truncated"),
    pytest.param(BODY + b"\n", webhook_token(), la.WebhookBodyMismatch, id="body-trailing-newline"),
    pytest.param(b"", webhook_token(), la.WebhookBodyMismatch, id="body-empty"),
    pytest.param(
        BODY,
        webhook_token(b'{"event":"room_finished"}'),
        la.WebhookBodyMismatch,
        id="sha256-of-another-body",
    ),
    # The claim is standard base64 with padding, exactly as LiveKit writes it.
    pytest.param(
        BODY,
        webhook_token(sha256=body_sha256(BODY).rstrip("=")),
        la.MalformedToken,
        id="sha256-unpadded",
    ),
    pytest.param(BODY, webhook_token(sha256=_URLSAFE), la.MalformedToken, id="sha256-url-safe"),
    pytest.param(
        BODY,
        webhook_token(sha256=hashlib.sha256(BODY).hexdigest()),
        la.MalformedToken,
        id="sha256-hex",
    ),
    pytest.param(
        BODY,
        webhook_token(sha256=body_sha256(BODY)[:-4] + "===="),
        la.MalformedToken,
        id="sha256-truncated-then-padded",
    ),
    # The token itself.
    pytest.param(BODY, webhook_token(now=NOW - 361), la.TokenExpired, id="token-expired"),
    pytest.param(BODY, webhook_token(now=NOW + 61), la.TokenNotYetValid, id="token-not-yet-valid"),
    pytest.param(
        BODY, webhook_token(secret="not-the-secret"), la.BadSignature, id="token-wrong-secret"
    ),
    pytest.param(BODY, webhook_token()[:-3], la.BadSignature, id="token-signature-truncated"),
    pytest.param(
        BODY, "Basic " + webhook_token(), la.MalformedToken, id="authorization-basic-scheme"
    ),
    # The body, correctly signed, but not a webhook event.
    signed(b'{"event":"a","event":"b"}', la.MalformedWebhook, "body-duplicate-key"),
    signed(b'["event"]', la.MalformedWebhook, "body-array"),
    signed(b'{"event":1}', la.MalformedWebhook, "event-int"),
    signed(b'{"event":"\\ud800"}', la.MalformedWebhook, "event-lone-surrogate"),
    signed(b'\xef\xbb\xbf{"event":"room_started"}', la.MalformedWebhook, "body-utf8-bom"),
    signed(b'{"event":"room_started",}', la.MalformedWebhook, "body-trailing-comma"),
    signed(
        b'{"event":"room_started","n":' + b"9" * 5000 + b"}",
        la.MalformedWebhook,
        "body-5000-digit-integer",
    ),
    # The top-level fields handlers read have the event's types.
    signed(b'{"event":"room_started","room":5}', la.MalformedWebhook, "room-int"),
    signed(
        b'{"event":"egress_started","egressInfo":true}', la.MalformedWebhook, "egress-info-bool"
    ),
    signed(b'{"event":"room_started","id":7}', la.MalformedWebhook, "id-int"),
    # Nesting far past the recursion limit: MalformedWebhook, never RecursionError.
    signed(
        b'{"event":"a","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        la.MalformedWebhook,
        "body-100000-nested-arrays",
    ),
    signed(
        b'{"event":"a","x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        la.MalformedWebhook,
        "body-100000-nested-objects",
    ),
    signed(b"[" * 100_000, la.MalformedWebhook, "body-100000-unclosed-arrays"),
]


@pytest.mark.parametrize("body, authorization, error", BOTH_REJECT)
def test_both_reject(body, authorization, error, monkeypatch):
    with pytest.raises(error):
        RECEIVER.receive(body, authorization, now=NOW)
    with pytest.raises(Exception):
        sdk_receive(body, authorization, monkeypatch)


# --- Inputs the SDK accepts and we reject: one row per place we are stricter ---

_SHA = body_sha256(BODY)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

STRICTER = [
    # The SDK reads sha256 with base64.b64decode(), which ignores unused low
    # bits, characters outside the alphabet and anything after the padding;
    # we accept the one spelling LiveKit writes (43 characters and "=").
    pytest.param(
        BODY,
        webhook_token(sha256=_SHA[:-2] + _ALPHABET[_ALPHABET.index(_SHA[-2]) + 1] + "="),
        la.MalformedToken,
        id="sha256-nonzero-trailing-bits",
    ),
    pytest.param(
        BODY, webhook_token(sha256=_SHA + "="), la.MalformedToken, id="sha256-extra-padding"
    ),
    pytest.param(
        BODY, webhook_token(sha256=_SHA + "AAAA"), la.MalformedToken, id="sha256-data-after-padding"
    ),
    pytest.param(
        BODY,
        webhook_token(sha256=_SHA[:20] + "\n" + _SHA[20:]),
        la.MalformedToken,
        id="sha256-newline-inside",
    ),
    pytest.param(
        BODY, webhook_token(sha256=" " + _SHA), la.MalformedToken, id="sha256-leading-space"
    ),
    pytest.param(
        BODY,
        webhook_token(sha256=_SHA[:20] + "!" + _SHA[20:]),
        la.MalformedToken,
        id="sha256-stray-character",
    ),
    # A webhook is an event: the SDK's protobuf parser fills defaults for
    # anything missing, so {} is an event with no name there.
    signed(b"{}", la.MalformedWebhook, "body-empty-object"),
    # Even a bare JSON string parses there, as an empty event.
    signed(b'"room_started"', la.MalformedWebhook, "body-string"),
    signed(b'{"id":"EV_1","createdAt":"1735689600"}', la.MalformedWebhook, "body-without-event"),
    signed(b'{"event":""}', la.MalformedWebhook, "event-empty"),
    signed(b'{"event":null}', la.MalformedWebhook, "event-null"),
    # The SDK's protobuf reader (as installed) lets these message fields through.
    signed(
        b'{"event":"participant_joined","participant":"alice"}',
        la.MalformedWebhook,
        "participant-string",
    ),
    signed(b'{"event":"track_published","track":[]}', la.MalformedWebhook, "track-list"),
    # Strict JSON: the SDK's json.loads reads NaN and Infinity, and 1e400 as infinity.
    signed(b'{"event":"room_started","x":NaN}', la.MalformedWebhook, "body-nan"),
    signed(b'{"event":"room_started","x":Infinity}', la.MalformedWebhook, "body-infinity"),
    signed(
        b'{"event":"room_started","x":1e400}',
        la.MalformedWebhook,
        "body-float-overflowing-to-infinity",
    ),
]


@pytest.mark.parametrize("body, authorization, error", STRICTER)
def test_stricter_than_the_sdk(body, authorization, error, monkeypatch):
    sdk_receive(body, authorization, monkeypatch)  # the SDK accepts it...
    with pytest.raises(error):  # ...and we refuse it, with this class
        RECEIVER.receive(body, authorization, now=NOW)


# --- Inputs the SDK cannot be given (it takes two str), and our Authorization parsing ---

OURS_ONLY = [
    pytest.param(BODY, "", la.MalformedToken, id="authorization-empty"),
    pytest.param(BODY, None, la.MalformedToken, id="authorization-missing"),
    pytest.param(BODY, webhook_token().encode(), la.MalformedToken, id="authorization-bytes"),
    pytest.param(BODY, "Bearer ", la.MalformedToken, id="authorization-bearer-only"),
    pytest.param(
        BODY, "Bearer  " + webhook_token(), la.MalformedToken, id="authorization-bearer-two-spaces"
    ),
    pytest.param(
        BODY, "Bearer" + webhook_token(), la.MalformedToken, id="authorization-bearer-no-space"
    ),
    pytest.param(BODY, " " + webhook_token(), la.MalformedToken, id="authorization-leading-space"),
    pytest.param(None, webhook_token(), la.MalformedWebhook, id="body-none"),
    pytest.param(1, webhook_token(), la.MalformedWebhook, id="body-int"),
    pytest.param(bytearray(BODY), webhook_token(), la.MalformedWebhook, id="body-bytearray"),
    pytest.param(memoryview(BODY), webhook_token(), la.MalformedWebhook, id="body-memoryview"),
    pytest.param(
        '{"event":"\ud800"}', webhook_token(), la.MalformedWebhook, id="body-str-lone-surrogate"
    ),
    signed(b'{"event":"\xff"}', la.MalformedWebhook, "body-not-utf8"),
    signed('{"event":"room_started"}'.encode("utf-16"), la.MalformedWebhook, "body-utf16"),
]


@pytest.mark.parametrize("body, authorization, error", OURS_ONLY)
def test_rejects(body, authorization, error):
    with pytest.raises(error):
        RECEIVER.receive(body, authorization, now=NOW)


# --- Each refusal's exact class and message ---------------------------------------
# str(err) is the errorMessage LiveKit reads in a 401 or 400, so the wording is behaviour too
# (tests/mutate.py changes each message and expects a test to fail).


def _receive(body, authorization):
    return lambda: RECEIVER.receive(body, authorization, now=NOW)


def _signed_receive(body: bytes):
    return _receive(body, webhook_token(body))


_SHAPE = "body does not have the shape of a LiveKit event"
MESSAGES = [
    pytest.param(
        _receive(BODY, ""), la.MalformedToken, "Authorization is missing", id="authorization-empty"
    ),
    pytest.param(
        _receive(BODY, ACCESS_TOKEN),
        la.MalformedToken,
        "token has no sha256 claim: not a webhook token",
        id="access-token-without-sha256",
    ),
    pytest.param(
        _receive(BODY, webhook_token(sha256=_SHA.rstrip("="))),
        la.MalformedToken,
        "sha256 claim is not padded standard base64 of 32 bytes",
        id="sha256-unpadded",
    ),
    pytest.param(
        _receive('{"event":"\ud800"}', webhook_token()),
        la.MalformedWebhook,
        "body is not valid UTF-8",
        id="body-str-lone-surrogate",
    ),
    pytest.param(
        _receive(1, webhook_token()), la.MalformedWebhook, "body must be bytes", id="body-int"
    ),
    pytest.param(
        _receive(BODY[:-1], webhook_token()),
        la.WebhookBodyMismatch,
        "body does not match the signed sha256",
        id="body-truncated",
    ),
    pytest.param(
        _signed_receive(b'["event"]'),
        la.MalformedWebhook,
        "body is not a JSON object",
        id="body-array",
    ),
    pytest.param(
        _signed_receive(b'{"event":1}'),
        la.MalformedWebhook,
        'body has no "event" string',
        id="event-int",
    ),
    pytest.param(
        _signed_receive(b'{"event":"room_started","id":7}'),
        la.MalformedWebhook,
        _SHAPE,
        id="id-int",
    ),
    # One row per message field handlers read first: each is checked at the top level.
    *(
        pytest.param(
            _signed_receive(b'{"event":"room_started","%s":[]}' % name.encode()),
            la.MalformedWebhook,
            _SHAPE,
            id=f"{name}-list",
        )
        for name in ("room", "participant", "track", "egressInfo", "ingressInfo", "job")
    ),
    pytest.param(
        lambda: la.WebhookEvent([]),
        la.MalformedWebhook,
        "event is not a JSON object",
        id="event-list",
    ),
    pytest.param(
        lambda: la.WebhookEvent({"event": "room_started", "room": {"name": 5}}).room.name,
        la.MalformedWebhook,
        "event field name has the wrong type",
        id="room-name-int",
    ),
    pytest.param(
        lambda: (
            la.WebhookEvent(
                {"event": "egress_ended", "egressInfo": {"roomName": 5}}
            ).egress_info.room_name
        ),
        la.MalformedWebhook,
        "event field roomName has the wrong type",
        id="egress-room-name-int",
    ),
]


@pytest.mark.parametrize("call, error, message", MESSAGES)
def test_each_refusal_has_its_exact_class_and_message(call, error, message):
    with pytest.raises(la.LiveKitAuthError) as caught:
        call()
    assert (type(caught.value), str(caught.value)) == (error, message)


# --- The contract: receive returns a dict or raises LiveKitAuthError --------------

FUZZ_NOW = NOW + 7  # both golden webhook tokens are valid then
SEEDS = [(v.body, v.jwt) for v in WEBHOOK_VECTORS]


def _fuzz_request(rng: random.Random) -> tuple:
    body, authorization = rng.choice(SEEDS)
    kind = rng.randrange(6)
    if kind == 0:  # body edited, token kept: the hash must catch it
        return mutate_bytes(rng, body), authorization
    if kind == 1:  # body edited and signed: the JSON checks must catch it
        body = mutate_bytes(rng, body)
        return body, webhook_token(body, now=FUZZ_NOW)
    if kind == 2:  # Authorization edited
        prefix = rng.choice(("", "Bearer ", "bearer "))
        return body, mutate_text(rng, prefix + authorization, la.MAX_TOKEN_LENGTH)
    if kind == 3:  # the sha256 claim edited, token re-signed
        sha256 = mutate_text(rng, body_sha256(body), 64)
        return body, webhook_token(body, sha256=sha256 if type(sha256) is str else "", now=FUZZ_NOW)
    if kind == 4:  # the body as something other than bytes
        text = body.decode("utf-8")
        return rng.choice((None, text, text + "\ud800", bytearray(body), 0, [body])), authorization
    # A Go-server-shaped token with a claim changed (the golden one has iat too).
    payload = dict(VECTORS["server-webhook"].payload)
    claim = rng.choice(("iss", "exp", "nbf", "iat", "sha256"))
    payload[claim] = rng.choice((None, 0, NOW, NOW + 3600, "x", [], body_sha256(body)))
    return body, sign(b'{"alg":"HS256","typ":"JWT"}', json.dumps(payload).encode())


def test_random_mutations_return_an_event_or_raise_livekit_auth_error():
    rng = random.Random(20250102)
    outcomes = collections.Counter()
    for case in range(3000):
        body, authorization = _fuzz_request(rng)
        try:
            event = RECEIVER.receive(body, authorization, now=FUZZ_NOW)
        except la.LiveKitAuthError as error:
            outcomes[type(error).__name__] += 1
        except Exception as error:  # the contract is broken: show the case to reproduce it
            pytest.fail(
                f"case {case}: {type(error).__name__}: {error} for {body!r:.200} {authorization!r:.200}"
            )
        else:
            assert type(event) is la.WebhookEvent and type(event.event) is str and event.event
            outcomes["ok"] += 1
    # Every stage must be reached, or the contract was barely tested.
    assert set(outcomes) == {
        "ok",
        "MalformedToken",
        "BadSignature",
        "WrongIssuer",
        "TokenExpired",
        "TokenNotYetValid",
        "WebhookBodyMismatch",
        "MalformedWebhook",
    }, outcomes
    assert min(outcomes.values()) >= 10, outcomes


# --- Documented exception: below the top level, an event is checked only as its fields are read ---


@pytest.mark.parametrize(
    "body, read",
    [
        (b'{"event":"room_started","room":{"name":5}}', lambda event: event.room.name),
        (b'{"event":"room_started","createdAt":"abc"}', lambda event: event.created_at),
    ],
    ids=["room-name-int", "created-at-not-a-number"],
)
def test_deep_event_fields_are_checked_when_read_where_the_sdk_parses_protobuf(
    body, read, monkeypatch
):
    authorization = webhook_token(body)
    with pytest.raises(Exception):
        sdk_receive(body, authorization, monkeypatch)
    event = RECEIVER.receive(body, authorization, now=NOW)
    assert event.to_dict() == json.loads(body)
    assert RECEIVER.read_event(body, RECEIVER.authorize(authorization, now=NOW)) == json.loads(body)
    with pytest.raises(la.MalformedWebhook, match="has the wrong type"):
        read(event)


# --- Reading an event by attribute: protobuf's defaults, exact types, MalformedWebhook otherwise ---


@pytest.mark.parametrize(
    "event, read, expected",
    [
        pytest.param(
            {"createdAt": "1735689600"}, lambda e: e.created_at, 1735689600, id="int64-as-string"
        ),
        pytest.param(
            {"createdAt": 1735689600}, lambda e: e.created_at, 1735689600, id="int64-as-number"
        ),
        pytest.param({"createdAt": "-5"}, lambda e: e.created_at, -5, id="negative"),
        pytest.param(
            {"createdAt": "9" * 20}, lambda e: e.created_at, int("9" * 20), id="20-digits"
        ),
        pytest.param({"createdAt": None}, lambda e: e.created_at, 0, id="null-is-the-default"),
        pytest.param({}, lambda e: e.created_at, 0, id="absent-int"),
        pytest.param({}, lambda e: e.id, "", id="absent-string"),
        pytest.param({}, lambda e: e.track.muted, False, id="absent-bool-in-absent-message"),
        pytest.param({}, lambda e: e.track.type, "AUDIO", id="absent-enum-is-value-0s-name"),
        pytest.param({}, lambda e: e.participant.attributes, {}, id="absent-map"),
        pytest.param(
            {},
            lambda e: e.ingress_info.state.status,
            "ENDPOINT_INACTIVE",
            id="absent-nested-message",
        ),
        pytest.param({"room": None}, lambda e: e.room.to_dict(), {}, id="null-message"),
        pytest.param({"track": {"type": "VIDEO"}}, lambda e: e.track.type, "VIDEO", id="enum-name"),
        pytest.param({"track": {"muted": True}}, lambda e: e.track.muted, True, id="bool"),
        pytest.param(
            {"ingressInfo": {"state": {"status": "ENDPOINT_PUBLISHING"}}},
            lambda e: e.ingress_info.state.status,
            "ENDPOINT_PUBLISHING",
            id="message-in-message",
        ),
    ],
)
def test_event_fields_read_as_protobuf_does(event, read, expected):
    value = read(la.WebhookEvent({"event": "room_started", **event}))
    assert (value, type(value)) == (expected, type(expected))


def test_event_fields_are_read_only_as_they_read_the_json():
    # A value set on an event would disagree with to_dict(), which stores and forwards it.
    event = la.WebhookEvent({"event": "room_started", "room": {"name": "r"}})
    with pytest.raises(AttributeError, match="^field room is read-only$"):
        event.room = la.WebhookEvent({})
    with pytest.raises(AttributeError, match="^field name is read-only$"):
        event.room.name = "x"
    with pytest.raises(AttributeError, match="^field event is read-only$"):
        del event.event
    assert event.room.name == "r"
    assert event.to_dict() == {"event": "room_started", "room": {"name": "r"}}


@pytest.mark.parametrize(
    "event, read, expected",
    [
        pytest.param(
            {"room": {"num_participants": 3}}, lambda e: e.room.num_participants, 3, id="int"
        ),
        pytest.param({"created_at": "17"}, lambda e: e.created_at, 17, id="int64-as-string"),
        pytest.param(
            {"egress_info": {"room_name": "r"}}, lambda e: e.egress_info.room_name, "r", id="inner"
        ),
        pytest.param({"track": {"mime_type": "m"}}, lambda e: e.track.mime_type, "m", id="string"),
        pytest.param(
            {"room": {"num_participants": None}}, lambda e: e.room.num_participants, 0, id="null"
        ),
    ],
)
def test_fields_under_their_protobuf_names_read_as_the_sdk_reads_them(event, read, expected):
    # protobuf's JSON reader takes a field's own name (snake_case) as well as its JSON name.
    ours = read(la.WebhookEvent({"event": "room_started", **event}))
    theirs = read(as_event({"event": "room_started", **event}))
    assert (ours, type(ours)) == (theirs, type(theirs)) == (expected, type(expected))


@pytest.mark.parametrize(
    "event, read",
    [
        pytest.param({"room": {"name": 5}}, lambda e: e.room.name, id="string-as-int"),
        pytest.param(
            {"room": {"num_participants": "x"}}, lambda e: e.room.num_participants, id="snake-case"
        ),
        pytest.param({"id": ["EV_1"]}, lambda e: e.id, id="string-as-list"),
        pytest.param({"createdAt": 1.0}, lambda e: e.created_at, id="int-as-float"),
        pytest.param({"createdAt": True}, lambda e: e.created_at, id="int-as-bool"),
        pytest.param({"createdAt": "1_0"}, lambda e: e.created_at, id="int-string-with-underscore"),
        pytest.param({"createdAt": " 1"}, lambda e: e.created_at, id="int-string-with-space"),
        pytest.param({"createdAt": "+1"}, lambda e: e.created_at, id="int-string-with-plus"),
        pytest.param(
            {"createdAt": "\u0661"}, lambda e: e.created_at, id="int-string-non-ascii-digit"
        ),
        pytest.param({"createdAt": "1.5"}, lambda e: e.created_at, id="int-string-fraction"),
        pytest.param({"createdAt": "9" * 21}, lambda e: e.created_at, id="int-string-21-digits"),
        pytest.param({"createdAt": ""}, lambda e: e.created_at, id="int-string-empty"),
        pytest.param({"track": {"muted": "false"}}, lambda e: e.track.muted, id="bool-as-string"),
        pytest.param({"track": {"muted": 0}}, lambda e: e.track.muted, id="bool-as-int"),
        pytest.param({"track": {"type": 1}}, lambda e: e.track.type, id="enum-as-number"),
        pytest.param(
            {"participant": {"attributes": {"a": 1}}},
            lambda e: e.participant.attributes,
            id="map-int-value",
        ),
        pytest.param(
            {"participant": {"attributes": []}},
            lambda e: e.participant.attributes,
            id="map-as-list",
        ),
        pytest.param(
            {"ingressInfo": {"state": []}}, lambda e: e.ingress_info.state, id="message-as-list"
        ),
        pytest.param(
            {"ingressInfo": {"state": "s"}}, lambda e: e.ingress_info.state, id="message-as-string"
        ),
    ],
)
def test_event_field_of_the_wrong_type_raises_malformed_webhook_when_read(event, read):
    with pytest.raises(la.MalformedWebhook, match="has the wrong type") as caught:
        read(la.WebhookEvent({"event": "room_started", **event}))
    # Fixed text about the field; the value is never echoed.
    assert "\u0661" not in str(caught.value) and "false" not in str(caught.value)


@pytest.mark.parametrize("data", [None, "room_started", [], b"{}"], ids=repr)
def test_webhook_event_is_built_from_a_dict_only(data):
    with pytest.raises(la.MalformedWebhook):
        la.WebhookEvent(data)


def test_webhook_event_gives_its_dict_back():
    data = json.loads(VECTORS["server-webhook"].body)
    event = la.WebhookEvent(data)
    assert event.to_dict() is data
    assert event.participant.to_dict() is data["participant"]
    assert (
        la.WebhookEvent(json.loads(json.dumps(event.to_dict()))).participant.joined_at == 1735689605
    )


def _read_every_field(message) -> int:
    """Read each attribute of an event, and of the messages in it; returns how many were read."""
    count = 0
    for name in dir(type(message)):
        if isinstance(getattr(type(message), name), la.webhook._Field):
            value = getattr(message, name)
            assert type(value) in (str, int, bool, dict) or isinstance(value, la.webhook._Message)
            count += 1 if type(value) in (str, int, bool, dict) else _read_every_field(value)
    return count


def test_random_field_values_read_or_raise_malformed_webhook():
    # The contract goes on past receive: a field read returns a value of its kind or raises MalformedWebhook.
    rng = random.Random(20250103)
    seeds = [json.loads(v.body) for v in WEBHOOK_VECTORS] + [
        json.loads(body.values[0]) for body in BODIES
    ]
    names = (
        "room",
        "participant",
        "track",
        "egressInfo",
        "ingressInfo",
        "job",
        "createdAt",
        "id",
        "numDropped",
    )
    outcomes = collections.Counter()
    for _ in range(2000):
        event = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            event = mutate_claims(rng, event, names)
        try:
            _read_every_field(la.WebhookEvent(event))
        except la.MalformedWebhook:
            outcomes["MalformedWebhook"] += 1
        else:
            outcomes["ok"] += 1
    assert min(outcomes["ok"], outcomes["MalformedWebhook"]) >= 100, outcomes
