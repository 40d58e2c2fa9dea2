package test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
)

// Events (hooks.events): an application of the test's own (an httptest
// server) checks each batch's signature with its own HMAC, takes a batch
// again as the server may send it again, and checks that the sequence
// numbers follow each other. The tests compare what it was told with what
// the clients did.

const eventSecret = "a secret of the test's own, 32 b"

// appEvent is one event as the application reads it.
type appEvent struct {
	Seq      uint64              `json:"seq"`
	Type     string              `json:"type"`
	Time     int64               `json:"time"`
	ID       string              `json:"id"`
	Channel  string              `json:"channel"`
	Reason   string              `json:"reason"`
	Count    uint64              `json:"count"`
	Message  uint64              `json:"message"`
	Data     json.RawMessage     `json:"data"`
	IDs      []string            `json:"ids"`
	Channels []string            `json:"channels"`
	Members  map[string][]string `json:"members"`
}

func (e appEvent) String() string {
	s := e.Type + " " + e.ID + e.Channel
	if e.Type == "join" || e.Type == "leave" || e.Type == "publish" {
		s = e.Type + " " + e.Channel + "/" + e.ID
	}
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	return s
}

// eventApp is the application told the events.
type eventApp struct {
	url string
	mu  sync.Mutex
	got []appEvent
	raw map[uint64]string // seq → the event as first sent, to compare a repeat with
	// errs are what it found wrong; refuse makes it answer 503 to that
	// many batches (the application is down); batches counts requests.
	errs             []string
	refuse, batches  int
	repeats, refused int
}

func startEventApp(t *testing.T) *eventApp {
	a := &eventApp{raw: map[uint64]string{}}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(srv.Close)
	a.url = srv.URL + "/events"
	return a
}

func (a *eventApp) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	mac := hmac.New(sha256.New, []byte(eventSecret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	a.mu.Lock()
	defer a.mu.Unlock()
	a.batches++
	if got := r.Header.Get("X-Megacomet-Signature"); !hmac.Equal([]byte(got), []byte(want)) {
		a.errs = append(a.errs, fmt.Sprintf("signature %q, want %q", got, want))
		http.Error(w, "bad signature", 401)
		return
	}
	if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json" {
		a.errs = append(a.errs, fmt.Sprintf("%s with Content-Type %q", r.Method, r.Header.Get("Content-Type")))
	}
	if a.refuse > 0 {
		a.refuse--
		a.refused++
		http.Error(w, "down for a moment", 503)
		return
	}
	var b struct{ Events []json.RawMessage }
	if err := json.Unmarshal(body, &b); err != nil || len(b.Events) == 0 {
		a.errs = append(a.errs, fmt.Sprintf("batch %q: %v", body, err))
		return
	}
	for _, raw := range b.Events {
		var e appEvent
		if err := json.Unmarshal(raw, &e); err != nil || e.Seq == 0 || e.Type == "" || e.Time == 0 {
			a.errs = append(a.errs, fmt.Sprintf("event %s: %v", raw, err))
			continue
		}
		if first, seen := a.raw[e.Seq]; seen {
			a.repeats++
			if first != string(raw) {
				a.errs = append(a.errs, fmt.Sprintf("seq %d sent as %s, then as %s", e.Seq, first, raw))
			}
			continue
		}
		if last := uint64(len(a.got)); e.Seq != last+1 {
			a.errs = append(a.errs, fmt.Sprintf("seq %d after %d", e.Seq, last))
		}
		a.raw[e.Seq] = string(raw)
		a.got = append(a.got, e)
	}
	w.WriteHeader(204)
}

// events is what the application has been told, in order.
func (a *eventApp) events() []appEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// check fails t with what the application found wrong.
func (a *eventApp) check(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.errs {
		t.Error(e)
	}
}

// waitFor waits until the events told, from the snapshot on, as strings,
// include want in that order (others may come between).
func (a *eventApp) waitFor(t *testing.T, want ...string) {
	t.Helper()
	testutil.CheckFor(t, time.Minute, func() error {
		got := a.events()
		i := 0
		for _, e := range got {
			if i < len(want) && e.String() == want[i] {
				i++
			}
		}
		if i < len(want) {
			return fmt.Errorf("waiting for %q; told %v", want[i], got)
		}
		return nil
	})
}

func eventServer(t *testing.T, a *eventApp, workers int, linger string) *testutil.Server {
	return testutil.Start(t, map[string]string{
		"server": fmt.Sprintf("workers = %d\ndrain = \"1s\"", workers),
		"comet":  "presence_events = [\"room\"]\nclient_publish = true",
		"hooks": fmt.Sprintf("events = %q\nsecret = %q\nevents_linger = %q\nevents_publish = true",
			a.url, eventSecret, linger),
	})
}

// What each client does is told once, in order: connect, occupied, join;
// a client publish; then leave, vacated and disconnect with why. The
// batches are signed, numbered from 1 (a fresh start's snapshot) and
// retried while the application is down.
func TestEventsTellWhatHappened(t *testing.T) {
	a := startEventApp(t)
	s := eventServer(t, a, 2, "300ms")
	a.waitFor(t, "snapshot ")
	a.mu.Lock()
	first := a.raw[1]
	a.mu.Unlock()
	if e := a.events()[0]; e.Seq != 1 || !strings.Contains(first, `"ids":[],"channels":[],"members":{}`) {
		t.Errorf("a fresh start opens with %s, want an empty snapshot", first)
	}

	_, sse := cometGET(t, s.Listen, "/sse/alice?channels=room,news")
	a.waitFor(t, "connect alice", "occupied room", "join room/alice", "occupied news")

	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/bob?channels=room")
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "connect bob", "join room/bob")
	wsutil.WriteClientText(c, []byte(`{"publish":"room","data":{"text":"hi"}}`))
	a.waitFor(t, "publish room/bob")
	if e := a.events(); !strings.Contains(string(e[len(e)-1].Data), `"text":"hi"`) || e[len(e)-1].Message == 0 {
		t.Errorf("publish event %+v: want its data and message id", e[len(e)-1])
	}

	// The application goes down for three batches: they come again.
	a.mu.Lock()
	a.refuse = 3
	a.mu.Unlock()
	sse.Close()
	a.waitFor(t, "leave room/alice", "vacated news", "disconnect alice (closed)")
	c.Close()
	a.waitFor(t, "leave room/bob", "vacated room", "disconnect bob (closed)")
	a.mu.Lock()
	refused := a.refused
	a.mu.Unlock()
	if refused != 3 {
		t.Errorf("the application refused %d batches, want 3", refused)
	}
	// Nobody connects twice in a row; occupied comes before vacated.
	checkAlternate(t, a.events())
	st := statsCLI(t, s)
	if st.Events == nil || st.Events.Sent != uint64(len(a.events())) || st.Events.Failed < 3 || st.Events.Queued != 0 {
		t.Errorf("stats events %+v; the application has %d", st.Events, len(a.events()))
	}
	if _, m, _ := get(t, "http://"+s.API+"/metrics"); !strings.Contains(m, "megacomet_events_sent_total ") || !strings.Contains(m, "megacomet_events_delay_seconds_bucket") {
		t.Errorf("/metrics lacks the events")
	}
	feed, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + s.API + "/status/events") // the status page's
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Body.Close()
	if err := readUntil(feed.Body, `"events":{"queued":`); err != nil {
		t.Errorf("the status page is not told the events: %v", err)
	}
	a.check(t)
}

// checkAlternate checks that each id's connects and disconnects, each
// channel's occupied and vacated and each member's joins and leaves
// alternate, starting with the first.
func checkAlternate(t *testing.T, evs []appEvent) map[string]bool {
	t.Helper()
	up := map[string]bool{}
	pairs := map[string]string{"disconnect": "connect", "vacated": "occupied", "leave": "join"}
	for _, e := range evs {
		var key string
		switch e.Type {
		case "connect", "disconnect":
			key = "id " + e.ID
		case "occupied", "vacated":
			key = "channel " + e.Channel
		case "join", "leave":
			key = "member " + e.Channel + "/" + e.ID
		default:
			continue
		}
		_, down := pairs[e.Type]
		if up[key] != down {
			t.Errorf("seq %d: %s, but %s was %s", e.Seq, e, key, map[bool]string{true: "up", false: "down"}[up[key]])
		}
		up[key] = !down
	}
	return up
}

// Across a reload and a worker killed, with megatest's 300 clients
// connected and publishing: each client's connect is told once and its
// disconnect once, when megatest stops, nothing in between; the batches
// numbered on across the reload.
func TestEventsAcrossReloadAndWorkerKill(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	a := startEventApp(t)
	// A client of the killed worker reconnects well within the linger,
	// even on a slow machine: it never left.
	s := eventServer(t, a, 2, "6s")
	const n = 300
	load := runMegatest(t, s, "e", "-n", fmt.Sprint(n), "-channels", "3", "-pub", "100")
	waitHeld(t, s, n, 3*time.Minute)
	load.waitMessages(t, 100)
	countUp := func() (ids, chans int) {
		for k, v := range checkAlternate(t, a.events()) {
			if v && strings.HasPrefix(k, "id ") {
				ids++
			} else if v {
				chans++
			}
		}
		return
	}
	testutil.CheckFor(t, time.Minute, func() error {
		if ids, chans := countUp(); ids != n || chans != 3 {
			return fmt.Errorf("told %d ids and %d channels up", ids, chans)
		}
		return nil
	})

	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, n, 3*time.Minute)
	st := waitHeld(t, s, n, 3*time.Minute)
	victim := st.Workers[0]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	waitReplaced(t, s, victim, n)
	_, sum := load.stop(t, 2*time.Minute)
	if sum.Lost != 0 || sum.Duplicates != 0 {
		t.Errorf("megatest: lost %d, duplicates %d", sum.Lost, sum.Duplicates)
	}
	testutil.CheckFor(t, 2*time.Minute, func() error {
		if ids, chans := countUp(); ids != 0 || chans != 0 {
			return fmt.Errorf("still %d ids and %d channels up", ids, chans)
		}
		return nil
	})
	count := map[string]int{}
	for _, e := range a.events() {
		count[e.Type]++
		if e.Type == "disconnect" && e.Reason != "closed" {
			t.Errorf("%s: megatest closed it", e)
		}
	}
	if count["connect"] != n || count["disconnect"] != n || count["occupied"] != 3 || count["vacated"] != 3 {
		t.Errorf("told %v; want each of the %d clients to connect and disconnect once, 3 channels", count, n)
	}
	a.check(t)
}

// A worker killed while its clients are gone for good: their disconnects
// say worker_lost.
func TestEventsWorkerLost(t *testing.T) {
	a := startEventApp(t)
	s := eventServer(t, a, 1, "300ms")
	for _, id := range []string{"w1", "w2"} {
		cometGET(t, s.Listen, "/sse/"+id+"?channels=room")
	}
	a.waitFor(t, "connect w1", "connect w2")
	pid := statsCLI(t, s).Workers[0].PID
	syscall.Kill(pid, syscall.SIGKILL)
	a.waitFor(t, "leave room/w1", "vacated room", "disconnect w1 (worker_lost)")
	a.waitFor(t, "leave room/w2", "vacated room", "disconnect w2 (worker_lost)")
	checkAlternate(t, a.events())
	a.check(t)
}
