package manager

import (
	"encoding/json"
	"math"
	"net"
	"os"
	"sync"
	"time"

	"github.com/megacomet/megacomet/cluster"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/internal/memtrim"
	"github.com/megacomet/megacomet/internal/procfs"
	"github.com/shirou/gopsutil/v3/load"
	"github.com/shirou/gopsutil/v3/mem"
	"github.com/shirou/gopsutil/v3/process"
)

// Stats is the stats JSON of the contract (stats socket and GET /stats).
// Fields beyond the contract's are additions; the contract's keep their
// names and meaning.
type Stats struct {
	Connections uint64        `json:"connections"`
	Workers     []WorkerStats `json:"workers"`
	Manager     ManagerStats  `json:"manager"`
	Host        HostStats     `json:"host"`

	Listen     string `json:"listen"`   // the client address workers serve
	API        string `json:"api"`      // the publish/admin HTTP address
	Capacity   uint64 `json:"capacity"` // connections all ready workers accept
	Refused    uint64 `json:"refused"`  // connections refused because workers were full
	Generation uint64 `json:"generation"`
	IDs        int    `json:"ids"`      // client ids the workers hold
	Channels   int    `json:"channels"` // channels with a subscriber
	// Cluster is the link to the other nodes: absent when this node is
	// alone.
	Cluster *cluster.Stats `json:"cluster,omitempty"`
	// Hooks: the application's hooks ([hooks]) by name, all workers
	// together; absent when none is set.
	Hooks map[string]*HookStats `json:"hooks,omitempty"`
	// HookWaiting: connections and WebSocket commands waiting for a hook's
	// answer now.
	HookWaiting uint64 `json:"hook_waiting"`
	// Events: what hooks.events told the application; absent when off.
	Events *EventStats `json:"events,omitempty"`
}

// EventStats are hooks.events' counts (hooks.EventStats).
type EventStats struct {
	Queued  uint64 `json:"queued"`  // waiting to be sent now
	Sent    uint64 `json:"sent"`    // acknowledged by the application
	Batches uint64 `json:"batches"` // requests it acknowledged
	Failed  uint64 `json:"failed"`  // requests that failed, each retry counted
	Dropped uint64 `json:"dropped"` // dropped for a full hooks.events_queue
	// DelayMs: from an event happening to its acknowledgement, p50 and
	// p99, as the upper bound of the bucket they fall in (a departure's
	// hooks.events_linger included).
	DelayMs struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"delay_ms"`
	Delay [13]uint64 `json:"-"`
}

// HookStats are one hook's calls (hooks/).
type HookStats struct {
	Calls     uint64 `json:"calls"`      // asked, answers from the cache included
	Allowed   uint64 `json:"allowed"`    // answered allow
	Denied    uint64 `json:"denied"`     // answered allow false: the client got 403
	Failed    uint64 `json:"failed"`     // timed out, unreachable, not 200, garbage: the client got 503
	CacheHits uint64 `json:"cache_hits"` // answered from hooks.cache
	// LatencyMs: the application's answer time, p50 and p99, as the upper
	// bound of the bucket they fall in (hooks.LatencyBounds; 0: no answer yet).
	LatencyMs struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
	Latency [13]uint64 `json:"-"` // the buckets, for /metrics
}

// WorkerStats describes one worker process.
type WorkerStats struct {
	Slot        int     `json:"slot"`
	PID         int     `json:"pid"`
	CPU         int     `json:"cpu"` // the CPU it is pinned to; -1 = not pinned
	Connections uint64  `json:"connections"`
	RSSBytes    uint64  `json:"rss_bytes"`
	CPUPercent  float64 `json:"cpu_percent"`
	Restarts    int     `json:"restarts"`
	MessagesOut uint64  `json:"messages_out"`

	// PSSBytes is the proportional set size: RSS with pages shared between
	// processes (the binary's text) divided among them. Summed over all
	// processes it is what the server really costs in memory.
	PSSBytes      uint64 `json:"pss_bytes"`
	HeapBytes     uint64 `json:"heap_bytes"` // Go heap held by live objects
	GoBytes       uint64 `json:"go_bytes"`   // all the Go runtime holds
	State         string `json:"state"`
	Generation    uint64 `json:"generation"`
	MaxConns      uint64 `json:"max_conns"`
	Accepted      uint64 `json:"accepted"`
	Refused       uint64 `json:"refused"`
	SlowConsumers uint64 `json:"slow_consumers"`
	Heartbeats    uint64 `json:"heartbeats"`
	BadRequests   uint64 `json:"bad_requests"`
	// SilentClosed counts WebSocket clients closed for not answering two
	// pings, silence measured in the time the worker kept up (its own lag
	// is not the client's); LoopLagMs is the loop's worst lateness in the
	// last second.
	SilentClosed uint64 `json:"silent_closed"`
	LoopLagMs    uint64 `json:"loop_lag_ms"`
	// TicksOverBudget counts ticks that left due heartbeats for the next
	// one, to answer new connections and messages first.
	TicksOverBudget uint64 `json:"ticks_over_budget"`
	// FanOutPauses counts broadcasts that paused to let new connections,
	// requests and timers in.
	FanOutPauses uint64 `json:"fan_out_pauses"`
	// AuthRefused counts requests and subscribes refused for their token;
	// TokensExpired, connections ended because their token expired.
	AuthRefused   uint64 `json:"auth_refused"`
	TokensExpired uint64 `json:"tokens_expired"`
	// ReplaysPaced: replays and long-poll answers cut at comet.max_pending: the rest after the client comes back from its cursor
	ReplaysPaced uint64 `json:"replays_paced"`
	// GapsAnnounced: gap announcements sent: a replay left messages out
	GapsAnnounced uint64 `json:"gaps_announced"`
	// HeadersTooLarge: request heads over server.max_header_bytes, answered 431
	HeadersTooLarge uint64 `json:"headers_too_large"`
	// HeaderTimeouts: requests whose head did not arrive within server.header_timeout, answered 408
	HeaderTimeouts uint64 `json:"header_timeouts"`
	// PerIPRefused: connections refused with 429 past server.max_conns_per_ip
	PerIPRefused uint64 `json:"per_ip_refused"`
	// ProxyRejected: connections refused for their PROXY protocol header
	// (malformed, or sent with server.proxy_protocol off)
	ProxyRejected uint64 `json:"proxy_rejected"`
	// KeepaliveClosed: connections closed because TCP keepalive found the peer gone
	KeepaliveClosed uint64 `json:"keepalive_closed"`
	// WSControlLimited: WebSocket clients closed (1008) for sending control frames too fast
	WSControlLimited uint64 `json:"ws_control_limited"`
	// WSFragmentClosed: WebSocket clients closed (1008) for a fragmented
	// message unfinished past comet.ws_fragment_timeout, or over the
	// worker's bound on the bytes of such messages
	WSFragmentClosed uint64 `json:"ws_fragment_closed"`
	// HookFailed: connections answered 503 because the application's hook
	// failed, timed out or answered other than documented (hooks.*)
	HookFailed uint64 `json:"hook_failed"`
	// Disconnected: connections ended by POST /disconnect; ChannelsFull,
	// connections POST /subscribe could not add a channel to (they had 16).
	Disconnected uint64 `json:"disconnected"`
	ChannelsFull uint64 `json:"channels_full"`
	// Revoked: connections ended because POST /revoke revoked their id's
	// tokens.
	Revoked uint64 `json:"revoked"`
}

// ManagerStats describes the manager process.
type ManagerStats struct {
	PID        int     `json:"pid"`
	RSSBytes   uint64  `json:"rss_bytes"`
	PSSBytes   uint64  `json:"pss_bytes"`
	CPUPercent float64 `json:"cpu_percent"`
	Published  uint64  `json:"published"`
	Retained   uint64  `json:"retained"`
	// ReplaysCut counts joins that asked for more than comet.max_replay
	// messages: they got the newest and a gap announcement.
	ReplaysCut uint64 `json:"replays_cut"`
	// Joins counts subscriptions answered with a replay (or deferred): one
	// per connection, and one per WebSocket command that changed what it
	// follows (at most one on its way per connection).
	Joins uint64 `json:"joins"`
	// ReplaysPartial counts joins whose replay stopped at half of
	// comet.max_pending (the client gets the rest from its cursor);
	// JoinsDeferred, joins answered "later" because their worker's IPC
	// queue held more than 16 MiB (its worker asked again).
	ReplaysPartial uint64 `json:"replays_partial"`
	JoinsDeferred  uint64 `json:"joins_deferred"`
	// PresenceAnnounced counts the presence messages published
	// (comet.presence_events); PresenceHeld the times a channel's due
	// announcement waited a window because that window had published its
	// most (a flood over many rooms).
	PresenceAnnounced uint64 `json:"presence_announced"`
	PresenceHeld      uint64 `json:"presence_held"`
	// HistoryBytes is the message bodies history holds; HistoryEvicted the
	// messages let go before their TTL for comet.history_max_bytes.
	HistoryBytes   uint64 `json:"history_bytes"`
	HistoryEvicted uint64 `json:"history_evicted"`
	// PublishRefused counts publishes answered 503 because a worker was
	// behind on its IPC; WorkersKilled, workers killed for not catching up.
	PublishRefused uint64 `json:"publish_refused"`
	WorkersKilled  uint64 `json:"workers_killed"`
	// HistoryReads counts GET /history answers; Disconnects, POST
	// /disconnect's.
	HistoryReads uint64 `json:"history_reads"`
	Disconnects  uint64 `json:"disconnects"`
	ChannelReads uint64 `json:"channel_reads"` // GET /channels answers
	// ChannelChanges counts POST /subscribe and /unsubscribe answers.
	ChannelChanges uint64 `json:"channel_changes"`
	// Revokes counts POST /revoke answers.
	Revokes uint64  `json:"revokes"`
	UptimeS float64 `json:"uptime_s"`
}

// HostStats describes the machine.
type HostStats struct {
	Load1         float64 `json:"load1"`
	MemTotalBytes uint64  `json:"mem_total_bytes"`
	MemUsedBytes  uint64  `json:"mem_used_bytes"`
}

// sampleEvery is how often process and host figures are read from /proc.
// Stats requests never read /proc themselves, so they answer in
// microseconds however many connections the workers hold.
const sampleEvery = time.Second

// sampler keeps the latest process and host figures.
type sampler struct {
	mu   sync.Mutex
	host HostStats
	self *process.Process
	rss  uint64
	pss  uint64
	cpu  float64
}

func newSampler() *sampler {
	s := &sampler{}
	s.self, _ = process.NewProcess(int32(os.Getpid()))
	return s
}

// run samples every worker, the manager and the host until stop closes.
func (m *Manager) runSampler(stop <-chan struct{}) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	// The routing table grows by copying: once the number of ids settles,
	// give the old copies' pages back.
	trim := memtrim.Trimmer{Settle: 5 * time.Second, Min: 10000}
	for {
		m.sampleOnce()
		m.hub.expire()
		m.refreshCluster()
		m.killStuck(time.Now())
		trim.Observe(time.Since(m.started), m.hub.counters().IDs)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (m *Manager) sampleOnce() {
	m.mu.Lock()
	procs := m.allProcs()
	m.mu.Unlock()
	type fig struct {
		rss, pss uint64
		cpu      float64
	}
	figs := make([]fig, len(procs))
	for i, p := range procs {
		if p.ps == nil {
			continue
		}
		if mi, err := p.ps.MemoryInfo(); err == nil {
			figs[i].rss = mi.RSS
		}
		figs[i].cpu, _ = p.ps.Percent(0)
		figs[i].pss = procfs.PSS(p.pid)
	}
	m.mu.Lock()
	for i, p := range procs {
		p.rss, p.pss, p.cpuPct = figs[i].rss, figs[i].pss, figs[i].cpu
	}
	m.mu.Unlock()

	var h HostStats
	if avg, err := load.Avg(); err == nil {
		h.Load1 = avg.Load1
	}
	if vm, err := mem.VirtualMemory(); err == nil {
		h.MemTotalBytes, h.MemUsedBytes = vm.Total, vm.Used
	}
	s := m.sampler
	var rss uint64
	var cpu float64
	if s.self != nil {
		if mi, err := s.self.MemoryInfo(); err == nil {
			rss = mi.RSS
		}
		cpu, _ = s.self.Percent(0)
	}
	pss := procfs.PSS(os.Getpid())
	s.mu.Lock()
	s.host, s.rss, s.pss, s.cpu = h, rss, pss, cpu
	s.mu.Unlock()
}

// allProcs lists the live processes: each slot's current one, then any
// older ones still draining. The caller holds m.mu.
func (m *Manager) allProcs() []*proc {
	var ps []*proc
	for _, s := range m.slots {
		if s.proc != nil && s.proc.state != stateExited {
			ps = append(ps, s.proc)
		}
	}
	return append(ps, m.retiring...)
}

// Snapshot assembles the stats JSON from the latest counters and samples.
func (m *Manager) Snapshot() Stats {
	s := m.sampler
	s.mu.Lock()
	st := Stats{
		Host:    s.host,
		Manager: ManagerStats{PID: os.Getpid(), RSSBytes: s.rss, PSSBytes: s.pss, CPUPercent: s.cpu},
	}
	s.mu.Unlock()
	st.Manager.UptimeS = time.Since(m.started).Seconds()
	hc := m.hub.counters()
	st.Manager.Published, st.Manager.Retained, st.IDs, st.Channels = hc.Published, hc.Retained, hc.IDs, hc.Channels
	st.Manager.ReplaysCut, st.Manager.HistoryBytes, st.Manager.HistoryEvicted = hc.ReplaysCut, hc.HistoryBytes, hc.HistoryEvicted
	st.Manager.Joins, st.Manager.ReplaysPartial, st.Manager.JoinsDeferred = hc.Joins, hc.ReplaysPartial, hc.JoinsDeferred
	st.Manager.PresenceAnnounced, st.Manager.PresenceHeld = hc.PresenceAnnounced, hc.PresenceHeld
	st.Manager.PublishRefused, st.Manager.WorkersKilled = m.publishRefused.Load(), m.workersKilled.Load()
	st.Manager.HistoryReads, st.Manager.Disconnects, st.Manager.ChannelReads = m.historyReads.Load(), m.disconnects.Load(), m.channelReads.Load()
	st.Manager.ChannelChanges, st.Manager.Revokes = m.channelChanges.Load(), m.revokes.Load()
	st.Listen, st.API, st.Generation = m.listen, m.apiAddr, m.gen
	st.Cluster = m.clusterStats()

	if m.events != nil {
		es := m.events.Stats()
		st.Events = &EventStats{Queued: es.Queued, Sent: es.Sent, Batches: es.Batches, Failed: es.Failed, Dropped: es.Dropped, Delay: es.Delay}
		st.Events.DelayMs.P50, st.Events.DelayMs.P99 = hookQuantile(es.Delay, 0.5), hookQuantile(es.Delay, 0.99)
	}
	if h := &m.opts.Hooks; h.Deciding() {
		st.Hooks = map[string]*HookStats{}
		for name, url := range map[string]string{"connect": h.Connect, "subscribe": h.Subscribe, "publish": h.Publish} {
			if url != "" {
				st.Hooks[name] = &HookStats{}
			}
		}
		defer func() {
			for _, h := range st.Hooks {
				h.LatencyMs.P50, h.LatencyMs.P99 = hookQuantile(h.Latency, 0.5), hookQuantile(h.Latency, 0.99)
			}
		}()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st.Workers = make([]WorkerStats, 0, len(m.slots)+len(m.retiring))
	add := func(s *slot, p *proc) {
		ws := WorkerStats{Slot: s.idx, CPU: s.cpu, Restarts: s.restarts, State: "down"}
		if p != nil {
			ws.PID, ws.State, ws.Generation = p.pid, p.state.String(), p.gen
			ws.RSSBytes, ws.PSSBytes, ws.CPUPercent = p.rss, p.pss, p.cpuPct
			c := p.counts
			ws.Connections, ws.MessagesOut, ws.Accepted, ws.Refused = c.Conns, c.MessagesOut, c.Accepted, c.Refused
			ws.SlowConsumers, ws.Heartbeats, ws.BadRequests = c.SlowConsumers, c.Heartbeats, c.BadRequests
			ws.SilentClosed, ws.LoopLagMs, ws.TicksOverBudget, ws.FanOutPauses = c.SilentClosed, c.LoopLagMs, c.TicksOverBudget, c.FanOutPauses
			ws.AuthRefused, ws.TokensExpired = c.AuthRefused, c.TokensExpired
			ws.ReplaysPaced = c.ReplaysPaced
			ws.GapsAnnounced = c.GapsAnnounced
			ws.HeadersTooLarge = c.HeadersTooLarge
			ws.HeaderTimeouts = c.HeaderTimeouts
			ws.PerIPRefused, ws.ProxyRejected = c.PerIPRefused, c.ProxyRejected
			ws.KeepaliveClosed = c.KeepaliveClosed
			ws.WSControlLimited, ws.WSFragmentClosed = c.WSControlLimited, c.WSFragmentClosed
			ws.HookFailed, ws.Disconnected, ws.ChannelsFull, ws.Revoked = c.HookFailed, c.Disconnected, c.ChannelsFull, c.Revoked
			st.HookWaiting += c.HookWaiting
			for k, h := range st.Hooks {
				hk := &c.Hooks[hookIndex[k]]
				h.Calls, h.Allowed, h.Denied, h.Failed, h.CacheHits = h.Calls+hk.Calls, h.Allowed+hk.Allowed, h.Denied+hk.Denied, h.Failed+hk.Failed, h.CacheHits+hk.CacheHits
				for i, n := range hk.Latency {
					h.Latency[i] += n
				}
			}
			ws.HeapBytes, ws.GoBytes = c.HeapBytes, c.GoBytes
			ws.MaxConns = p.hello.MaxConns
			if p.state == stateReady {
				st.Capacity += p.hello.MaxConns
			}
		}
		st.Connections += ws.Connections
		st.Refused += ws.Refused
		st.Workers = append(st.Workers, ws)
	}
	for _, s := range m.slots {
		p := s.proc
		if p != nil && p.state == stateExited {
			p = nil
		}
		add(s, p)
	}
	for _, p := range m.retiring {
		add(p.slot, p)
	}
	return st
}

// serveStats answers every connection on the stats socket with the stats
// JSON and closes it.
func (m *Manager) serveStats(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, _ := json.Marshal(m.Snapshot())
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write(append(b, '\n'))
		}()
	}
}

// hookIndex is each hook's place in ipc.Counts.Hooks.
var hookIndex = map[string]hooks.Kind{"connect": hooks.Connect, "subscribe": hooks.Subscribe, "publish": hooks.Publish}

// hookQuantile is the upper bound, in ms, of the latency bucket that holds
// quantile q of the answers (past the last bound: twice it); 0 with none.
func hookQuantile(buckets [13]uint64, q float64) float64 {
	var total uint64
	for _, n := range buckets {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, n := range buckets {
		if seen += n; seen >= want {
			if i < len(hooks.LatencyBounds) {
				return float64(hooks.LatencyBounds[i]) / float64(time.Millisecond)
			}
			break
		}
	}
	return 2 * float64(hooks.LatencyBounds[len(hooks.LatencyBounds)-1]) / float64(time.Millisecond)
}
