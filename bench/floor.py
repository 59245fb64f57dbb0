"""The stdlib floor: the fastest answer http.server can give, for comparison.

A bare ThreadingHTTPServer that answers every POST with a fixed, token-sized
JSON body and does no JWT work. Whatever the token server costs above this
is ours (parsing, signing, logging); what this costs is the standard library's.

    python3 bench/floor.py PORT
"""

import http.server
import sys

# The server's answer to the benchmark request, byte for byte in size: the same
# header and claims, with a placeholder signature. The floor never signs anything.
TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJ2aWRlbyI6eyJyb29tSm9pbiI6dHJ1ZSwicm9vbSI6IlRlc3QgUm9vbSIsImNhblB1Ymxpc2giOnRydWUsImNh"
    "blN1YnNjcmliZSI6dHJ1ZSwiY2FuUHVibGlzaERhdGEiOnRydWV9LCJzdWIiOiJQYXJ0aWNpcGFudDQyIiwiaXNz"
    "IjoiYmVuY2gta2V5IiwibmJmIjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDA5MDB9."
    "QmVuY2hGbG9vckZpeGVkU2lnbmF0dXJlTm90UmVhbEE"
)
BODY = b'{"token":"' + TOKEN.encode("ascii") + b'"}'


def _response(close: bool) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("ascii") + BODY


# Built once: the whole answer, headers and body, goes out in one send.
KEEP_ALIVE_RESPONSE = _response(close=False)
CLOSE_RESPONSE = _response(close=True)


class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive, as the token server does.
    protocol_version = "HTTP/1.1"
    # setup() sets TCP_NODELAY; the default leaves Nagle on.
    disable_nagle_algorithm = True
    # wbufsize = 0 (the default): wfile.write is one sendall, no buffering.

    def do_POST(self) -> None:
        # Read the body so the next keep-alive request starts at its first byte.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        # parse_request() set close_connection for "Connection: close"; say so,
        # or the client would write its next request into a closed socket.
        self.wfile.write(CLOSE_RESPONSE if self.close_connection else KEEP_ALIVE_RESPONSE)

    def log_message(self, format: str, *args) -> None:
        pass  # no access log: the floor measures HTTP alone


class Server(http.server.ThreadingHTTPServer):
    # The default listen backlog is 5: 64 clients connecting at once would
    # see dropped SYNs and 1 s retries. The token server uses 1024.
    request_queue_size = 1024


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python3 bench/floor.py PORT", file=sys.stderr)
        return 2
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
