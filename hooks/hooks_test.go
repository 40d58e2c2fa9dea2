package hooks

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
)

func caller(t *testing.T, h http.HandlerFunc, edit func(*config.Hooks)) (*Caller, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := config.Hooks{Connect: srv.URL + "/connect", Subscribe: srv.URL + "/subscribe", Timeout: config.Duration(300 * time.Millisecond)}
	if edit != nil {
		edit(&cfg)
	}
	return New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))), &n
}

func ask(c *Caller, call *Call) Verdict {
	done := make(chan Verdict, 1)
	if v, queued := c.Ask(call, func(v Verdict) { done <- v }); !queued {
		return v
	}
	return <-done
}

// Every way an answer can be wrong fails closed (503), naming the kind.
func TestAnswers(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(w http.ResponseWriter)
		status int
		reason string
	}{
		{"allow", func(w http.ResponseWriter) { io.WriteString(w, `{"allow":true,"extra":1}`) }, 0, ""},
		{"deny", func(w http.ResponseWriter) { io.WriteString(w, `{"allow":false,"reason":"no\nway"}`) }, 403, "noway"},
		{"deny without reason", func(w http.ResponseWriter) { io.WriteString(w, `{"allow":false}`) }, 403, "refused by the application"},
		{"no allow", func(w http.ResponseWriter) { io.WriteString(w, `{"channels":[]}`) }, 503, "(garbage)"},
		{"allow not a boolean", func(w http.ResponseWriter) { io.WriteString(w, `{"allow":"yes"}`) }, 503, "(garbage)"},
		{"html", func(w http.ResponseWriter) { io.WriteString(w, `<html>hi</html>`) }, 503, "(garbage)"},
		{"500", func(w http.ResponseWriter) { w.WriteHeader(500) }, 503, "(status)"},
		{"403 from the app", func(w http.ResponseWriter) { w.WriteHeader(403); io.WriteString(w, `{"allow":false}`) }, 503, "(status)"},
		{"too big", func(w http.ResponseWriter) { io.WriteString(w, `{"allow":true,"x":"`+strings.Repeat("a", 70<<10)+`"}`) }, 503, "(garbage)"},
		{"hangs", func(w http.ResponseWriter) { time.Sleep(time.Second) }, 503, "(timeout)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, _ := caller(t, func(w http.ResponseWriter, r *http.Request) { c.answer(w) }, nil)
			v := ask(cl, &Call{Kind: Connect, ID: "a"})
			if v.Status != c.status || !strings.Contains(v.Reason, c.reason) {
				t.Errorf("got %d %q, want %d %q", v.Status, v.Reason, c.status, c.reason)
			}
			s := cl.Stats()[Connect]
			if s.Calls != 1 || (c.status == 0) != (s.Allowed == 1) || (c.status == 403) != (s.Denied == 1) || (c.status == 503) != (s.Failed == 1) {
				t.Errorf("stats %+v", s)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		cl, _ := caller(t, nil, func(h *config.Hooks) { h.Connect = "http://127.0.0.1:1/connect" })
		if v := ask(cl, &Call{Kind: Connect, ID: "a"}); v.Status != 503 || !strings.Contains(v.Reason, "(unreachable)") {
			t.Errorf("got %d %q", v.Status, v.Reason)
		}
	})
}

// A connect answer's channels admit what they match; the rest is the
// subscribe hook's, asked once per channel; without channels, what was
// asked for is granted and no more.
func TestChannels(t *testing.T) {
	cl, _ := caller(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch {
		case r.URL.Path == "/subscribe" && strings.Contains(string(b), `"channel":"extra"`):
			io.WriteString(w, `{"allow":true}`)
		case r.URL.Path == "/subscribe":
			io.WriteString(w, `{"allow":false,"reason":"not that"}`)
		case strings.Contains(string(b), `"id":"plain"`):
			io.WriteString(w, `{"allow":true}`)
		default:
			io.WriteString(w, `{"allow":true,"channels":["news","team-*"]}`)
		}
	}, nil)
	for _, c := range []struct {
		id     string
		chans  []string
		status int
		grant  string
	}{
		{"a", []string{"news", "team-1"}, 0, "news team-*"},
		{"a", []string{"news", "extra"}, 0, "news team-* extra"},
		{"a", []string{"secret"}, 403, ""},
		{"plain", []string{"x", "y"}, 0, "x y"},
		{"plain", nil, 0, ""},
	} {
		v := ask(cl, &Call{Kind: Connect, ID: c.id, Channels: c.chans})
		if v.Status != c.status || (c.status == 0 && (v.Channels == nil || strings.Join(v.Channels, " ") != c.grant)) {
			t.Errorf("%s %v: %d %q %v, want %d %q", c.id, c.chans, v.Status, v.Reason, v.Channels, c.status, c.grant)
		}
	}
	// A token admitted it: only the subscribe hook, for what its claim lacks.
	v := ask(cl, &Call{Kind: Connect, ID: "t", Channels: []string{"mine", "extra"}, Admitted: true, Granted: []string{"mine"}})
	if v.Status != 0 || strings.Join(v.Channels, " ") != "mine extra" {
		t.Errorf("admitted: %d %q %v", v.Status, v.Reason, v.Channels)
	}
	if s := cl.Stats(); s[Connect].Calls != 5 || s[Subscribe].Calls != 3 {
		t.Errorf("calls: connect %d, subscribe %d; want 5 and 3", s[Connect].Calls, s[Subscribe].Calls)
	}
}

// hooks.cache answers a call the same as one already answered without
// asking again; a different call is asked.
func TestCache(t *testing.T) {
	cl, n := caller(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"allow":true}`) },
		func(h *config.Hooks) { h.Cache = config.Duration(time.Minute) })
	for range 3 {
		ask(cl, &Call{Kind: Connect, ID: "a", Headers: Headers{"Cookie", "s=1"}})
	}
	ask(cl, &Call{Kind: Connect, ID: "a", Headers: Headers{"Cookie", "s=2"}})
	if n.Load() != 2 || cl.Stats()[Connect].CacheHits != 2 {
		t.Errorf("%d calls reached the app, %d cache hits; want 2 and 2", n.Load(), cl.Stats()[Connect].CacheHits)
	}
}
