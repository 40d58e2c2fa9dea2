// A WebSocket client built on the npm ws package, driven by test/ws_test.go:
// it connects to the URL in argv[2], prints one JSON line per event on
// stdout, and sends each line it reads on stdin as a text message ("CLOSE"
// closes instead). It answers pings itself (ws answers them automatically),
// as every real client does.
"use strict";
const WebSocket = require("ws");
const readline = require("readline");

const out = (ev) => process.stdout.write(JSON.stringify(ev) + "\n");
const ws = new WebSocket(process.argv[2], process.argv.slice(3));

ws.on("upgrade", (res) =>
  out({
    ev: "upgrade",
    protocol: res.headers["sec-websocket-protocol"] || "",
    cursor: res.headers["x-megacomet-cursor"] || "",
  }),
);
ws.on("open", () => out({ ev: "open" }));
ws.on("ping", (data) => out({ ev: "ping", size: data.length }));
ws.on("message", (data, isBinary) => out({ ev: "message", binary: isBinary, data: data.toString() }));
ws.on("close", (code, reason) => {
  out({ ev: "close", code: code, reason: reason.toString() });
  process.exit(0);
});
ws.on("error", (err) => out({ ev: "error", error: String(err) }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "CLOSE") {
    ws.close(1000, "bye");
  } else {
    ws.send(line);
  }
});
