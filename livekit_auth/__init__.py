"""Standard-library LiveKit access tokens and webhook verification."""

from ._strict import dumps_compact, loads_object
from .errors import (
    BadSignature,
    LiveKitAuthError,
    MalformedToken,
    MalformedWebhook,
    TokenExpired,
    TokenNotYetValid,
    WebhookBodyMismatch,
    WrongIssuer,
)
from .tokens import DEFAULT_TTL, AccessToken, Claims, SIPGrants, VideoGrants
from .verification import DEFAULT_LEEWAY, MAX_TOKEN_LENGTH, TokenVerifier
from .webhook import WebhookEvent, WebhookReceiver

__all__ = [
    "AccessToken",
    "BadSignature",
    "Claims",
    "DEFAULT_LEEWAY",
    "DEFAULT_TTL",
    "LiveKitAuthError",
    "MAX_TOKEN_LENGTH",
    "MalformedToken",
    "MalformedWebhook",
    "SIPGrants",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenVerifier",
    "VideoGrants",
    "WebhookBodyMismatch",
    "WebhookEvent",
    "WebhookReceiver",
    "WrongIssuer",
    "dumps_compact",
    "loads_object",
]
