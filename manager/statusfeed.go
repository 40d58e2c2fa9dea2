package manager

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// The status page is pushed over our own transport: GET /status/events is
// a Server-Sent Events stream of one statusPoint a second. The feed keeps
// the last ten minutes, so a page that opens (or comes back after a
// reload) draws them at once, then gets each new point as it is made.
// /ping's time is measured here as a user would see it: once a second,
// for each worker, a real TCP request to the client port (the kernel
// picks which worker answers it) - while someone looks: a page is open,
// or /metrics was scraped in the last minute. The probes are connections
// like any other (accepted, refused when a worker is full), so a server
// nobody watches is not probed.

// statusHistory is how many points the feed keeps: ten minutes.
const statusHistory = 600

// pingWindow is how far back the ping quantiles look.
const pingWindow = 10 * time.Second

// statusPoint is one second of the status page.
type statusPoint struct {
	T              int64          `json:"t"` // unix ms
	Generation     uint64         `json:"generation"`
	Connections    uint64         `json:"connections"`
	Capacity       uint64         `json:"capacity"`
	ConnectsPerS   float64        `json:"connects_per_s"`
	PublishedPerS  float64        `json:"published_per_s"`
	DeliveredPerS  float64        `json:"delivered_per_s"`  // messages written to clients (not heartbeats)
	HeartbeatsPerS float64        `json:"heartbeats_per_s"` // heartbeats written
	PingP50Ms      float64        `json:"ping_p50_ms"`
	PingP99Ms      float64        `json:"ping_p99_ms"`
	PingFailed     int            `json:"ping_failed"` // in the window
	Load1          float64        `json:"load1"`
	MemUsedBytes   uint64         `json:"mem_used_bytes"`
	MemTotalBytes  uint64         `json:"mem_total_bytes"`
	ServerPSS      uint64         `json:"server_pss_bytes"`
	Workers        []statusWorker `json:"workers"`
	// Hooks: the application's hooks, when any is set (stats' hooks).
	Hooks       map[string]*HookStats `json:"hooks,omitempty"`
	HookWaiting uint64                `json:"hook_waiting"`
	// Events: hooks.events, when set (stats' events).
	Events *EventStats `json:"events,omitempty"`
}

type statusWorker struct {
	Slot        int     `json:"slot"`
	PID         int     `json:"pid"`
	CPU         int     `json:"cpu"`
	State       string  `json:"state"`
	Connections uint64  `json:"connections"`
	RSSBytes    uint64  `json:"rss_bytes"`
	CPUPercent  float64 `json:"cpu_percent"`
	Restarts    int     `json:"restarts"`
	Delivered   uint64  `json:"delivered"`
	Heartbeats  uint64  `json:"heartbeats"`
	Refused     uint64  `json:"refused"`
	Slow        uint64  `json:"slow_consumers"`
}

type pingSample struct {
	at time.Time
	d  time.Duration // 0: failed
}

// statusFeed makes the points and hands them to the page streams.
type statusFeed struct {
	mu      sync.Mutex
	subs    map[chan []byte]struct{}
	history [][]byte
	pings   []pingSample
	prev    *Stats
	prevAt  time.Time
	last    statusPoint
	// scrapedUntil: probe /ping until then (a /metrics scrape).
	scrapedUntil time.Time
	closed       chan struct{} // closed when the API stops: the streams end
	once         sync.Once
}

func newStatusFeed() *statusFeed {
	return &statusFeed{subs: map[chan []byte]struct{}{}, closed: make(chan struct{})}
}

// close ends every page stream, so a stop or a hand-over never waits on one.
func (f *statusFeed) close() { f.once.Do(func() { close(f.closed) }) }

// runStatus makes a point a second until stop.
func (m *Manager) runStatus(stop <-chan struct{}) {
	every(time.Second, stop, func() {
		st := m.Snapshot()
		if m.status.watched() {
			m.probePings(len(st.Workers))
		}
		m.status.add(m.statusPoint(st))
	})
}

// scrapeKeepsProbing is how long a /metrics scrape keeps the probes on.
const scrapeKeepsProbing = time.Minute

// watched: a page is open, or /metrics was scraped lately.
func (f *statusFeed) watched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs) > 0 || time.Now().Before(f.scrapedUntil)
}

// scraped notes a /metrics scrape.
func (f *statusFeed) scraped() {
	f.mu.Lock()
	f.scrapedUntil = time.Now().Add(scrapeKeepsProbing)
	f.mu.Unlock()
}

// every calls fn each d until stop is closed.
func every(d time.Duration, stop <-chan struct{}, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// probePings times a GET /ping to the client port per worker, at once.
func (m *Manager) probePings(workers int) {
	n := max(workers, 1)
	done := make(chan pingSample, n)
	for range n {
		go func() { done <- pingOnce(m.listen) }()
	}
	f := m.status
	for range n {
		s := <-done
		f.mu.Lock()
		f.pings = append(f.pings, s)
		f.mu.Unlock()
	}
}

func pingOnce(addr string) pingSample {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return pingSample{at: start}
	}
	defer c.Close()
	c.SetDeadline(start.Add(2 * time.Second))
	if _, err := c.Write([]byte("GET /ping HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n")); err != nil {
		return pingSample{at: start}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || len(line) < 12 || line[9:12] != "200" {
		return pingSample{at: start}
	}
	return pingSample{at: start, d: max(time.Since(start), time.Microsecond)}
}

// statusPoint assembles this second's point.
func (m *Manager) statusPoint(st Stats) statusPoint {
	now := time.Now()
	p := statusPoint{T: now.UnixMilli(), Generation: st.Generation, Connections: st.Connections, Capacity: st.Capacity,
		Load1: st.Host.Load1, MemUsedBytes: st.Host.MemUsedBytes, MemTotalBytes: st.Host.MemTotalBytes, ServerPSS: st.Manager.PSSBytes,
		Hooks: st.Hooks, HookWaiting: st.HookWaiting, Events: st.Events}
	var accepted, delivered, heartbeats uint64
	for _, w := range st.Workers {
		p.Workers = append(p.Workers, statusWorker{Slot: w.Slot, PID: w.PID, CPU: w.CPU, State: w.State, Connections: w.Connections,
			RSSBytes: w.RSSBytes, CPUPercent: w.CPUPercent, Restarts: w.Restarts, Delivered: w.MessagesOut, Heartbeats: w.Heartbeats,
			Refused: w.Refused, Slow: w.SlowConsumers})
		accepted, delivered, heartbeats = accepted+w.Accepted, delivered+w.MessagesOut, heartbeats+w.Heartbeats
		p.ServerPSS += w.PSSBytes
	}
	f := m.status
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.prev != nil {
		dt := now.Sub(f.prevAt).Seconds()
		var pa, pd, ph uint64
		for _, w := range f.prev.Workers {
			pa, pd, ph = pa+w.Accepted, pd+w.MessagesOut, ph+w.Heartbeats
		}
		rate := func(now, before uint64) float64 {
			if now < before || dt <= 0 { // a worker restarted: its counters did
				return 0
			}
			return float64(now-before) / dt
		}
		p.ConnectsPerS, p.DeliveredPerS, p.HeartbeatsPerS = rate(accepted, pa), rate(delivered, pd), rate(heartbeats, ph)
		p.PublishedPerS = rate(st.Manager.Published, f.prev.Manager.Published)
	}
	f.prev, f.prevAt = &st, now
	cut := 0
	for cut < len(f.pings) && now.Sub(f.pings[cut].at) > pingWindow {
		cut++
	}
	f.pings = f.pings[cut:]
	var ds []time.Duration
	for _, s := range f.pings {
		if s.d == 0 {
			p.PingFailed++
		} else {
			ds = append(ds, s.d)
		}
	}
	if len(ds) > 0 {
		slices.Sort(ds)
		q := func(x float64) float64 {
			return float64(ds[min(int(x*float64(len(ds))), len(ds)-1)].Microseconds()) / 1000
		}
		p.PingP50Ms, p.PingP99Ms = q(0.50), q(0.99)
	}
	return p
}

// latest is the newest point, for /metrics.
func (f *statusFeed) latest() (statusPoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, f.last.T != 0
}

// add keeps a point and sends it to every page.
func (f *statusFeed) add(p statusPoint) {
	b, _ := json.Marshal(p)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = p
	if f.history = append(f.history, b); len(f.history) > statusHistory {
		f.history = slices.Delete(f.history, 0, len(f.history)-statusHistory)
	}
	for ch := range f.subs {
		select {
		case ch <- b:
		default: // a page that does not read misses points, not the feed
		}
	}
}

// handleStatusEvents serves GET /status/events.
func (m *Manager) handleStatusEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	f := m.status
	ch := make(chan []byte, 16)
	f.mu.Lock()
	backlog := slices.Clone(f.history)
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}()
	write := func(b []byte) bool {
		// The API's write timeout is for requests; a stream is extended
		// write by write.
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(w, "retry: 1000\n\n")
	for _, b := range backlog {
		if !write(b) {
			return
		}
	}
	rc.Flush()
	for {
		select {
		case b := <-ch:
			if !write(b) {
				return
			}
		case <-r.Context().Done():
			return
		case <-m.status.closed: // the API is shutting down: EventSource comes back
			return
		}
	}
}
