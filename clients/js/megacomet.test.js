// Unit tests of megacomet.js, run with `node --test`: no browser, no server.
// Fakes of WebSocket, fetch and sessionStorage go on globalThis for each test;
// time is mock.timers' (setTimeout), jitter is a mocked Math.random.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Megacomet } from "./megacomet.js";

const BASE = "http://mc.test/", KEY = "megacomet:http://mc.test/a1";
const flush = async () => { for (let i = 0; i < 4; i++) await new Promise(r => setImmediate(r)); };
const q = u => Object.fromEntries(new URL(u).searchParams);
const path = u => new URL(u).pathname;
const enc = new TextEncoder();

// env installs the fakes for test t and returns the handles the test drives.
function env(t, { random = 0, store = new Map() } = {}) {
  const names = ["WebSocket", "fetch", "sessionStorage"];
  const saved = names.map(k => Object.getOwnPropertyDescriptor(globalThis, k));
  t.after(() => names.forEach((k, i) => saved[i] ? Object.defineProperty(globalThis, k, saved[i]) : delete globalThis[k]));
  const e = { sockets: [], fetches: [], store, tokens: 0, ev: { message: [], gap: [], error: [], state: [] } };
  globalThis.WebSocket = class {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; e.sockets.push(this); }
    send(f) { this.sent.push(f); }
    close() { this.closed = true; this.readyState = 3; }
    open() { this.readyState = 1; this.onopen(); }
    recv(m) { this.onmessage({ data: JSON.stringify(m) }); }
    drop(code, reason = "") { this.readyState = 3; this.onclose({ code, reason }); }
  };
  globalThis.fetch = (url, init) => new Promise((resolve, reject) => {
    const f = { url: String(url), init };
    f.reply = (status, headers = {}, body = null) => resolve(new Response(body, { status, headers }));
    f.fail = () => reject(new TypeError("fetch failed"));
    f.stream = () => resolve(new Response(new ReadableStream({
      start: c => { f.ctl = c; }, cancel: () => { f.cancelled = true; },
    }), { status: 200, headers: { "Content-Type": "text/event-stream" } }));
    f.push = s => f.ctl.enqueue(enc.encode(s));
    f.end = () => f.ctl.close();
    init.signal.addEventListener("abort", () => {
      f.aborted = true;
      const err = new DOMException("aborted", "AbortError");
      reject(err);
      try { f.ctl?.error(err); } catch {}
    });
    e.fetches.push(f);
  });
  globalThis.sessionStorage = { getItem: k => store.has(k) ? store.get(k) : null, setItem: (k, v) => store.set(k, String(v)) };
  t.mock.timers.enable({ apis: ["setTimeout"] });
  t.mock.method(Math, "random", () => random);
  e.tick = ms => t.mock.timers.tick(ms);
  e.token = async () => "t" + ++e.tokens;
  e.attempts = () => e.sockets.length + e.fetches.length;
  e.ws = () => e.sockets.at(-1);
  e.f = () => e.fetches.at(-1);
  e.ids = () => e.ev.message.map(m => m.id);
  e.client = async (o = {}) => {
    const c = new Megacomet(BASE, { id: "a1", ...o });
    for (const k in e.ev) c.on(k, x => e.ev[k].push(x));
    t.after(() => c.close());
    await flush();
    return c;
  };
  // next asserts that the next attempt comes after exactly ms: not at ms-1.
  e.next = async ms => {
    await flush(); // let the link end first: its timer starts then
    const n = e.attempts();
    if (ms > 0) {
      e.tick(ms - 1); await flush();
      assert.equal(e.attempts(), n, `no attempt before ${ms} ms`);
    }
    e.tick(ms > 0 ? 1 : 0); await flush();
    assert.equal(e.attempts(), n + 1, `an attempt at ${ms} ms`);
  };
  // never asserts that no attempt comes, however long one waits.
  e.never = async () => {
    const n = e.attempts();
    for (let i = 0; i < 5; i++) { e.tick(600000); await flush(); }
    assert.equal(e.attempts(), n, "no further attempt");
  };
  return e;
}

// toSSE makes two WebSocket attempts fail to open: the client falls back to SSE.
async function toSSE(e) {
  e.ws().drop(1006);
  await e.next(250); // one failure: WebSocket again, after the backoff
  assert.equal(e.sockets.length, 2);
  e.ws().drop(1006);
  await e.next(0);
  assert.equal(path(e.f().url), "/sse/a1");
}

describe("1. ordering and dedup, gaps, the cursor frame", () => {
  test("ids 5,6,6,4,7 give 5,6,7; a gap fires once and moves the cursor", async t => {
    const e = env(t);
    await e.client();
    const s = e.ws();
    assert.equal(s.url, "ws://mc.test/ws/a1?cursor=1");
    s.open();
    for (const id of [5, 6, 6, 4, 7]) s.recv({ id, data: id });
    assert.deepEqual(e.ids(), [5, 6, 7]);
    s.recv({ gap: { after: 3, before: 10 } });
    assert.deepEqual(e.ev.gap, [{ after: 3, before: 10 }]);
    s.recv({ gap: { after: 3, before: 10 } });
    s.recv({ id: 9 });
    assert.equal(e.ev.gap.length, 1);
    assert.deepEqual(e.ids(), [5, 6, 7]);
    s.drop(1012);
    await e.next(0);
    assert.deepEqual(q(e.ws().url), { since: "9", cursor: "1" });
  });

  test("the cursor frame sets a cursor when none, never moves it back", async t => {
    const e = env(t);
    await e.client();
    const s = e.ws();
    assert.equal(q(s.url).since, undefined);
    s.open();
    s.recv({ cursor: 100 });
    s.recv({ cursor: 50 });
    assert.equal(e.ev.message.length, 0);
    s.drop(1012);
    await e.next(0);
    assert.equal(q(e.ws().url).since, "100");
    e.ws().open();
    e.ws().recv({ id: 101 });
    e.ws().recv({ cursor: 100 });
    e.ws().drop(1012);
    await e.next(0);
    assert.equal(q(e.ws().url).since, "101");
  });
});

describe("2. WebSocket reconnect: 1012, 4001 and backoff", () => {
  test("1012 and 4001 reconnect at once; 1006 backs off", async t => {
    const e = env(t);
    await e.client({ since: 3, token: e.token });
    assert.deepEqual(q(e.ws().url), { since: "3", token: "t1", cursor: "1" });
    e.ws().open();
    e.ws().recv({ id: 5 });
    e.ws().drop(1012);
    await e.next(0);
    assert.deepEqual(q(e.ws().url), { since: "5", token: "t1", cursor: "1" });
    assert.equal(e.tokens, 1);
    e.ws().open();
    e.ws().drop(4001);
    await e.next(0);
    assert.equal(e.tokens, 2);
    assert.deepEqual(q(e.ws().url), { since: "5", token: "t2", cursor: "1" });
    e.ws().open();
    e.ws().drop(1006);
    await e.next(250); // minDelay/2 with Math.random() = 0
    e.ws().drop(1006);
    await e.next(500); // doubled
  });

  test("custom minDelay/maxDelay: doubling per failure, capped, reset by an open", async t => {
    const e = env(t);
    await e.client({ transports: ["ws"], minDelay: 100, maxDelay: 1000, token: "s3cr3t" });
    assert.equal(q(e.ws().url).token, "s3cr3t");
    e.ws().open();
    for (const d of [50, 100, 200, 400, 500, 500]) {
      e.ws().drop(1006);
      await e.next(d);
    }
    e.ws().open();
    e.ws().drop(1006);
    await e.next(50);
  });

  test("the default maxDelay: 30000, so at most 15000 with Math.random() = 0", async t => {
    const e = env(t);
    await e.client({ transports: ["ws"] });
    for (const d of [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]) {
      e.ws().drop(1006);
      await e.next(d);
    }
  });

  test("the jitter: half the delay plus Math.random() times the other half", async t => {
    const e = env(t, { random: 0.5 });
    await e.client();
    e.ws().open();
    e.ws().drop(1006);
    await e.next(375);
  });
});

describe("3. fallback to SSE, probing WebSocket again, state events", () => {
  test("two failures to open fall back to SSE; the probe goes back or stays", async t => {
    const e = env(t);
    const c = await e.client({ retryBetter: 1000 });
    await toSSE(e);
    let f = e.f();
    f.stream();
    await flush();
    assert.equal(c.transport, "sse");
    await e.next(1000); // the probe
    assert.equal(f.aborted, true);
    assert.equal(path(e.ws().url), "/ws/a1");
    e.ws().drop(1006); // it fails to open: straight back to SSE
    await e.next(0);
    f = e.f();
    assert.equal(path(f.url), "/sse/a1");
    f.stream();
    await flush();
    await e.next(1000);
    e.ws().open();
    assert.equal(c.transport, "ws");
    await e.never();
    c.close();
    const st = e.ev.state.map(x => x.state + ":" + x.transport);
    assert.deepEqual(st, ["connecting:ws", "connecting:sse", "open:sse", "reconnecting:ws", "reconnecting:sse",
      "open:sse", "reconnecting:ws", "open:ws", "closed:ws"]);
    assert.equal(c.state, "closed");
  });

  test("the default retryBetter is a minute", async t => {
    const e = env(t);
    await e.client();
    await toSSE(e);
    e.f().stream();
    await flush();
    await e.next(60000);
    assert.equal(path(e.ws().url), "/ws/a1");
  });
});

describe("4. SSE: parsing, hints, expired token, HTTP errors", () => {
  test("chunks split anywhere; opening id; heartbeat; gap; retry hint; expired", async t => {
    const e = env(t);
    await e.client({ transports: ["sse"], token: e.token });
    let f = e.f();
    assert.equal(f.url, "http://mc.test/sse/a1?token=t1");
    f.stream();
    await flush();
    for (const s of ["retry: 20", "00\nid: 4", "2\n", "\n"]) { f.push(s); await flush(); }
    assert.equal(e.ev.message.length, 0);
    f.end(); // no hint: the server's retry: 2000
    await e.next(2000);
    f = e.f();
    assert.deepEqual(q(f.url), { since: "42", token: "t1" });
    f.stream();
    await flush();
    f.push('id: 43\ndata: {"id":4');
    f.push('3,"data":1}\n');
    await flush();
    assert.equal(e.ev.message.length, 0); // not before the blank line
    f.push("\n:\n"); // the event's end, half a heartbeat
    await flush();
    assert.deepEqual(e.ev.message, [{ id: 43, data: 1 }]);
    f.push("\n");
    await flush();
    assert.equal(e.ev.message.length, 1);
    f.push("retry: 1000\n: reconnect\n\n");
    f.end();
    await e.next(1000);
    f = e.f();
    assert.deepEqual(q(f.url), { since: "43", token: "t1" });
    f.stream();
    await flush();
    f.push("event: gap\nid: 49\ndata: {\"gap\":{\"after\":43,\"before\":50}}\n\n");
    await flush();
    assert.deepEqual(e.ev.gap, [{ after: 43, before: 50 }]);
    f.push("event: expired\ndata: {\"error\":\"token expired\"}\n\n");
    await e.next(0);
    assert.equal(f.cancelled, true);
    assert.equal(e.tokens, 2);
    assert.deepEqual(q(e.f().url), { since: "49", token: "t2" });
    assert.equal(e.ev.message.length, 1);
    assert.equal(e.ev.error.length, 0);
  });

  test("401: a new token; 503 Retry-After: its delay, not a failure; 404 twice: fallback", async t => {
    const e = env(t);
    await e.client({ transports: ["sse", "lp"], token: e.token });
    e.f().reply(401);
    await e.next(250);
    assert.equal(q(e.f().url).token, "t2");
    for (let i = 0; i < 3; i++) {
      e.f().reply(503, { "Retry-After": "2" }, "busy");
      await e.next(2000);
      assert.equal(path(e.f().url), "/sse/a1");
    }
    e.f().reply(404, {}, "not found");
    await e.next(500); // the backoff's second step (the 401 took the first)
    assert.equal(path(e.f().url), "/sse/a1");
    e.f().reply(404, {}, "not found");
    await e.next(0);
    assert.equal(path(e.f().url), "/lp/a1");
  });

  test("403 is final: the error and the closed state carry its reason, and nothing comes back", async t => {
    const e = env(t);
    const c = await e.client({ transports: ["sse", "lp"] });
    e.f().reply(403, { "Content-Type": "application/json" }, '{"error":"log in first"}\n');
    await flush();
    assert.deepEqual(e.ev.error, [{ error: "log in first" }]);
    assert.deepEqual(e.ev.state.at(-1), { state: "closed", transport: "sse", reason: "log in first" });
    assert.equal(c.state, "closed");
    await e.never();
  });

  test("a Retry-After that is not seconds (an HTTP date) is no hint: back off", async t => {
    const e = env(t);
    await e.client({ transports: ["sse"] });
    e.f().reply(503, { "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT" }, "busy");
    await e.next(250);
  });
});

describe("5. long-poll: HEAD for the cursor, polls, 401, network errors", () => {
  test("HEAD for the cursor, polls, 401, network errors", async t => {
    const e = env(t);
    await e.client({ transports: ["lp"], token: e.token });
    let f = e.f();
    assert.equal(f.init.method, "HEAD");
    assert.deepEqual(q(f.url), { token: "t1" });
    f.reply(200, { "X-Megacomet-Cursor": "100" });
    await flush();
    f = e.f();
    assert.equal(f.init.method, "GET");
    assert.deepEqual(q(f.url), { since: "100", token: "t1" });
    f.reply(200, { "X-Megacomet-Cursor": "105" }, JSON.stringify([{ id: 101, data: "a" }, { id: 102, channel: "x", data: "b" }]));
    await flush();
    assert.deepEqual(e.ev.message, [{ id: 101, data: "a" }, { id: 102, channel: "x", data: "b" }]);
    f = e.f();
    assert.deepEqual(q(f.url), { since: "105", token: "t1" });
    f.reply(401, {}, "token expired");
    await e.next(0);
    assert.equal(e.tokens, 2);
    assert.deepEqual(q(e.f().url), { since: "105", token: "t2" });
    assert.equal(e.f().init.method, "GET");
    e.f().fail();
    await e.next(250);
    e.f().fail();
    await e.next(500);
    assert.deepEqual(q(e.f().url), { since: "105", token: "t2" });
  });
});

describe("6. subscribe and unsubscribe", () => {
  test("on WebSocket: exactly one frame per change", async t => {
    const e = env(t);
    const c = await e.client({ channels: ["a"] });
    const s = e.ws();
    assert.deepEqual(q(s.url), { channels: "a", cursor: "1" });
    s.open();
    c.subscribe("b");
    c.subscribe("a");
    c.subscribe("b");
    c.unsubscribe("a");
    c.unsubscribe("zz");
    assert.deepEqual(s.sent, ['{"subscribe":"b"}', '{"unsubscribe":"a"}']);
    assert.equal(e.attempts(), 1);
    s.drop(1012);
    await e.next(0);
    assert.equal(q(e.ws().url).channels, "b");
  });

  for (const tr of ["sse", "lp"]) test(`on ${tr}: a restart with the new channels and the same cursor`, async t => {
    const e = env(t);
    const c = await e.client({ transports: [tr], since: 7, channels: ["a"] });
    const f = e.f();
    if (tr == "sse") f.stream();
    await flush();
    c.subscribe("b");
    await flush();
    assert.equal(f.aborted, true);
    assert.equal(e.fetches.length, 2);
    assert.equal(path(e.f().url), `/${tr}/a1`);
    assert.deepEqual(q(e.f().url), { since: "7", channels: "a,b" });
    c.subscribe("a");
    await flush();
    assert.equal(e.fetches.length, 2);
    c.unsubscribe("a");
    await flush();
    assert.equal(e.fetches.length, 3);
    assert.deepEqual(q(e.f().url), { since: "7", channels: "b" });
  });
});

describe("7. publish", () => {
  test("one on the wire, acks, errors, a lost connection", async t => {
    const e = env(t);
    const c = await e.client();
    const s = e.ws();
    const out = [];
    const track = (p, name) => p.then(v => out.push(name + "=" + v), err => out.push(name + "!" + err.message));
    track(c.publish("room", { x: 1 }), "p1"); // queued until the socket opens
    track(c.publish("room", 2), "p2");
    assert.deepEqual(s.sent, []);
    s.open();
    assert.deepEqual(s.sent, ['{"publish":"room","data":{"x":1}}']); // one on the wire
    s.recv({ ack: 11 });
    await flush();
    assert.deepEqual(out, ["p1=11"]);
    assert.equal(s.sent.length, 2);
    assert.equal(s.sent[1], '{"publish":"room","data":2}');
    s.recv({ error: "publish not allowed", channel: "room" });
    await flush();
    assert.deepEqual(out, ["p1=11", "p2!megacomet: publish not allowed"]);
    assert.equal(e.ev.error.length, 0);
    track(c.publish("room", 3), "p3");
    track(c.publish("room", 4), "p4");
    s.recv({ error: "token does not allow channel x" });
    await flush();
    assert.deepEqual(e.ev.error, [{ error: "token does not allow channel x" }]);
    assert.equal(out.length, 2);
    s.drop(1006); // p3 in flight is lost; p4 waits for the next socket
    await flush();
    assert.deepEqual(out.slice(2), ["p3!megacomet: connection lost before the publish was answered"]);
    assert.equal(s.sent.length, 3);
    await e.next(250);
    e.ws().open();
    assert.deepEqual(e.ws().sent, ['{"publish":"room","data":4}']);
    e.ws().recv({ ack: 12 });
    await flush();
    assert.deepEqual(out.slice(3), ["p4=12"]);
  });

  test("publish on SSE rejects at once", async t => {
    const e = env(t);
    const c = await e.client({ transports: ["sse"] });
    await assert.rejects(c.publish("room", 1), /publish needs the WebSocket transport/);
  });
});

describe("8. persist: the cursor survives in sessionStorage", () => {
  test("the cursor is saved and restored", async t => {
    const store = new Map();
    const e = env(t, { store });
    const c = await e.client({ persist: true });
    e.ws().open();
    e.ws().recv({ id: 5 });
    assert.equal(store.get(KEY), "5");
    e.ws().recv({ id: 9 });
    assert.equal(store.get(KEY), "9");
    c.close();
    await e.client({ persist: true });
    assert.equal(q(e.ws().url).since, "9");
    e.ws().open();
    e.ws().recv({ id: 9 });
    e.ws().recv({ id: 10 });
    assert.deepEqual(e.ids(), [5, 9, 10]); // 9 came before the reload
    assert.equal(store.get(KEY), "10");
    await e.client({ persist: true, id: "b2" });
    assert.equal(q(e.ws().url).since, undefined);
    await e.client({ persist: true, since: 3 });
    assert.equal(q(e.ws().url).since, "3");
    await e.client();
    e.ws().open();
    e.ws().recv({ id: 20 });
    assert.equal(store.get(KEY), "10"); // without persist nothing is saved
  });
});

describe("9. close(): no reconnect ever, the link is closed", () => {
  test("a closed WebSocket never comes back", async t => {
    const e = env(t);
    const c = await e.client();
    const s = e.ws();
    s.open();
    const p = c.publish("room", 1); // in flight: close() rejects it
    c.close();
    await assert.rejects(p, /^Error: megacomet: closed$/);
    assert.equal(s.closed, true);
    assert.deepEqual(e.ev.state.at(-1), { state: "closed", transport: "ws" });
    s.drop(1006); // the close event after close()
    await e.never();
    await assert.rejects(c.publish("room", 1), /megacomet/);
  });

  test("closed while a reconnect waits", async t => {
    const e = env(t);
    const c = await e.client();
    e.ws().drop(1006);
    c.close();
    await e.never();
  });

  test("an open SSE stream is aborted", async t => {
    const e = env(t);
    const c = await e.client({ transports: ["sse"] });
    e.f().stream();
    await flush();
    c.close();
    await flush();
    assert.equal(e.f().aborted, true);
    await e.never();
  });
});

describe("10. disconnected by the server (POST /disconnect)", () => {
  test("SSE: back at once when it may reconnect; never, with the reason, when it may not", async t => {
    const e = env(t);
    const c = await e.client({ transports: ["sse"] });
    let f = e.f();
    f.stream();
    await flush();
    f.push("id: 7\n\nevent: disconnect\ndata: {\"reason\":\"moved\",\"reconnect\":true}\n\n");
    await e.next(0);
    assert.equal(f.cancelled, true);
    f = e.f();
    assert.deepEqual(q(f.url), { since: "7" });
    f.stream();
    await flush();
    f.push("event: disconnect\ndata: {\"reason\":\"banned\",\"reconnect\":false}\n\n");
    await flush();
    assert.deepEqual(e.ev.error, [{ error: "banned" }]);
    assert.deepEqual(e.ev.state.at(-1), { state: "closed", transport: "sse", reason: "banned" });
    assert.equal(c.state, "closed");
    await e.never();
  });

  test("WebSocket: 4003 is final, with its reason; 4002 reconnects", async t => {
    const e = env(t);
    const c = await e.client();
    e.ws().open();
    e.ws().drop(4002, "moved");
    await e.next(250);
    e.ws().open();
    e.ws().drop(4003, "banned");
    await flush();
    assert.deepEqual(e.ev.state.at(-1), { state: "closed", transport: "ws", reason: "banned" });
    assert.equal(c.state, "closed");
    await e.never();
  });
});

describe("11. channels changed by the server (POST /subscribe)", () => {
  test("the new set is kept for the reconnects", async t => {
    const e = env(t);
    await e.client({ channels: ["a"] });
    e.ws().open();
    e.ws().recv({ channels: ["a", "b"] });
    e.ws().drop(1012);
    await e.next(0);
    assert.equal(q(e.ws().url).channels, "a,b");
    assert.equal(e.ev.message.length, 0);
  });
});
