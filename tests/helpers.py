"""Test helpers: the official SDK on a frozen clock, comparable claim views, input mutators,
and webhook Authorization values as LiveKit signs them.

The SDK (livekit-api, with PyJWT) is imported here and in tests only, never by
livekit_auth.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import types
from typing import Optional

import jwt.api_jwt
from google.protobuf.json_format import MessageToDict
from livekit import api
from livekit.api import access_token as sdk_access_token

import livekit_auth as la
from vectors import body_sha256


def freeze_sdk_clock(monkeypatch, now: float) -> None:
    """Run the SDK at `now` instead of the system clock, both where it mints and where it checks.

    The SDK mints nbf/exp from datetime.datetime.now() in livekit.api.access_token;
    PyJWT checks exp/nbf/iat against datetime.now() in jwt.api_jwt. Pinning both
    lets one `now` drive the SDK and our `now=` argument alike, to the second
    and at the leeway edges. If either library stops reading the clock there,
    the tests that run the SDK on the 2025 golden vectors fail loudly (expired).
    """

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromtimestamp(now, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", FrozenDatetime)
    monkeypatch.setattr(
        sdk_access_token,
        "datetime",
        types.SimpleNamespace(
            datetime=FrozenDatetime, timezone=datetime.timezone, timedelta=datetime.timedelta
        ),
    )


def webhook_authorization(
    key: str, secret: str, body: bytes, *, now: Optional[float] = None, ttl: Optional[int] = None
) -> str:
    """An Authorization value as LiveKit sends it with a webhook: a JWT whose sha256 claim is the body's hash.

    `now` None mints at the real clock; `ttl` (seconds) None keeps AccessToken's default lifetime.
    """
    token = la.AccessToken(key, secret).with_sha256(body_sha256(body))
    if ttl is not None:
        token = token.with_ttl(datetime.timedelta(seconds=ttl))
    return token.to_jwt(now=now)


def sdk_view(claims: api.Claims) -> dict:
    """What the SDK's verifier read from a token, in a shape comparable with our_view."""
    return {
        "identity": claims.identity,
        "name": claims.name,
        "kind": claims.kind,
        "metadata": claims.metadata,
        # The SDK always returns grants: its defaults when the claim is absent.
        "video": dataclasses.asdict(claims.video),
        "sip": dataclasses.asdict(claims.sip),
        "attributes": claims.attributes,
        "sha256": claims.sha256,
        "room_preset": claims.room_preset or "",
        "room_config": None if claims.room_config is None else MessageToDict(claims.room_config),
    }


def our_view(claims: la.Claims) -> dict:
    """What our verifier read from a token, absent grants shown as the defaults (as the SDK does)."""
    return {
        "identity": claims.identity,
        "name": claims.name,
        "kind": claims.kind,
        "metadata": claims.metadata,
        "video": dataclasses.asdict(claims.video or la.VideoGrants()),
        "sip": dataclasses.asdict(claims.sip or la.SIPGrants()),
        "attributes": claims.attributes,
        "sha256": claims.sha256,
        "room_preset": claims.room_preset,
        "room_config": None if claims.room_config is None else claims.room_config.to_dict(),
    }


# Characters a mutation may write: the base64url alphabet, the separators and
# base64 relatives, whitespace, control, non-ASCII and a lone surrogate.
_CHARS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ".=+/ \t\n\x00\x7f\u00e9\u2019\U0001f600\ud800"
)


def mutate_text(rng: random.Random, text: str, huge: int) -> object:
    """One random edit of a token or header; sometimes not a str at all."""
    kind = rng.randrange(12)
    i = rng.randrange(len(text) + 1)
    if kind == 0:  # replace one character
        return text[:i] + rng.choice(_CHARS) + text[i + 1 :]
    if kind == 1:  # delete a run
        return text[:i] + text[i + rng.randint(1, 8) :]
    if kind == 2:  # insert characters
        return text[:i] + "".join(rng.choice(_CHARS) for _ in range(rng.randint(1, 4))) + text[i:]
    if kind == 3:  # truncate
        return text[:i]
    if kind == 4:  # duplicate, drop or swap whole segments
        parts = text.split(".")
        j = rng.randrange(len(parts))
        action = rng.randrange(3)
        if action == 0:
            parts.insert(j, parts[j])
        elif action == 1:
            del parts[j]
        else:
            k = rng.randrange(len(parts))
            parts[j], parts[k] = parts[k], parts[j]
        return ".".join(parts)
    if kind == 5:  # stray dots
        return text[:i] + "." * rng.randint(1, 3) + text[i:]
    if kind == 6:  # huge: around the length limit and far past it
        return text + rng.choice("A.=\u00e9") * rng.choice((huge - len(text), huge, 4 * huge))
    if kind == 7:  # flip the case of a run (base64url is case-sensitive)
        j = i + rng.randint(1, 6)
        return text[:i] + text[i:j].swapcase() + text[j:]
    if kind == 8:  # padding, which canonical base64url never has
        return text + "=" * rng.randint(1, 3)
    if kind == 9:  # surrounding whitespace
        return rng.choice((" ", "\n", "\t", "\r\n")) + text + rng.choice(("", " ", "\n"))
    if kind == 10:  # not a str
        return rng.choice(
            (
                None,
                text.encode("utf-8", "surrogatepass"),
                bytearray(b"x.y.z"),
                0,
                1.5,
                [text],
                {"t": text},
            )
        )
    return text  # unchanged: the valid input still verifies


# Bytes a JSON mutation may insert: syntax, number edge cases, escapes, non-UTF-8.
_JSON_SNIPPETS = (
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b'"',
    b"\\",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-0",
    b"9" * 5000,
    b"true",
    b"null",
    b'"\\ud800"',
    b'"\\udc00"',
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\x00",
    b" ",
    b"[" * 3000,
)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One random edit of JSON text: byte flips, deletions, or JSON-significant snippets."""
    kind = rng.randrange(4)
    i = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if kind == 1:
        return data[:i] + data[i + rng.randint(1, 8) :]
    if kind == 2:
        return data[:i] + rng.choice(_JSON_SNIPPETS) + data[i:]
    return data[:i]


# Values a claim may be replaced with: every JSON type, and the near misses.
JSON_VALUES = (
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63,
    10**30,
    1.5,
    1e300,
    "",
    "x",
    "1735689600",
    "\ud800",
    [],
    ["camera"],
    [1],
    {},
    {"a": 1},
    {"a": "b"},
)


def mutate_claims(rng: random.Random, claims: dict, names: tuple) -> dict:
    """Replace, drop or add one claim (or one field of a grant) with a random JSON value."""
    claims = dict(claims)
    name = rng.choice(names)
    action = rng.randrange(4)
    if action == 0:
        claims.pop(name, None)
    elif action == 1 and isinstance(claims.get(name), dict) and claims[name]:
        inner = dict(claims[name])
        inner[rng.choice(list(inner))] = rng.choice(JSON_VALUES)
        claims[name] = inner
    else:
        claims[name] = rng.choice(JSON_VALUES)
    return claims


# What a command a test starts needs in its environment to be measured by the coverage
# command (pyproject.toml, [tool.coverage.run]); empty in a plain run.
COVERAGE_ENV = {name: value for name, value in os.environ.items() if name.startswith("COVERAGE_")}
