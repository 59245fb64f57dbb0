"""The one exception tree of livekit_auth."""

# Every verification failure raises a subclass of LiveKitAuthError. Messages are
# fixed text about the shape of the problem: they never contain the token, the
# secret or any echoed input, so str(error) is safe to put in a response or a log.


class LiveKitAuthError(Exception):
    """Base class: verification returns a value or raises this, nothing else."""


class MalformedToken(LiveKitAuthError):
    """The token is not a well-formed HS256 JWT with the claims LiveKit requires."""


class BadSignature(LiveKitAuthError):
    """The signature does not match any configured secret."""


class TokenExpired(LiveKitAuthError):
    """The exp claim is in the past, beyond the leeway."""


class TokenNotYetValid(LiveKitAuthError):
    """The nbf or iat claim is in the future, beyond the leeway."""


class WrongIssuer(LiveKitAuthError):
    """The iss claim is not the API key whose secret signed the token."""


class WebhookBodyMismatch(LiveKitAuthError):
    """The body's SHA-256 differs from the sha256 claim of the signed token."""


class MalformedWebhook(LiveKitAuthError):
    """The signed body is not a LiveKit event (see WebhookReceiver.read_event)."""
