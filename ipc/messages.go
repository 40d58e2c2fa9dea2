package ipc

// Hello is the first frame a worker sends, once its listener is bound.
type Hello struct {
	PID        uint64
	Slot       uint64
	Generation uint64
	MaxConns   uint64 // connections it accepts before refusing
	FDLimit    uint64 // its RLIMIT_NOFILE soft limit
	Listen     string // the address it serves
}

// AppendHello appends a Hello frame.
func AppendHello(dst []byte, h *Hello) []byte {
	dst, start := Begin(dst, TypeHello)
	for _, v := range [...]uint64{h.PID, h.Slot, h.Generation, h.MaxConns, h.FDLimit} {
		dst = AppendUvarint(dst, v)
	}
	return End(AppendString(dst, h.Listen), start)
}

// DecodeHello decodes a Hello payload.
func DecodeHello(p []byte) (Hello, error) {
	r := NewReader(p)
	h := Hello{PID: r.Uvarint(), Slot: r.Uvarint(), Generation: r.Uvarint(), MaxConns: r.Uvarint(), FDLimit: r.Uvarint()}
	h.Listen = string(r.Bytes())
	return h, r.Err()
}

// Counts is a worker's counters. Totals only grow; the manager turns them
// into rates. Fields are varints in this order, and a decoder takes what is
// there, so an older worker talking to a newer manager (during an upgrade)
// still decodes.
type Counts struct {
	Conns         uint64 // open client connections now
	Accepted      uint64 // total accepted
	Refused       uint64 // total refused because the worker was full
	MessagesOut   uint64 // total messages written to clients
	SlowConsumers uint64 // total clients dropped for exceeding comet.max_pending
	Heartbeats    uint64 // total heartbeats written
	Requests      uint64 // total HTTP requests parsed
	BadRequests   uint64 // total requests answered with a 4xx
	HeapBytes     uint64 // Go heap held by live objects
	GoBytes       uint64 // all memory the Go runtime holds from the OS
	SilentClosed  uint64 // total WebSocket clients closed for not answering pings
	LoopLagMs     uint64 // the loop's worst lateness since the previous Counts
	// TicksOverBudget counts ticks that left due timers (heartbeats) for
	// the next tick, to serve the loop's other events first.
	TicksOverBudget uint64
	// FanOutPauses counts broadcasts that paused to let other events in.
	FanOutPauses     uint64
	AuthRefused      uint64 // total requests and subscribes refused for their token
	TokensExpired    uint64 // total connections ended because their token expired
	ReplaysPaced     uint64 // replays and long-poll answers cut at comet.max_pending: the rest after the client comes back from its cursor
	GapsAnnounced    uint64 // gap announcements sent: a replay left messages out
	HeadersTooLarge  uint64 // request heads over server.max_header_bytes, answered 431
	HeaderTimeouts   uint64 // requests whose head did not arrive within server.header_timeout, answered 408
	PerIPRefused     uint64 // connections refused with 429 past server.max_conns_per_ip
	KeepaliveClosed  uint64 // connections closed because TCP keepalive found the peer gone
	WSControlLimited uint64 // WebSocket clients closed (1008) for sending control frames too fast
	ProxyRejected    uint64 // connections refused for their PROXY protocol header: malformed, or none expected
	// WSFragmentClosed counts WebSocket clients closed (1008) for a
	// fragmented message left unfinished past comet.ws_fragment_timeout,
	// or that would hold the worker's unfinished messages past its bound.
	WSFragmentClosed uint64
	// HookFailed counts connections answered 503 because the
	// application's hook failed, timed out or answered garbage.
	HookFailed uint64
	// HookWaiting is how many connections and WebSocket commands wait for
	// the application's answer now.
	HookWaiting uint64
	// Disconnected counts connections ended by POST /disconnect.
	Disconnected uint64
	// ChannelsFull counts connections POST /subscribe could not add a
	// channel to: they had 16.
	ChannelsFull uint64
	// Revoked counts connections ended because POST /revoke revoked
	// their id's tokens.
	Revoked uint64
	// Hooks: per hook (connect, subscribe, publish), after the fields
	// above.
	Hooks [3]HookCounts
}

// HookCounts are one hook's calls from a worker (hooks.Stats).
type HookCounts struct {
	Calls, Allowed, Denied, Failed, CacheHits uint64
	// Latency counts answers by how long they took: hooks.LatencyBounds'
	// buckets, then longer.
	Latency [13]uint64
}

func (h *HookCounts) fields() [18]*uint64 {
	f := [18]*uint64{&h.Calls, &h.Allowed, &h.Denied, &h.Failed, &h.CacheHits}
	for i := range h.Latency {
		f[5+i] = &h.Latency[i]
	}
	return f
}

func (c *Counts) fields() [30]*uint64 {
	return [...]*uint64{&c.Conns, &c.Accepted, &c.Refused, &c.MessagesOut, &c.SlowConsumers, &c.Heartbeats, &c.Requests, &c.BadRequests, &c.HeapBytes, &c.GoBytes,
		&c.SilentClosed, &c.LoopLagMs, &c.TicksOverBudget, &c.FanOutPauses,
		&c.AuthRefused, &c.TokensExpired, &c.ReplaysPaced, &c.GapsAnnounced, &c.HeadersTooLarge, &c.HeaderTimeouts, &c.PerIPRefused, &c.KeepaliveClosed, &c.WSControlLimited, &c.ProxyRejected,
		&c.WSFragmentClosed, &c.HookFailed, &c.HookWaiting, &c.Disconnected, &c.ChannelsFull, &c.Revoked}
}

// AppendCounts appends a Counts frame.
func AppendCounts(dst []byte, c *Counts) []byte {
	dst, start := Begin(dst, TypeCounts)
	for _, f := range c.fields() {
		dst = AppendUvarint(dst, *f)
	}
	for k := range c.Hooks {
		for _, f := range c.Hooks[k].fields() {
			dst = AppendUvarint(dst, *f)
		}
	}
	return End(dst, start)
}

// DecodeCounts decodes a Counts payload; missing trailing fields are zero.
func DecodeCounts(p []byte) (Counts, error) {
	var c Counts
	r := NewReader(p)
	for _, f := range c.fields() {
		if r.Len() == 0 {
			return c, r.Err()
		}
		*f = r.Uvarint()
	}
	for k := range c.Hooks {
		for _, f := range c.Hooks[k].fields() {
			if r.Len() == 0 {
				return c, r.Err()
			}
			*f = r.Uvarint()
		}
	}
	return c, r.Err()
}
