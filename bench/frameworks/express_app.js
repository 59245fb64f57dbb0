// Bench-only: the token endpoint as an Express user would write it, with the
// official Node SDK (livekit-server-sdk), after OpenVidu's Node tutorial.
//
// POST /token takes {"roomName", "participantName"} and answers 200 {"token": jwt};
// POST /webhook verifies a LiveKit webhook with the SDK's WebhookReceiver.
// Run by `bench/run.py --frameworks` as `node bench/frameworks/express_app.js PORT [--access-log]`,
// with LIVEKIT_API_KEY and LIVEKIT_API_SECRET in the environment. --access-log adds
// morgan("combined"), one line per request on stdout. Not part of the server.
"use strict";

const express = require("express");
const { AccessToken, WebhookReceiver } = require("livekit-server-sdk");
const morgan = require("morgan");

const API_KEY = process.env.LIVEKIT_API_KEY;
const API_SECRET = process.env.LIVEKIT_API_SECRET;
const port = Number(process.argv[2]);
const options = process.argv.slice(3);
const accessLog = options.length === 1 && options[0] === "--access-log";
if (!API_KEY || !API_SECRET || !port || (options.length && !accessLog)) {
  console.error("usage: LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... node express_app.js PORT [--access-log]");
  process.exit(2);
}

const app = express();
if (accessLog) {
  // The Apache combined format, the usual choice in production, to stdout.
  app.use(morgan("combined"));
}
const receiver = new WebhookReceiver(API_KEY, API_SECRET);

app.post("/token", express.json(), async (req, res) => {
  const roomName = req.body && req.body.roomName;
  const participantName = req.body && req.body.participantName;
  if (!roomName || !participantName) {
    res.status(400).json({ errorMessage: "roomName and participantName are required" });
    return;
  }
  const at = new AccessToken(API_KEY, API_SECRET, { identity: participantName });
  at.addGrant({ roomJoin: true, room: roomName });
  res.json({ token: await at.toJwt() });
});

app.post("/webhook", express.raw({ type: "application/webhook+json" }), async (req, res) => {
  try {
    await receiver.receive(req.body.toString("utf8"), req.get("Authorization"));
  } catch (err) {
    res.status(401).json({ errorMessage: "invalid webhook" });
    return;
  }
  res.json({});
});

const server = app.listen(port, "127.0.0.1");
// Stop on SIGTERM as the Python targets do: close the listener, then exit.
process.on("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
  process.exit(0);
});
