package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
)

// Concurrency is how many calls one worker has in flight at once. At the
// ~1 ms an application's answer takes on a LAN that is ~64,000 calls a
// second per worker, more than a worker accepts connections; and when the
// application slows down, it bounds what each worker asks of it at once,
// so a connect storm queues here (and fails closed past hooks.timeout)
// instead of piling onto an application that is already behind.
const Concurrency = 64

// QueueMax bounds the calls waiting for a goroutine; past it a call fails
// at once (503).
const QueueMax = 4096

// maxAnswer bounds what is read of an answer.
const maxAnswer = 64 << 10

// Kind is which hook a call is for.
type Kind uint8

const (
	Connect Kind = iota
	Subscribe
	Publish
	NumKinds
)

func (k Kind) String() string { return [...]string{"connect", "subscribe", "publish"}[k] }

// Call is one question for the application. For a connect, Channels is
// what the client asked for; a subscribe or publish names one channel.
type Call struct {
	Kind      Kind
	ID        string
	Transport string
	Channels  []string
	Addr      string
	Headers   Headers
	Data      json.RawMessage // publish: the message's data
	// Granted, for a connect a token already admitted: the channels its
	// claim allows (nil: any). The connect hook is not asked then, only
	// the subscribe hook for each channel outside it.
	Granted  []string
	Admitted bool
}

// Headers are forwarded request headers, name then value, in the
// hooks.forward_headers order: a JSON object on the wire, and no map per
// parked connection.
type Headers []string

// MarshalJSON writes the headers as one JSON object.
func (h Headers) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i := 0; i+1 < len(h); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(h[i])
		v, _ := json.Marshal(h[i+1])
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

// Verdict is the answer. Status is 0 when allowed, 403 when refused and
// 503 when the hook failed; Reason says why in one line.
type Verdict struct {
	Status   int
	Reason   string
	Channels []string        // what the client may join later (patterns); nil: what it asked for
	ExpireAt int64           // unix seconds; 0: none
	Data     json.RawMessage // publish: the data to send instead
}

// Stats are a Caller's counters per hook; they only grow but for Queued.
type Stats struct {
	Calls, Allowed, Denied, Failed, CacheHits uint64
	// Latency counts calls by how long the application took, in the
	// buckets LatencyBounds names (the last one: longer).
	Latency [len(LatencyBounds) + 1]uint64
}

// LatencyBounds are the latency buckets' upper bounds.
var LatencyBounds = [...]time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
	20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second,
}

// Caller makes the calls of one worker.
type Caller struct {
	cfg    config.Hooks
	urls   [NumKinds]string
	client *http.Client
	jobs   chan job
	queued atomic.Int64
	log    *slog.Logger

	mu      sync.Mutex
	stats   [NumKinds]Stats
	cache   map[string]cached
	logged  map[string]time.Time // failure kind → when last logged
	closeMu sync.Once
}

type job struct {
	call *Call
	at   time.Time
	done func(Verdict)
}

type cached struct {
	v     Verdict
	until time.Time
}

// New starts a Caller's goroutines.
func New(cfg config.Hooks, log *slog.Logger) *Caller {
	c := &Caller{
		cfg:  cfg,
		urls: [NumKinds]string{cfg.Connect, cfg.Subscribe, cfg.Publish},
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil, // the application is reached directly
				DialContext:         (&net.Dialer{Timeout: cfg.Timeout.D(), KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:        Concurrency,
				MaxIdleConnsPerHost: Concurrency,
				MaxConnsPerHost:     Concurrency,
				IdleConnTimeout:     90 * time.Second,
				ForceAttemptHTTP2:   true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		jobs:   make(chan job, QueueMax),
		cache:  make(map[string]cached),
		logged: make(map[string]time.Time),
		log:    log,
	}
	for range Concurrency {
		go c.run()
	}
	return c
}

// On reports whether kind's hook is configured.
func (c *Caller) On(k Kind) bool { return c != nil && c.urls[k] != "" }

// Ask queues call; done runs on one of the Caller's goroutines with the
// verdict, within hooks.timeout or about. When QueueMax calls wait
// already, Ask returns the failed verdict itself (queued false) and done
// never runs.
func (c *Caller) Ask(call *Call, done func(Verdict)) (v Verdict, queued bool) {
	c.queued.Add(1)
	select {
	case c.jobs <- job{call: call, at: time.Now(), done: done}:
		return Verdict{}, true
	default:
		c.queued.Add(-1)
		c.count(call.Kind, func(s *Stats) { s.Calls++; s.Failed++ })
		c.failed("queue", "hook calls queued past their bound; answering 503", "queued", QueueMax)
		return Verdict{Status: 503, Reason: fmt.Sprintf("the application's %s hook has %d calls waiting: retry", call.Kind, QueueMax)}, false
	}
}

// Queued is how many calls wait for a goroutine now.
func (c *Caller) Queued() int64 { return c.queued.Load() }

// Stats returns a copy of the counters.
func (c *Caller) Stats() [NumKinds]Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func (c *Caller) count(k Kind, f func(*Stats)) {
	c.mu.Lock()
	f(&c.stats[k])
	c.mu.Unlock()
}

func (c *Caller) run() {
	for j := range c.jobs {
		c.queued.Add(-1)
		j.done(c.decide(j.call, j.at.Add(c.cfg.Timeout.D())))
	}
}

// decide answers a call: for a connect, the connect hook unless a token
// admitted it, then the subscribe hook for each channel asked for outside
// what was granted.
func (c *Caller) decide(call *Call, deadline time.Time) Verdict {
	switch call.Kind {
	case Subscribe, Publish:
		return c.ask(call.Kind, call, deadline)
	}
	v := Verdict{Channels: call.Granted}
	if !call.Admitted {
		if v = c.ask(Connect, call, deadline); v.Status != 0 {
			return v
		}
		if v.Channels == nil {
			v.Channels = append([]string{}, call.Channels...) // what it asked for, and no more
		}
	}
	var more []string
	for _, ch := range call.Channels {
		if auth.Allows(v.Channels, ch) {
			continue
		}
		if !c.On(Subscribe) {
			return Verdict{Status: 403, Reason: "channel " + ch + " is not allowed"}
		}
		sub := *call
		sub.Kind, sub.Channels = Subscribe, []string{ch}
		if s := c.ask(Subscribe, &sub, deadline); s.Status != 0 {
			return s
		}
		more = append(more, ch)
	}
	if v.Channels != nil {
		v.Channels = append(v.Channels, more...)
	}
	return v
}

// connectRequest and channelRequest are a call's JSON.
type connectRequest struct {
	Hook      string   `json:"hook"`
	ID        string   `json:"id"`
	Transport string   `json:"transport"`
	Channels  []string `json:"channels"`
	Addr      string   `json:"addr"`
	Headers   Headers  `json:"headers"`
}

type channelRequest struct {
	Hook      string          `json:"hook"`
	ID        string          `json:"id"`
	Transport string          `json:"transport"`
	Channel   string          `json:"channel"`
	Data      json.RawMessage `json:"data,omitempty"`
	Addr      string          `json:"addr"`
	Headers   Headers         `json:"headers"`
}

// answer is what the application says.
type answer struct {
	Allow    *bool           `json:"allow"`
	Reason   string          `json:"reason"`
	Channels []string        `json:"channels"`
	ExpireAt int64           `json:"expire_at"`
	Data     json.RawMessage `json:"data"`
}

var errNoAllow = errors.New(`no boolean "allow"`)

// ask calls kind's hook.
func (c *Caller) ask(k Kind, call *Call, deadline time.Time) Verdict {
	headers := call.Headers
	var body []byte
	if k == Connect {
		chans := call.Channels
		if chans == nil {
			chans = []string{}
		}
		body, _ = json.Marshal(&connectRequest{Hook: k.String(), ID: call.ID, Transport: call.Transport, Channels: chans, Addr: call.Addr, Headers: headers})
	} else {
		body, _ = json.Marshal(&channelRequest{Hook: k.String(), ID: call.ID, Transport: call.Transport, Channel: call.Channels[0], Data: call.Data, Addr: call.Addr, Headers: headers})
	}
	key := string(body)
	now := time.Now()
	if c.cfg.Cache > 0 {
		c.mu.Lock()
		e, ok := c.cache[key]
		if ok && now.Before(e.until) {
			c.stats[k].Calls++
			c.stats[k].CacheHits++
			c.tally(k, e.v)
			c.mu.Unlock()
			return e.v
		}
		c.mu.Unlock()
	}
	c.count(k, func(s *Stats) { s.Calls++ })
	if !now.Before(deadline) {
		return c.fail(k, "queue", "hook calls waited past hooks.timeout for a free connection", "waited", now.Sub(deadline.Add(-c.cfg.Timeout.D())).Round(time.Millisecond))
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", c.urls[k], bytes.NewReader(body))
	if err != nil {
		return c.fail(k, "request", "cannot make the hook request", "err", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "megacomet-hooks")
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return c.fail(k, "timeout", "hook did not answer within hooks.timeout", "url", c.urls[k], "timeout", c.cfg.Timeout.D())
		}
		return c.fail(k, "unreachable", "hook unreachable", "url", c.urls[k], "err", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	c.latency(k, time.Since(now))
	switch {
	case err != nil && ctx.Err() != nil:
		return c.fail(k, "timeout", "hook did not finish its answer within hooks.timeout", "url", c.urls[k], "timeout", c.cfg.Timeout.D())
	case err != nil:
		return c.fail(k, "broken", "hook answer cut short", "url", c.urls[k], "err", err)
	case resp.StatusCode != 200:
		return c.fail(k, "status", "hook answered other than 200", "url", c.urls[k], "status", resp.StatusCode)
	case len(b) > maxAnswer:
		return c.fail(k, "garbage", "hook answer over 64 KiB", "url", c.urls[k])
	}
	var a answer
	if err := json.Unmarshal(b, &a); err != nil || a.Allow == nil {
		if err == nil {
			err = errNoAllow
		}
		return c.fail(k, "garbage", "hook answer is not the JSON documented", "url", c.urls[k], "err", err)
	}
	v := Verdict{Channels: a.Channels, ExpireAt: a.ExpireAt, Data: a.Data}
	if !*a.Allow {
		v = Verdict{Status: 403, Reason: oneLine(a.Reason)}
		if v.Reason == "" {
			v.Reason = "refused by the application"
		}
	} else if k == Publish && len(a.Data) > 0 && !json.Valid(a.Data) {
		return c.fail(k, "garbage", "publish hook's data is not JSON", "url", c.urls[k])
	}
	c.mu.Lock()
	c.tally(k, v)
	if c.cfg.Cache > 0 {
		if len(c.cache) >= 100_000 {
			clear(c.cache) // bounded: a burst of distinct calls starts over
		}
		c.cache[key] = cached{v: v, until: now.Add(c.cfg.Cache.D())}
	}
	c.mu.Unlock()
	return v
}

// tally counts an answer; c.mu is held.
func (c *Caller) tally(k Kind, v Verdict) {
	if v.Status == 0 {
		c.stats[k].Allowed++
	} else {
		c.stats[k].Denied++
	}
}

func (c *Caller) latency(k Kind, d time.Duration) {
	i := 0
	for i < len(LatencyBounds) && d > LatencyBounds[i] {
		i++
	}
	c.count(k, func(s *Stats) { s.Latency[i]++ })
}

// fail counts a failed call, logs it (one line per kind of failure per
// second at most) and answers 503.
func (c *Caller) fail(k Kind, why, msg string, args ...any) Verdict {
	c.count(k, func(s *Stats) { s.Failed++ })
	c.failed(k.String()+" "+why, msg, append([]any{"hook", k.String()}, args...)...)
	return Verdict{Status: 503, Reason: fmt.Sprintf("the application's %s hook failed (%s): retry", k, why)}
}

func (c *Caller) failed(key, msg string, args ...any) {
	now := time.Now()
	c.mu.Lock()
	last, seen := c.logged[key]
	if seen && now.Sub(last) < time.Second {
		c.mu.Unlock()
		return
	}
	c.logged[key] = now
	c.mu.Unlock()
	c.log.Warn(msg, args...)
}

// oneLine keeps printable ASCII of s, at most 200 bytes.
func oneLine(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 200; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}
