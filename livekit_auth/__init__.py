"""Standard-library LiveKit access tokens and webhook verification."""

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
from .tokens import DEFAULT_TTL, AccessToken, SIPGrants, VideoGrants
from .verification import DEFAULT_LEEWAY, MAX_TOKEN_LENGTH, Claims, TokenVerifier
from .webhook import WebhookReceiver

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
    "WebhookReceiver",
    "WrongIssuer",
]
