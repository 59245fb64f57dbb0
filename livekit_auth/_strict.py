"""Strict decoders shared by token and webhook verification, and the compact JSON encoder."""

# Each decoder raises ValueError with a fixed message; verification turns it into
# the LiveKitAuthError subclass that fits where the input came from. The package
# exports loads_object and dumps_compact; the base64url pair stays private.

import base64
import json
import math
import re

# RFC 7515 §2: base64url without padding. Only the canonical encoding is
# accepted (unused trailing bits zero), so one token has exactly one spelling.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# A JSON escape of a UTF-16 surrogate; only then can a parsed string hold an
# unpaired one, which is not Unicode and which LiveKit would silently replace.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if b64url_encode(raw) != segment:
        raise ValueError("not canonical base64url")
    return raw


class _Refused(ValueError):
    """A rule of loads_object broken inside the parser; its message is the phrase to raise."""


def _finite_float(text: str) -> float:
    # The decoder calls this for the literals NaN, Infinity and -Infinity, and for
    # every number with a fraction or an exponent. A number too large for a double,
    # such as 1e400, parses to infinity: Infinity by another spelling, so it is
    # refused like the literal.
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("has NaN or Infinity")
    return value


def _object_without_duplicates(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused("has a duplicate key")
    return obj


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_finite_float,
    parse_float=_finite_float,
)

# Deeper than any LiveKit message; shallow enough that code walking the result
# recursively (json.dumps, a webhook handler) stays far from the recursion limit.
MAX_JSON_DEPTH = 64


def _deeper_than(value: object, limit: int) -> bool:
    # `value` is a dict or a list; the recursion goes at most `limit` calls deep.
    children = value.values() if type(value) is dict else value
    return limit < 1 or any(
        _deeper_than(child, limit - 1) for child in children if type(child) in (dict, list)
    )


def loads_object(data: bytes) -> dict:
    """Parse UTF-8 JSON text (RFC 8259) whose top level must be an object.

    Raises ValueError whose message is the rule broken: "is not UTF-8", "is not valid JSON", "has a
    duplicate key", "has NaN or Infinity", "has an unpaired surrogate", "is nested too deeply", "is
    not a JSON object".
    """
    try:
        text = data.decode("utf-8")  # strictly UTF-8: json.loads would also take UTF-16 and UTF-32
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8") from None
    try:
        value = _DECODER.decode(text)
        # Encoding to UTF-8 fails exactly on an unpaired surrogate.
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    # The order matters: _Refused and UnicodeEncodeError are ValueErrors too.
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("has an unpaired surrogate") from None
    except _Refused as refused:
        raise ValueError(str(refused)) from None
    except ValueError:
        # JSONDecodeError, and int() of more than sys.get_int_max_str_digits() digits.
        raise ValueError("is not valid JSON") from None
    if type(value) is not dict:
        raise ValueError("is not a JSON object")
    # Past MAX_JSON_DEPTH is too deep. Counting brackets is cheap and bounds the
    # depth, so most documents skip the walk.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise ValueError("is nested too deeply")
    return value


def dumps_compact(value: object) -> str:
    """Serialize as PyJWT does (compact, ASCII), so tokens match the SDK's byte for byte."""
    # No check for cycles (a cycle ends in RecursionError instead): claims are
    # built from strings and copies made through JSON, which cannot hold one.
    return json.dumps(value, separators=(",", ":"), allow_nan=False, check_circular=False)
