"""Bench-only: the token endpoint as a FastAPI user would write it, with livekit-api.

POST /token takes the OpenVidu tutorials' body {"roomName", "participantName"}
and answers 200 {"token": jwt}; POST /webhook verifies a LiveKit webhook with
the SDK's WebhookReceiver. Run by `bench/run.py --frameworks` as

    bench/.venv-frameworks/bin/python -m uvicorn fastapi_app:app --app-dir bench/frameworks \
        --host 127.0.0.1 --port PORT --workers 1 [--loop uvloop --http httptools] [--no-access-log]

with LIVEKIT_API_KEY and LIVEKIT_API_SECRET in the environment: with uvicorn's
access log on, as by default (one line per request on stdout), and without. Not
part of the server.
"""

import os

from fastapi import FastAPI, HTTPException, Request
from livekit import api
from pydantic import BaseModel

API_KEY = os.environ["LIVEKIT_API_KEY"]
API_SECRET = os.environ["LIVEKIT_API_SECRET"]

app = FastAPI()
receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))


class TokenRequest(BaseModel):
    roomName: str
    participantName: str


# async def: signing is CPU alone (microseconds), so it runs on the event loop,
# not in the thread pool a plain def would be sent to.
@app.post("/token")
async def token(request: TokenRequest) -> dict:
    if not request.roomName or not request.participantName:
        raise HTTPException(400, "roomName and participantName are required")
    jwt = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(request.participantName)
        .with_grants(api.VideoGrants(room_join=True, room=request.roomName))
        .to_jwt()
    )
    return {"token": jwt}


@app.post("/webhook")
async def webhook(request: Request) -> dict:
    body = await request.body()
    try:
        receiver.receive(body.decode("utf-8"), request.headers.get("Authorization", ""))
    except Exception:
        raise HTTPException(401, "invalid webhook") from None
    return {}
