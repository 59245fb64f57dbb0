"""Calling the WSGI app directly, as the tests of the app, its policy and its contract do.

`environ_for` makes a wsgiref test environ for one request and `run_app`
answers it (under wsgiref's validator unless told otherwise). How each module
fills in the request headers, and what it checks on every answer, is its own.
"""

from __future__ import annotations

import dataclasses
import json
import wsgiref.util
import wsgiref.validate


@dataclasses.dataclass
class Response:
    status: int
    headers: list
    body: bytes

    def header(self, name: str):
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[0] if values else None

    def json(self):
        return json.loads(self.body)


class UnreadableInput:
    """wsgi.input that records whether the app read the body, and fails the test if it did."""

    def __init__(self) -> None:
        self.touched = False

    def read(self, *args):
        self.touched = True
        raise AssertionError("the body must not be read")

    readline = readlines = read

    def __iter__(self):
        return self.read()


def environ_for(method: str, path: str, wsgi_input) -> dict:
    """wsgiref's test defaults, then this request line (no query string) and body stream.

    No CONTENT_TYPE or CONTENT_LENGTH: the caller sets them, or leaves them out.
    """
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(
        {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            # From this machine, as a LiveKit Server in development mode would be.
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": wsgi_input,
        }
    )
    return environ


def run_app(app, environ: dict, *, validate: bool = True) -> Response:
    """The app's answer to `environ`, its iterable drained and closed as a server would."""
    started = []

    def start_response(status, response_headers, exc_info=None):
        started[:] = [status, response_headers]

    wsgi_app = wsgiref.validate.validator(app) if validate else app
    result = wsgi_app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status_line, response_headers = started
    return Response(int(status_line[:3]), list(response_headers), body)
