// DoAi backend stand-in used by the rollback sandbox and tests.
// Reports its package.json version on /api/health; BROKEN=1 in the committed
// release.json turns health into a 500, as a bad deployment would.
'use strict';
const express = require('express');
const pkg = require('./package.json');
const release = require('./release.json');

const app = express();
const port = Number(process.env.PORT || 3001);

app.get('/api/health', (req, res) => {
  if (release.broken) {
    res.status(500).json({ status: 'error', version: pkg.version, error: 'release is broken' });
    return;
  }
  res.json({ status: 'ok', version: pkg.version, pid: process.pid });
});

app.get('/', (req, res) => res.type('text').send(`doai-backend ${pkg.version}\n`));

// The Engine.IO handshake the desktop agents' Socket.IO client starts with (long polling,
// protocol v4): an open packet with a new session id. Only the handshake: enough for
// `doai-rollback diagnose agent-connection` to tell a Socket.IO server answers here.
app.get('/socket.io/', (req, res) => {
  if (req.query.EIO !== '4' || req.query.transport !== 'polling') {
    res.status(400).json({ code: 0, message: 'Transport unknown' });
    return;
  }
  const sid = require('crypto').randomBytes(15).toString('base64url');
  res.type('text/plain').send('0' + JSON.stringify({ sid, upgrades: [], pingInterval: 25000, pingTimeout: 20000, maxPayload: 1000000 }));
});

const server = app.listen(port, '127.0.0.1', () => {
  if (process.send) process.send('ready');
});

process.on('SIGINT', () => server.close(() => process.exit(0)));
