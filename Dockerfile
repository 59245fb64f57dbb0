# LiveKit token server: server.py and livekit_auth/ on the standard library, nothing installed.
#   docker build -t livekit-token-server .
#   docker run --rm -p 6080:6080 -e LIVEKIT_API_KEY=... -e LIVEKIT_API_SECRET=... livekit-token-server
# Configuration is by environment variable only (README.md lists them); no config.ini is read.
# Without both credentials the container exits at once with status 2, naming the missing one.

# The official image, pinned to Python 3.12 by tag. For builds that must not
# change under you, pin the digest too: python:3.12-slim@sha256:<digest>.
FROM python:3.12-slim

# The Python processes started without -E below (the health check, `docker
# exec ... python3`) write no .pyc files and buffer no output. The server
# itself runs with -E, which ignores every PYTHON* variable, so -B on its
# command line does what the first one would.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# Outside a container, a server given no API key and secret runs in development
# mode: signed with LiveKit's public dev key, so anyone who reaches it can forge
# webhooks, and on loopback unless SERVER_HOST says otherwise. Here SERVER_HOST
# must be 0.0.0.0 to be reachable through a published port, so the image never
# lets credentials be missing: both are set, empty, and an empty one stops the
# server (exit 2, "livekit.api_key (LIVEKIT_API_KEY) must not be empty") until
# `docker run -e` gives real ones. To run against `livekit-server --dev`, pass
# its devkey and secret explicitly. (BuildKit's SecretsUsedInArgOrEnv check
# warns about these two names; their values here are empty.)
ENV LIVEKIT_API_KEY="" LIVEKIT_API_SECRET="" SERVER_HOST=0.0.0.0

WORKDIR /app

# The code and nothing else (.dockerignore sends nothing else either). Owned by
# root and read-only to the server's user: the process cannot change its own code.
COPY server.py ./
COPY livekit_auth/ ./livekit_auth/
# Compiled once, here: the server then starts from this bytecode (-m below)
# instead of compiling server.py at every start, which costs about 4 MiB of
# memory and a part of the cold start.
RUN python3 -m compileall -q server.py livekit_auth

# A home for WEBHOOK_EVENT_FILE, writable by the server's user: a new named
# volume mounted here starts with this owner.
RUN install -d -m 0700 -o 10001 -g 10001 /var/lib/livekit-token-server

# Not root. Numeric, so that Kubernetes' runAsNonRoot can check it; no passwd
# entry is needed, since the server never looks its user up.
USER 10001:10001

# SERVER_PORT's default.
EXPOSE 6080

# urllib, as slim has no curl. A proxy from HTTP_PROXY must not carry a request
# to 127.0.0.1, hence ProxyHandler({}). Any answer but 2xx, or none within 2 s,
# raises: exit 1, unhealthy. It follows SERVER_PORT when that is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python3", "-E", "-S", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % os.environ.get('SERVER_PORT', '6080'), timeout=2)"]

# -E: no PYTHON* variable (PYTHONPATH, PYTHONSTARTUP...) can load other code;
# -S: no site-packages, the standard library only; -B: no .pyc writes (the
# code is read-only to this user anyway); -m server: server.py from the
# bytecode compiled above. Exec form: python3 is PID 1 and gets `docker
# stop`'s SIGTERM itself, then finishes the requests in flight and exits 0.
CMD ["python3", "-B", "-E", "-S", "-m", "server"]
