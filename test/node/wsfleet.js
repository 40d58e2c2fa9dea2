// Many WebSocket clients on the npm ws package, for the liveness tests
// (test/ws_liveness_test.go): node wsfleet.js BASE N PONG_DELAY_MS opens
// BASE0 … BASE(N-1) (BASE like ws://127.0.0.1:8000/ws/f), and answers every
// ping PONG_DELAY_MS later, like a client on a slow network. Twice a second
// it prints {"open":…,"closed":…,"pongs":…,"errors":…}; each close the
// server makes is printed as {"close":ID,"code":…,"reason":…}. A line
// "STOP" on stdin (or its end) closes them all with 1000 and exits.
"use strict";
const WebSocket = require("ws");
const readline = require("readline");

const [base, nArg, delayArg] = process.argv.slice(2);
const n = Number(nArg);
const delay = Number(delayArg);
const inFlight = 200; // connects at once
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

let open = 0, closed = 0, pongs = 0, errors = 0, next = 0, connecting = 0, stopping = false;
const sockets = [];

function connect() {
  while (connecting < inFlight && next < n) {
    const id = next++;
    connecting++;
    const ws = new WebSocket(base + id, { autoPong: false });
    sockets.push(ws);
    ws.on("open", () => {
      connecting--;
      open++;
      connect();
    });
    ws.on("ping", (data) => {
      setTimeout(() => {
        if (ws.readyState === WebSocket.OPEN) {
          ws.pong(data);
          pongs++;
        }
      }, delay);
    });
    ws.on("close", (code, reason) => {
      if (!stopping) {
        closed++;
        out({ close: id, code: code, reason: reason.toString() });
      }
    });
    ws.on("error", (err) => {
      if (ws.readyState !== WebSocket.OPEN && ws.readyState !== WebSocket.CLOSING) {
        connecting--;
        connect();
      }
      errors++;
      out({ error: id, message: String(err) });
    });
  }
}

const report = () => out({ open: open, closed: closed, pongs: pongs, errors: errors });
setInterval(report, 500);
connect();

function stop() {
  if (stopping) return;
  stopping = true;
  report();
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, "bye");
  }
  setTimeout(() => process.exit(0), 200);
}
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "STOP") stop();
}).on("close", stop);
