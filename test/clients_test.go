package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// msg is a message as clients receive it.
type msg struct {
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	Gap     *gap            `json:"gap"` // not a message: a gap announcement
}

// gap is the server's announcement that messages with ids strictly between
// After and Before may be missing.
type gap struct{ After, Before uint64 }

// event is what a streaming client reads: a message, a heartbeat, the
// server's hand-over hint, or (SSE) the cursor the stream starts from.
type event struct {
	msg       *msg
	heartbeat bool
	handOff   bool
	cursor    uint64
}

// publish posts body to the API and returns the ids it answers with.
func publish(t testing.TB, api, body string, header ...string) []uint64 {
	t.Helper()
	ids, err := tryPublish(api, body, header...)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// tryPublish is publish for goroutines other than the test's: it returns
// what went wrong instead of failing the test.
func tryPublish(api, body string, header ...string) ([]uint64, error) {
	status, resp, err := tryPost(api, body, header...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", body, err)
	}
	if status != 200 {
		return nil, fmt.Errorf("publish %s: %d %s", body, status, resp)
	}
	var ids []uint64
	if strings.HasPrefix(resp, "[") {
		var out []struct{ ID uint64 }
		json.Unmarshal([]byte(resp), &out)
		for _, o := range out {
			ids = append(ids, o.ID)
		}
	} else {
		var out struct{ ID uint64 }
		json.Unmarshal([]byte(resp), &out)
		ids = append(ids, out.ID)
	}
	if len(ids) == 0 || ids[0] == 0 {
		return nil, fmt.Errorf("publish %s: no id in %s", body, resp)
	}
	return ids, nil
}

// post sends body to /publish and returns the status and body.
func post(t testing.TB, api, body string, header ...string) (int, string) {
	t.Helper()
	status, resp, err := tryPost(api, body, header...)
	if err != nil {
		t.Fatal(err)
	}
	return status, resp
}

// tryPost is post for goroutines other than the test's: a transport error
// is returned, not fatal.
func tryPost(api, body string, header ...string) (int, string, error) {
	req, err := http.NewRequest("POST", "http://"+api+"/publish", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json") // header may replace it
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// streamClient reads an SSE or NDJSON stream with net/http.
type streamClient struct {
	t      testing.TB
	resp   *http.Response
	cancel context.CancelFunc
	events chan event
	done   chan struct{} // closed when the server ends the stream
	hints  bool          // saw the hand-over hint before the end
}

// openStream GETs path ("/sse/a", "/stream/a?since=5") and starts reading.
func openStream(t testing.TB, addr, path string, header ...string) *streamClient {
	t.Helper()
	c, err := dialStream(t, addr, path, header...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

// dialStream is openStream without failing the test; the caller closes.
func dialStream(t testing.TB, addr, path string, header ...string) (*streamClient, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		return nil, fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	c := &streamClient{t: t, resp: resp, cancel: cancel, events: make(chan event, 10000), done: make(chan struct{})}
	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	go c.read(sse)
	return c, nil
}

func (c *streamClient) close() { c.cancel(); c.resp.Body.Close() }

func (c *streamClient) read(sse bool) {
	defer close(c.done)
	sc := bufio.NewScanner(c.resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var data, comment, id string
	var hasData bool
	for sc.Scan() {
		line := sc.Text()
		if !sse {
			if line == "" {
				c.events <- event{heartbeat: true}
				continue
			}
			c.events <- c.decode(line)
			continue
		}
		switch {
		case line == "":
			switch {
			case hasData:
				c.events <- c.decode(data)
			case id != "":
				n, _ := strconv.ParseUint(id, 10, 64)
				c.events <- event{cursor: n}
			case comment == " reconnect":
				c.hints = true
				c.events <- event{handOff: true}
			case comment == "":
				c.events <- event{heartbeat: true}
			}
			data, comment, id, hasData = "", "-", "", false
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "data: "):
			data, hasData = line[6:], true
		case strings.HasPrefix(line, ":"):
			comment = line[1:]
		}
	}
}

func (c *streamClient) decode(s string) event {
	var m msg
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		c.t.Errorf("bad message %q: %v", s, err)
	}
	return event{msg: &m}
}

// receiver is any client that yields messages.
type receiver interface {
	tryNext(wait time.Duration) (*msg, bool)
}

// next returns the next message or fails the test.
func next(t testing.TB, r receiver, wait time.Duration) *msg {
	t.Helper()
	m, ok := r.tryNext(wait)
	if !ok {
		t.Fatalf("no message within %s", wait)
	}
	return m
}

// tryNext returns the next message, skipping heartbeats.
func (c *streamClient) tryNext(wait time.Duration) (*msg, bool) {
	deadline := time.After(wait)
	for {
		select {
		case ev := <-c.events:
			if ev.msg != nil {
				return ev.msg, true
			}
		case <-deadline:
			return nil, false
		}
	}
}

// nextEvent returns the next event of any kind, or ended once the server
// has ended the stream and every event before the end was taken.
func (c *streamClient) nextEvent(wait time.Duration) (ev event, ended bool) {
	select {
	case ev := <-c.events:
		return ev, false
	default:
	}
	select {
	case ev := <-c.events:
		return ev, false
	case <-c.done:
		select {
		case ev := <-c.events:
			return ev, false
		default:
			return event{}, true
		}
	case <-time.After(wait):
		c.t.Fatalf("no event within %s", wait)
		return event{}, true
	}
}

// quiet asserts no message arrives within d.
func (c *streamClient) quiet(d time.Duration) {
	c.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-c.events:
			if ev.msg != nil {
				c.t.Fatalf("unexpected message %d %s", ev.msg.ID, ev.msg.Data)
			}
		case <-deadline:
			return
		}
	}
}

// poll does one long-poll request and returns its messages.
func poll(t testing.TB, cl *http.Client, addr, path string) []msg {
	t.Helper()
	resp, err := cl.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if cb := callbackOf(path); cb != "" {
		if !bytes.HasPrefix(b, []byte("/**/"+cb+"(")) || !bytes.HasSuffix(b, []byte(");")) {
			t.Fatalf("JSONP answer %q does not call %s after /**/", b, cb)
		}
		b = b[len("/**/")+len(cb)+1 : len(b)-2]
	}
	var ms []msg
	if err := json.Unmarshal(b, &ms); err != nil {
		t.Fatalf("long-poll answer %q: %v", b, err)
	}
	return ms
}

func callbackOf(path string) string {
	_, q, _ := strings.Cut(path, "?")
	for _, kv := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(kv, "callback="); ok {
			return v
		}
	}
	return ""
}

// poller long-polls in a loop, keeping its cursor, and hands messages on.
type poller struct {
	msgs chan msg
	stop chan struct{}
	done chan struct{}
}

// startPollerAt starts polling base with cursor since (0 = none).
func startPollerAt(t testing.TB, addr, base string, since uint64) *poller {
	p := &poller{msgs: make(chan msg, 100000), stop: make(chan struct{}), done: make(chan struct{})}
	cl := &http.Client{Timeout: time.Minute}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			sep := "?"
			if strings.Contains(base, "?") {
				sep = "&"
			}
			path := base
			if since > 0 {
				path += sep + "since=" + strconv.FormatUint(since, 10)
			}
			resp, err := cl.Get("http://" + addr + path)
			if err != nil {
				select {
				case <-p.stop:
				default:
					t.Errorf("poll: %v", err)
				}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if cb := callbackOf(path); cb != "" && len(b) > len("/**/")+len(cb)+3 {
				b = b[len("/**/")+len(cb)+1 : len(b)-2]
			}
			var ms []msg
			if err := json.Unmarshal(b, &ms); err != nil {
				t.Errorf("poll answer %q: %v", b, err)
				return
			}
			for _, m := range ms {
				since = m.ID
				p.msgs <- m
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

// halt stops polling; a poll in flight is abandoned.
func (p *poller) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
}

func (p *poller) tryNext(wait time.Duration) (*msg, bool) {
	select {
	case m := <-p.msgs:
		return &m, true
	case <-time.After(wait):
		return nil, false
	}
}

// waitLive publishes probes to id until r receives one, so what is
// published next reaches r live; it returns the last probe's id.
func waitLive(t testing.TB, api string, r receiver, id string) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		publish(t, api, `{"to":"`+id+`","data":"probe"}`)
		if m, ok := r.tryNext(200 * time.Millisecond); ok {
			for { // drain the other probes
				if more, ok := r.tryNext(100 * time.Millisecond); ok {
					m = more
					continue
				}
				return m.ID
			}
		}
	}
	t.Fatalf("%s never received a probe", id)
	return 0
}

func dataString(m *msg) string {
	var s string
	if json.Unmarshal(m.Data, &s) == nil {
		return s
	}
	return string(m.Data)
}

func fmtIDs(ms []msg) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%d ", m.ID)
	}
	return b.String()
}
