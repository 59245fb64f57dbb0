"""The package as a whole: standard library only, one exception tree."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

import livekit_auth

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_imports_with_the_standard_library_alone():
    # -S: no site-packages, so neither livekit-api nor PyJWT can be found;
    # -E: no PYTHONPATH. The package must import anyway, and load nothing
    # outside the standard library.
    script = (
        "import sys, livekit_auth\n"
        "outside = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "print(sorted(outside - {'livekit_auth', '__main__'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-E", "-S", "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
    assert result.stderr == ""


ERRORS = [
    livekit_auth.MalformedToken,
    livekit_auth.BadSignature,
    livekit_auth.TokenExpired,
    livekit_auth.TokenNotYetValid,
    livekit_auth.WrongIssuer,
    livekit_auth.WebhookBodyMismatch,
    livekit_auth.MalformedWebhook,
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_a_livekit_auth_error(error):
    assert issubclass(error, livekit_auth.LiveKitAuthError)
    # Distinct reasons a caller acts on: none is a special case of another,
    # and none is a ValueError that a broad `except ValueError` would swallow.
    assert [e for e in ERRORS if issubclass(error, e)] == [error]
    assert not issubclass(error, ValueError)


def test_all_lists_exactly_the_public_names():
    # __init__ re-exports the public API and nothing else (the submodules
    # themselves are the only other names it holds). Public: no leading
    # underscore, and not a module; functions (loads_object) count too.
    public = {
        name
        for name, value in vars(livekit_auth).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(livekit_auth.__all__) == sorted(public)
    assert {"loads_object", "dumps_compact", "WebhookEvent", "Claims"} <= public
    # Every name in __all__ is really there (a stale entry would break `from livekit_auth import *`).
    assert all(hasattr(livekit_auth, name) for name in livekit_auth.__all__)
