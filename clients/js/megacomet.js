// megacomet.js: megacomet's browser client, a dependency-free ES module. It
// keeps the cursor: each message arrives once, in order, across reconnects.
// API: clients/js/README.md; wire: docs/PROTOCOL.md.
const E = m => new Error("megacomet: " + m), WS = "publish needs the WebSocket transport";

export class Megacomet {
	constructor(url, o = {}) {
		this.u = url.replace(/\/+$/, "");
		this.o = o;
		this.ch = new Set(o.channels || []);
		this.tr = o.transports || ["ws", "sse", "lp"];
		this.key = o.persist && "megacomet:" + this.u + "/" + o.id;
		const c = o.since ?? (this.key && sessionStorage.getItem(this.key));
		this.cursor = c == null ? null : +c;
		this.h = {};
		this.pq = [];
		this.g = this.ti = this.fails = this.n = 0;
		queueMicrotask(() => this._go());
	}

	on(ev, f) { (this.h[ev] ||= []).push(f); return this; }
	off(ev, f) { this.h[ev] = (this.h[ev] || []).filter(x => x != f); return this; }
	get transport() { return this.tr[this.ti]; }
	get state() { return this.st; }

	subscribe(c) { if (!this.ch.has(c)) { this.ch.add(c); this._cmd({ subscribe: c }); } }
	unsubscribe(c) { if (this.ch.delete(c)) this._cmd({ unsubscribe: c }); }

	// publish resolves with the message's id; it needs WebSocket.
	publish(channel, data) {
		if (this.closed || this.transport != "ws")
			return Promise.reject(E(WS));
		return new Promise((res, rej) => { this.pq.push({ channel, data, res, rej }); this._pub(); });
	}

	// close ends the client for good (reason: the server's, if any).
	close(reason) {
		if (this.closed) return;
		this.closed = 1;
		this.reason = reason;
		this._stop();
		this._state("closed");
		while (this.pq.length) this._pdone(E("closed"));
	}

	_emit(ev, x) { for (const f of this.h[ev] || []) f(x); }

	_state(s) {
		const t = this.transport;
		if (s != this.st || t != this.stt) {
			this.st = s; this.stt = t;
			const e = { state: s, transport: t };
			if (this.reason != null) e.reason = this.reason;
			this._emit("state", e);
		}
	}

	_stop() {
		this.g++;
		clearTimeout(this.timer); clearTimeout(this.up);
		this.link?.stop();
		this.link = null;
	}

	_url(t) {
		const p = new URLSearchParams();
		if (this.cursor != null) p.set("since", this.cursor);
		if (this.ch.size) p.set("channels", [...this.ch].join());
		if (this.tok) p.set("token", this.tok);
		if (t == "ws") p.set("cursor", 1);
		const u = new URL(`${this.u}/${t}/${encodeURIComponent(this.o.id)}?${p}`, globalThis.location?.href);
		if (t == "ws") u.protocol = u.protocol.replace("http", "ws");
		return u.href;
	}

	// _go: one attempt on the current transport.
	async _go() {
		this._stop();
		if (this.closed) return;
		const g = this.g, T = this.o.token;
		this._state(this.opened ? "reconnecting" : "connecting");
		try {
			if (this.tok == null && T) this.tok = typeof T == "function" ? await T() : T;
		} catch (e) {
			return g == this.g && this._lost(g, 1, null);
		}
		if (g == this.g) this.link = this["_" + this.transport](g);
	}

	_open(g) {
		if (g != this.g) return;
		this.fails = this.n = 0;
		this.opened = 1;
		this._state("open");
		const b = this.o.retryBetter ?? 60000;
		if (this.ti && b) this.up = setTimeout(() => { this.back = this.ti; this.ti = 0; this._go(); }, b);
		this._pub();
	}

	// _lost: the link ended; up: it had opened; d: ms to wait, -1: the
	// token expired, null: back off.
	_lost(g, up, d) {
		if (g != this.g || this.closed) return;
		this.link = null;
		if (this.pq[0]?.sent) this._pdone(E("connection lost before the publish was answered"));
		if (d === -1) { this.tok = null; d = up ? 0 : null; }
		else if (!up && d == null) {
			if (this.back != null) { this.ti = this.back; d = 0; }
			else if (++this.fails > 1 && this.ti < this.tr.length - 1) { this.ti++; this.fails = 0; d = 0; }
		}
		this.back = null;
		if (this.transport != "ws") while (this.pq.length) this._pdone(E(WS));
		if (d == null) {
			const b = Math.min(this.o.maxDelay ?? 30000, (this.o.minDelay ?? 500) * 2 ** this.n++);
			d = b / 2 + Math.random() * b / 2;
		}
		this._state(this.opened ? "reconnecting" : "connecting");
		this.timer = setTimeout(() => this._go(), d);
	}

	// _end: told not to come back (a 403, a disconnect): final.
	_end(g, why) {
		if (g == this.g && !this.closed) { this._emit("error", { error: why }); this.close(why); }
	}

	// _adv moves the cursor forward to c; it reports whether it did.
	_adv(c) {
		if (!(c > (this.cursor ?? 0))) return false;
		this.cursor = c;
		if (this.key) sessionStorage.setItem(this.key, c);
		return true;
	}

	// _m: one message; one not past the cursor was delivered.
	_m(m) {
		if (m.gap) this._adv(m.gap.before - 1) && this._emit("gap", m.gap);
		else if (m.id) this._adv(m.id) && this._emit("message", m);
		else if ("cursor" in m) this._adv(m.cursor);
		else if (m.channels) this.ch = new Set(m.channels);
		else if ("ack" in m) this.pq[0]?.sent && this._pdone(null, m.ack);
		else if (m.error) m.channel && this.pq[0]?.sent ? this._pdone(E(m.error)) : this._emit("error", m);
	}

	_cmd(c) {
		const s = this.link?.s;
		if (s?.readyState == 1) s.send(JSON.stringify(c));
		else if (this.link) this._go();
	}

	_pub() {
		const p = this.pq[0], s = this.link?.s;
		if (p && !p.sent && s?.readyState == 1) { p.sent = 1; s.send(JSON.stringify({ publish: p.channel, data: p.data })); }
	}

	_pdone(err, id) {
		const p = this.pq.shift();
		err ? p.rej(err) : p.res(id);
		this._pub();
	}

	_ws(g) {
		const s = new WebSocket(this._url("ws"));
		let up = 0;
		s.onopen = () => { up = 1; this._open(g); };
		s.onmessage = e => g == this.g && this._m(JSON.parse(e.data));
		s.onclose = e => e.code == 4003 ? this._end(g, e.reason) : this._lost(g, up, e.code == 1012 ? 0 : e.code == 4001 ? -1 : null);
		return { s, stop: () => s.close() };
	}

	// _get: a 200's response; else throws the hint, or a 403's reason.
	async _get(url, a, method) {
		const r = await fetch(url, { signal: a.signal, cache: "no-store", method });
		if (r.ok) return r;
		if (r.status == 403) throw { refused: (await r.json().catch(() => null))?.error || "forbidden" };
		const ra = r.headers.get("Retry-After"), d = ra ? ra * 1000 : NaN;
		throw { d: r.status == 401 ? -1 : d >= 0 ? d : null };
	}

	// _run: an HTTP link; f reads until it ends, returning the hint.
	_run(g, f) {
		const a = new AbortController();
		let up = 0;
		f(a, () => { up = 1; this._open(g); })
			.catch(e => e.refused == null ? e.d : this._end(g, e.refused))
			.then(d => a.signal.aborted || this._lost(g, up, d ?? null));
		return { stop: () => a.abort() };
	}

	_sse(g) {
		return this._run(g, async (a, open) => {
			const rd = (await this._get(this._url("sse"), a)).body.pipeThrough(new TextDecoderStream()).getReader();
			open();
			let buf = "", ev = {};
			for (;;) {
				const { value, done } = await rd.read();
				if (done) return this.retry;
				const ls = (buf + value).split("\n");
				buf = ls.pop();
				for (const l of ls) {
					const [, f, v] = /^([^:\r]*):? ?([^\r]*)/.exec(l);
					if (l == "" || l == "\r") {
						if (ev.event == "expired") { rd.cancel(); return -1; }
						if (ev.event == "disconnect") { // told to go: back at once, or never
							const d = JSON.parse(ev.data);
							rd.cancel();
							if (d.reconnect) return 0;
							throw { refused: d.reason };
						}
						if (ev.data != null) this._m(JSON.parse(ev.data));
						else this._adv(+ev.id);
						ev = {};
					} else if (f == "data") ev.data = ev.data == null ? v : ev.data + "\n" + v;
					else if (f == "id" || f == "event") ev[f] = v;
					else if (f == "retry") this.retry = +v;
				}
			}
		});
	}

	_lp(g) {
		return this._run(g, async (a, open) => {
			for (let i = 0; ; i++) {
				const head = this.cursor == null; // HEAD: the cursor at once
				const r = await this._get(this._url("lp"), a, head ? "HEAD" : "GET");
				if (!i) open();
				if (!head) for (const m of await r.json()) this._m(m);
				this._adv(+r.headers.get("X-Megacomet-Cursor"));
				if (this.cursor == null) throw {}; // no cursor header: back off
			}
		});
	}
}
