package config

import (
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Hooks puts the application in the loop (hooks/): URLs of its own that
// decide who may connect, subscribe and publish. Every URL empty (the
// default) leaves them off: tokens alone decide, as without this table.
type Hooks struct {
	// Connect is asked once per client connection that no token admitted,
	// before it is answered.
	Connect string `toml:"connect" json:"connect"`
	// Subscribe is asked for a channel outside what the token or the
	// connect answer granted.
	Subscribe string `toml:"subscribe" json:"subscribe"`
	// Publish is asked for a WebSocket client publish no claim allows.
	Publish string `toml:"publish" json:"publish"`
	// Timeout bounds one call, queueing included; past it the client is
	// answered 503 with Retry-After.
	Timeout Duration `toml:"timeout" json:"timeout"`
	// Cache keeps an answer this long, keyed by everything the call sent
	// (0 = off).
	Cache Duration `toml:"cache" json:"cache"`
	// ForwardHeaders names the client request headers a call carries.
	ForwardHeaders []string `toml:"forward_headers" json:"forward_headers"`

	// Events is the application's URL told what happened (connects,
	// disconnects, channels occupied and vacated, presence joins and
	// leaves), in signed batches; empty = off.
	Events string `toml:"events" json:"events"`
	// Secret signs each batch (HMAC-SHA256); required with Events.
	Secret string `toml:"secret" json:"-"`
	// EventsBatch is the most events one request carries.
	EventsBatch int `toml:"events_batch" json:"events_batch"`
	// EventsQueue bounds the events waiting while the application is slow
	// or down; past it the oldest are dropped, and said so.
	EventsQueue int `toml:"events_queue" json:"events_queue"`
	// EventsLinger is how long an id (channel, member) must stay gone
	// before its disconnect (vacated, leave) is told: a client that comes
	// back within it, as after a reload or between long-polls, was never
	// gone.
	EventsLinger Duration `toml:"events_linger" json:"events_linger"`
	// EventsPublish tells the application of client publishes too.
	EventsPublish bool `toml:"events_publish" json:"events_publish"`
}

// Deciding reports whether any hook decides admissions.
func (h *Hooks) Deciding() bool { return h.Connect != "" || h.Subscribe != "" || h.Publish != "" }

func defaultHooks() Hooks {
	return Hooks{Timeout: Duration(2 * time.Second), ForwardHeaders: []string{"Cookie", "Authorization"},
		EventsBatch: 100, EventsQueue: 100000, EventsLinger: Duration(2 * time.Second)}
}

func (o *Options) checkHooks(bad func(key, format string, args ...any) error) error {
	h := &o.Hooks
	for _, k := range []struct {
		key, u string
	}{{"hooks.connect", h.Connect}, {"hooks.subscribe", h.Subscribe}, {"hooks.publish", h.Publish}, {"hooks.events", h.Events}} {
		if k.u == "" {
			continue
		}
		p, err := url.Parse(k.u)
		if err != nil || p.Host == "" || (p.Scheme != "http" && p.Scheme != "https") {
			return bad(k.key, "%q is not an http(s) URL like http://127.0.0.1:8080/megacomet/connect", k.u)
		}
	}
	if h.Timeout < Duration(10*time.Millisecond) || h.Timeout > Duration(time.Minute) {
		return bad("hooks.timeout", "must be 10ms to 1m, got %s", h.Timeout.D())
	}
	if h.Cache < 0 || h.Cache > Duration(time.Hour) {
		return bad("hooks.cache", "must be 0 (off) to 1h, got %s", h.Cache.D())
	}
	for i, name := range h.ForwardHeaders {
		if !validHeaderName(name) {
			return bad("hooks.forward_headers", "%q is not a header name", name)
		}
		h.ForwardHeaders[i] = http.CanonicalHeaderKey(name)
	}
	if len(h.ForwardHeaders) > 16 {
		return bad("hooks.forward_headers", "at most 16 headers, got %d", len(h.ForwardHeaders))
	}
	if h.Events != "" && len(h.Secret) < 16 {
		return bad("hooks.secret", "hooks.events needs a secret of at least 16 bytes to sign its batches, got %d", len(h.Secret))
	}
	if h.EventsBatch < 1 || h.EventsBatch > 10000 {
		return bad("hooks.events_batch", "must be 1 to 10000, got %d", h.EventsBatch)
	}
	if h.EventsQueue < 100 || h.EventsQueue > 10000000 {
		return bad("hooks.events_queue", "must be 100 to 10000000, got %d", h.EventsQueue)
	}
	if h.EventsLinger < 0 || h.EventsLinger > Duration(time.Minute) {
		return bad("hooks.events_linger", "must be 0 to 1m, got %s", h.EventsLinger.D())
	}
	return nil
}

// validHeaderName: an RFC 9110 token.
func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}
