package test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/testutil"
)

// transports: how a test opens each kind of client for an id. query is
// "" or "?…" without since; since adds the cursor.
var transports = []struct {
	name string
	open func(t *testing.T, addr, id, query string, since uint64) receiver
}{
	{"sse", func(t *testing.T, addr, id, query string, since uint64) receiver {
		var h []string
		if since > 0 {
			h = []string{"Last-Event-ID", strconv.FormatUint(since, 10)}
		}
		return openStream(t, addr, "/sse/"+id+query, h...)
	}},
	{"sse-since", func(t *testing.T, addr, id, query string, since uint64) receiver {
		return openStream(t, addr, "/sse/"+id+withSince(query, since))
	}},
	{"stream", func(t *testing.T, addr, id, query string, since uint64) receiver {
		return openStream(t, addr, "/stream/"+id+withSince(query, since))
	}},
	{"lp", func(t *testing.T, addr, id, query string, since uint64) receiver {
		return startPollerSince(t, addr, "/lp/"+id+query, since)
	}},
	{"jsonp", func(t *testing.T, addr, id, query string, since uint64) receiver {
		return startPollerSince(t, addr, "/"+id+".js"+withParam(query, "callback=mc.cb_1"), since)
	}},
}

func withSince(query string, since uint64) string {
	if since == 0 {
		return query
	}
	return withParam(query, "since="+strconv.FormatUint(since, 10))
}

func withParam(query, kv string) string {
	if query == "" {
		return "?" + kv
	}
	return query + "&" + kv
}

func TestDeliveryOnEveryTransport(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			id, ch := "u-"+tr.name, "news-"+tr.name
			r := tr.open(t, s.Listen, id, "?channels="+ch+",other", 0)
			waitLive(t, s.API, r, id)

			publish(t, s.API, `{"to":"`+id+`","data":{"k":"direct"}}`)
			if m := next(t, r, 5*time.Second); string(m.Data) != `{"k":"direct"}` || m.Channel != "" {
				t.Errorf("to id: got %+v", m)
			}
			publish(t, s.API, `{"channel":"`+ch+`","data":"chan"}`)
			if m := next(t, r, 5*time.Second); dataString(m) != "chan" || m.Channel != ch {
				t.Errorf("channel: got %+v", m)
			}
			publish(t, s.API, `{"channel":"elsewhere","data":"not for us"}`)
			publish(t, s.API, `{"to":"someone-else","data":"not for us"}`)
			publish(t, s.API, `{"broadcast":true,"data":"all"}`)
			if m := next(t, r, 5*time.Second); dataString(m) != "all" {
				t.Errorf("broadcast: got %+v", m)
			}

			// Order: a batch and single publishes, back to back.
			var batch []string
			for i := 0; i < 50; i++ {
				batch = append(batch, fmt.Sprintf(`{"to":"%s","data":%d}`, id, i))
			}
			ids := publish(t, s.API, "["+strings.Join(batch, ",")+"]")
			for i := 50; i < 100; i++ {
				ids = append(ids, publish(t, s.API, fmt.Sprintf(`{"to":"%s","data":%d}`, id, i))...)
			}
			for i := 0; i < 100; i++ {
				m := next(t, r, 5*time.Second)
				if m.ID != ids[i] || string(m.Data) != strconv.Itoa(i) {
					t.Fatalf("message %d: got id %d data %s, want id %d data %d", i, m.ID, m.Data, ids[i], i)
				}
			}
			for i := 1; i < len(ids); i++ {
				if ids[i] <= ids[i-1] {
					t.Fatalf("ids not increasing: %d then %d", ids[i-1], ids[i])
				}
			}
		})
	}
	testutil.CheckFor(t, 3*time.Second, func() error {
		st := s.MustStats()
		if out := st.Workers[0].MessagesOut + st.Workers[1].MessagesOut; st.Manager.Published < 500 || out < 500 {
			return fmt.Errorf("stats count %d published, %d delivered", st.Manager.Published, out)
		}
		return nil
	})
}

func startPollerSince(t *testing.T, addr, path string, since uint64) *poller {
	return startPollerAt(t, addr, path, since)
}

// A client that comes back with its cursor gets exactly what it missed,
// in order, then live messages: nothing lost, nothing twice.
func TestReplayAfterDisconnect(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			id := "r-" + tr.name
			first := tr.open(t, s.Listen, id, "?channels=rc-"+tr.name, 0)
			last := waitLive(t, s.API, first, id)
			closeReceiver(first)

			var missed []uint64
			missed = append(missed, publish(t, s.API, `{"to":"`+id+`","data":"m1"}`)...)
			missed = append(missed, publish(t, s.API, `{"channel":"rc-`+tr.name+`","data":"m2"}`)...)
			missed = append(missed, publish(t, s.API, `{"broadcast":true,"data":"m3"}`)...)
			missed = append(missed, publish(t, s.API, `[{"to":"`+id+`","data":"m4"},{"to":["x","`+id+`"],"data":"m5"}]`)...)

			again := tr.open(t, s.Listen, id, "?channels=rc-"+tr.name, last)
			for i, want := range missed {
				m := next(t, again, 5*time.Second)
				if m.ID != want || dataString(m) != fmt.Sprintf("m%d", i+1) {
					t.Fatalf("replay %d: got %d %s, want %d m%d", i, m.ID, m.Data, want, i+1)
				}
			}
			live := publish(t, s.API, `{"to":"`+id+`","data":"m6"}`)[0]
			if m := next(t, again, 5*time.Second); m.ID != live {
				t.Fatalf("after replay: got %d %s, want live %d", m.ID, m.Data, live)
			}
			if m, ok := again.tryNext(300 * time.Millisecond); ok {
				t.Fatalf("duplicate or stray message %d %s", m.ID, m.Data)
			}
		})
	}
}

func closeReceiver(r receiver) {
	switch c := r.(type) {
	case *streamClient:
		c.close()
	case *poller:
		c.halt()
	}
}

// A long-poll client polling in a loop while messages are published as
// fast as possible receives every message exactly once, in order.
func TestLongPollLoopGetsEveryMessageOnce(t *testing.T) {
	// More history than the default 100: between two polls a long-poll
	// client is not subscribed, and what is published meanwhile reaches it
	// only through its id's history. Four publishers flat out put up to 55
	// messages into one such gap here (race-built, both cores busy), so on
	// a machine twice as slow the default would drop some: this test is
	// about the poll loop, not retention (TestDefaultHistoryKeepsTheLast100
	// is about that).
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": "history_size = 100000"})
	p := startPollerAt(t, s.Listen, "/lp/looper", 0)
	waitLive(t, s.API, p, "looper")

	const publishers, each = 4, 500
	type result struct {
		ids []uint64
		err error
	}
	results := make(chan result, publishers)
	for g := 0; g < publishers; g++ {
		go func() {
			var r result
			for i := 0; i < each; i++ {
				body := fmt.Sprintf(`{"to":"looper","data":%d}`, g*each+i)
				if i%10 == 0 {
					body = "[" + body + "," + body + "]" // batches too
				}
				ids, err := tryPublish(s.API, body)
				if err != nil {
					r.err = err
					break
				}
				r.ids = append(r.ids, ids...)
			}
			results <- r
		}()
	}
	want := map[uint64]bool{}
	for g := 0; g < publishers; g++ {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		for _, id := range r.ids {
			want[id] = true
		}
	}
	got := map[uint64]int{}
	var prev uint64
	for len(got) < len(want) {
		m := next(t, p, 10*time.Second)
		if m.ID <= prev {
			t.Fatalf("id %d after %d: out of order or duplicate", m.ID, prev)
		}
		prev = m.ID
		if !want[m.ID] {
			t.Fatalf("unexpected id %d", m.ID)
		}
		got[m.ID]++
	}
	if m, ok := p.tryNext(300 * time.Millisecond); ok {
		t.Fatalf("extra message %d", m.ID)
	}
	t.Logf("%d messages, each received once", len(got))
}

// With the default comet.history_size a client id keeps its last 100
// messages for replay: a client that comes with since=0 after 150 were
// published to it is told of the gap, gets the last 100, oldest first, and
// then live ones.
func TestDefaultHistoryKeepsTheLast100(t *testing.T) {
	const size = 100 // the default etc/megacomet.toml documents
	if d := config.Default().Comet.HistorySize; d != size {
		t.Fatalf("default comet.history_size is %d, etc/megacomet.toml says %d", d, size)
	}
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	var sent []msg // what was published to the id, oldest first
	for i := 0; i < size+50; i++ {
		data := strconv.Itoa(i)
		id := publish(t, s.API, `{"to":"kept","data":`+data+`}`)[0]
		sent = append(sent, msg{ID: id, Data: []byte(data)})
	}
	check := func(what string, got []msg) {
		t.Helper()
		kept := sent[len(sent)-size:]
		if len(got) == 0 || got[0].Gap == nil || got[0].Gap.After != 0 || got[0].Gap.Before != kept[0].ID {
			t.Fatalf("%s: first %+v, want the gap {after 0, before %d}", what, got[:min(1, len(got))], kept[0].ID)
		}
		got = got[1:]
		if len(got) != len(kept) {
			t.Fatalf("%s: %d messages replayed, want the last %d of %d: %s", what, len(got), size, len(sent), fmtIDs(got))
		}
		for i, m := range got {
			if m.ID != kept[i].ID || string(m.Data) != string(kept[i].Data) {
				t.Fatalf("%s: replay %d is %d %s, want %d %s", what, i, m.ID, m.Data, kept[i].ID, kept[i].Data)
			}
		}
	}

	cl := &http.Client{Timeout: time.Minute}
	check("long-poll", poll(t, cl, s.Listen, "/lp/kept?since=0"))
	for _, path := range []string{"/sse/kept?since=0", "/stream/kept?since=0"} {
		c := openStream(t, s.Listen, path)
		var got []msg
		for range size + 1 { // the gap, then the messages
			got = append(got, *next(t, c, 5*time.Second))
		}
		check(path, got)
		live := publish(t, s.API, `{"to":"kept","data":"live"}`)[0]
		if m := next(t, c, 5*time.Second); m.ID != live {
			t.Fatalf("%s: after the replay got %d %s, want the live %d", path, m.ID, m.Data, live)
		}
		sent = append(sent, msg{ID: live, Data: []byte(`"live"`)})
		c.close()
	}
}

func TestHeartbeatsArrive(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": `heartbeat = "200ms"`})
	for _, path := range []string{"/sse/hb", "/stream/hb"} {
		c := openStream(t, s.Listen, path)
		beats := 0
		deadline := time.After(3 * time.Second)
		for beats < 3 {
			select {
			case ev := <-c.events:
				if ev.heartbeat {
					beats++
				}
			case <-deadline:
				t.Fatalf("%s: %d heartbeats in 3s, heartbeat = 200ms", path, beats)
			}
		}
	}
	testutil.CheckFor(t, 3*time.Second, func() error {
		if hb := s.MustStats().Workers[0].Heartbeats; hb < 6 {
			return fmt.Errorf("stats count %d heartbeats", hb)
		}
		return nil
	})
}

func TestLongPollTimesOutEmpty(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": `poll_timeout = "300ms"`})
	cl := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	if ms := poll(t, cl, s.Listen, "/lp/nobody"); len(ms) != 0 {
		t.Errorf("got %v", ms)
	}
	if ms := poll(t, cl, s.Listen, "/nobody.js?callback=handle"); len(ms) != 0 {
		t.Errorf("jsonp: got %v", ms)
	}
	// Timers run on 10 ms ticks: allow one tick each.
	if d := time.Since(start); d < 580*time.Millisecond {
		t.Errorf("two polls answered after %s: not held for poll_timeout", d)
	}
}
