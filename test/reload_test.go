package test

import (
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// resilient is an SSE client that behaves like a browser's EventSource: it
// reconnects whenever its stream ends, resuming with Last-Event-ID - at once
// when the server announced the end, after reconnectDelay when the stream
// just died.
type resilient struct {
	id         string
	mu         sync.Mutex
	last       uint64
	got        map[uint64]int
	announced  int // ends the server announced (reconnect hint)
	unexpected int // any other end
	failed     int // connection attempts that failed
	stop       chan struct{}
	done       chan struct{}
}

// reconnectDelay is how long a resilient client waits after its stream
// died unannounced. EventSource waits the stream's retry (2000 ms); a tenth
// of it keeps tests short and still lets messages be published while the
// client is away, which only its cursor brings back.
const reconnectDelay = 200 * time.Millisecond

func startResilient(t *testing.T, s *testutil.Server, id string) *resilient {
	r := &resilient{id: id, got: map[uint64]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go r.run(t, s)
	t.Cleanup(r.halt)
	return r
}

// startResilients starts n resilient clients with ids prefix0…, and waits
// until the manager routes to every one.
func startResilients(t *testing.T, s *testutil.Server, prefix string, n int) ([]*resilient, []string) {
	t.Helper()
	var clients []*resilient
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		ids = append(ids, id)
		clients = append(clients, startResilient(t, s, id))
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		if st := s.MustStats(); st.IDs != n {
			return fmt.Errorf("%d of %d clients subscribed", st.IDs, n)
		}
		return nil
	})
	return clients, ids
}

func (r *resilient) halt() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

func (r *resilient) run(t *testing.T, s *testutil.Server) {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		r.mu.Lock()
		var h []string
		if r.last > 0 {
			h = []string{"Last-Event-ID", strconv.FormatUint(r.last, 10)}
		}
		r.mu.Unlock()
		c, err := dialStream(t, s.Listen, "/sse/"+r.id, h...)
		if err != nil {
			r.mu.Lock()
			r.failed++
			r.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			continue
		}
	read:
		for {
			select {
			case ev := <-c.events:
				r.mu.Lock()
				if ev.msg != nil {
					r.got[ev.msg.ID]++
					r.last = ev.msg.ID
				}
				r.last = max(r.last, ev.cursor) // the stream's starting cursor
				r.mu.Unlock()
			case <-c.done:
				for len(c.events) > 0 { // what arrived before the end
					if ev := <-c.events; ev.msg != nil {
						r.mu.Lock()
						r.got[ev.msg.ID]++
						r.last = ev.msg.ID
						r.mu.Unlock()
					}
				}
				r.mu.Lock()
				hinted := c.hints
				if hinted {
					r.announced++
				} else {
					r.unexpected++
				}
				r.mu.Unlock()
				c.close()
				if !hinted {
					select {
					case <-time.After(reconnectDelay):
					case <-r.stop:
						return
					}
				}
				break read
			case <-r.stop:
				c.close()
				return
			}
		}
	}
}

// publisher publishes to a set of ids until stopped and remembers which
// message went to which id.
type publisher struct {
	mu   sync.Mutex
	sent map[string][]uint64
	n    int // messages published
	errs atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func startPublisher(t *testing.T, api string, ids []string, every time.Duration) *publisher {
	p := &publisher{sent: map[string][]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		rnd := rand.New(rand.NewSource(1))
		for n := 0; ; n++ {
			select {
			case <-p.stop:
				return
			case <-time.After(every):
			}
			a, b := ids[rnd.Intn(len(ids))], ids[rnd.Intn(len(ids))]
			body := fmt.Sprintf(`[{"to":"%s","data":%d},{"to":"%s","data":%d}]`, a, n, b, n)
			// A reload closes idle keep-alive API connections; a request
			// sent on one just then was never read. With an
			// Idempotency-Key, Go's client retries it on a new connection.
			out, err := tryPublish(api, body, "Idempotency-Key", strconv.Itoa(n))
			if err == nil && len(out) != 2 {
				err = fmt.Errorf("publish %s: %d ids, want 2", body, len(out))
			}
			if err != nil {
				p.errs.Add(1)
				t.Errorf("publishing: %v", err)
				continue
			}
			p.mu.Lock()
			p.sent[a] = append(p.sent[a], out[0])
			p.sent[b] = append(p.sent[b], out[1])
			p.n += 2
			p.mu.Unlock()
		}
	}()
	t.Cleanup(p.halt) // also when the test fails first: it logs to t
	return p
}

func (p *publisher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// published is how many messages have been published so far.
func (p *publisher) published() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// sentCounts is how many messages have been sent to each id so far.
func (p *publisher) sentCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := make(map[string]int, len(p.sent))
	for id, s := range p.sent {
		c[id] = len(s)
	}
	return c
}

// waitSentToEach waits until every one of ids has been sent more messages
// than before (a sentCounts snapshot; nil for none), so each is tested.
func (p *publisher) waitSentToEach(t *testing.T, ids []string, before map[string]int, wait time.Duration) {
	t.Helper()
	testutil.CheckFor(t, wait, func() error {
		now := p.sentCounts()
		var waiting []string
		for _, id := range ids {
			if now[id] <= before[id] {
				waiting = append(waiting, id)
			}
		}
		if len(waiting) > 0 {
			return fmt.Errorf("%d of %d clients not sent a message yet (%d published): %s", len(waiting), len(ids), p.published(), strings.Join(waiting, " "))
		}
		return nil
	})
}

// checkExactlyOnce waits until every client has every message sent to it
// and fails on a duplicate or a stranger. It also fails when a client was
// sent nothing: for that client the check would pass however broken
// delivery were.
func checkExactlyOnce(t *testing.T, clients []*resilient, p *publisher, wait time.Duration) {
	t.Helper()
	p.mu.Lock()
	sent := make(map[string][]uint64, len(p.sent))
	for id, s := range p.sent {
		sent[id] = s
	}
	p.mu.Unlock()
	// received counts the messages sent but not received (yet), and names
	// each client that lacks some with how many of its own it has.
	received := func() (missing int, counts []string) {
		for _, c := range clients {
			c.mu.Lock()
			has := 0
			for _, id := range sent[c.id] {
				if c.got[id] > 0 {
					has++
				}
			}
			c.mu.Unlock()
			missing += len(sent[c.id]) - has
			if has < len(sent[c.id]) {
				counts = append(counts, fmt.Sprintf("%s got %d of %d", c.id, has, len(sent[c.id])))
			}
		}
		return missing, counts
	}
	total := 0
	for _, c := range clients {
		total += len(sent[c.id])
	}
	if total == 0 {
		t.Fatalf("the publisher sent nothing to %d clients (%d publishes failed)", len(clients), p.errs.Load())
	}
	for _, c := range clients {
		if len(sent[c.id]) == 0 {
			t.Errorf("%s was sent nothing, so its delivery is untested", c.id)
		}
	}
	testutil.CheckFor(t, wait, func() error {
		if missing, counts := received(); missing > 0 {
			return fmt.Errorf("%d published messages not received: %s", missing, strings.Join(counts, ", "))
		}
		return nil
	})
	got := 0
	for _, c := range clients {
		c.mu.Lock()
		want := map[uint64]bool{}
		for _, id := range sent[c.id] {
			want[id] = true
		}
		for id, n := range c.got {
			if n > 1 {
				t.Errorf("%s received %d %d times", c.id, id, n)
			}
			if !want[id] {
				t.Errorf("%s received %d, which was not sent to it", c.id, id)
			}
		}
		got += len(c.got)
		c.mu.Unlock()
	}
	t.Logf("%d clients received %d messages, each exactly once", len(clients), got)
}

func TestReloadTwiceLosesNothing(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1500ms\""})
	first := s.MustStats()

	const n = 100
	clients, ids := startResilients(t, s, "rl", n)
	pub := startPublisher(t, s.API, ids, 2*time.Millisecond)

	// Two reloads back to back: the second arrives while the first one's
	// workers drain; it is queued until the first manager has gone.
	s.Signal(syscall.SIGHUP)
	second := waitGeneration(t, s, 2, 0, 0, 20*time.Second)
	syscall.Kill(second.Manager.PID, syscall.SIGHUP)
	third := waitGeneration(t, s, 3, 2, n, 30*time.Second)
	// Keep publishing until the new generation has had a message for
	// every client.
	pub.waitSentToEach(t, ids, pub.sentCounts(), 30*time.Second)
	pub.halt()
	checkExactlyOnce(t, clients, pub, 15*time.Second)

	for _, c := range clients {
		c.mu.Lock()
		if c.unexpected != 0 || c.failed != 0 {
			t.Errorf("%s: %d unexpected closes, %d failed connects", c.id, c.unexpected, c.failed)
		}
		if c.announced < 1 {
			t.Errorf("%s was never handed over", c.id)
		}
		c.mu.Unlock()
	}
	// The old managers and workers are gone; stats name the new ones.
	waitGone(t, first, second)
	if pid := s.ManagerPID(); pid != third.Manager.PID || statsCLI(t, s).Manager.PID != pid {
		t.Errorf("pid file names %d, stats %d", pid, third.Manager.PID)
	}
	if pub.errs.Load() != 0 {
		t.Errorf("%d publishes failed during the reloads", pub.errs.Load())
	}
}

// waitGeneration waits until the live manager is of generation gen and,
// when workers > 0, has that many workers, all of generation gen and ready,
// holding conns connections between them.
func waitGeneration(t *testing.T, s *testutil.Server, gen uint64, workers int, conns uint64, wait time.Duration) manager.Stats {
	t.Helper()
	return s.WaitStats(t, wait, func(st manager.Stats) error {
		if st.Generation != gen {
			return fmt.Errorf("generation %d, want %d", st.Generation, gen)
		}
		if workers == 0 {
			return nil
		}
		if len(st.Workers) != workers || st.Connections != conns {
			return fmt.Errorf("%d workers, %d connections", len(st.Workers), st.Connections)
		}
		for _, w := range st.Workers {
			if w.Generation != gen || w.State != "ready" {
				return fmt.Errorf("worker %d: generation %d %s", w.PID, w.Generation, w.State)
			}
		}
		return nil
	})
}

// waitGone waits until every manager and worker named in these stats has
// exited.
func waitGone(t *testing.T, old ...manager.Stats) {
	t.Helper()
	var pids []int
	for _, st := range old {
		pids = append(pids, st.Manager.PID)
		for _, w := range st.Workers {
			pids = append(pids, w.PID)
		}
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		for _, pid := range pids {
			if testutil.PIDAlive(pid) {
				return fmt.Errorf("pid %d of an old generation is still running", pid)
			}
		}
		return nil
	})
}

// A config error on reload keeps the running processes serving and says
// why; once the file is fixed, the reload goes through.
func TestReloadWithBadConfigKeepsServing(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1"})
	c := openStream(t, s.Listen, "/sse/steady")
	waitLive(t, s.API, c, "steady")
	good, err := os.ReadFile(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.Config, append(good, "[comet]\nheartbeat = \"soon\"\n"...), 0o644)
	s.Signal(syscall.SIGHUP)
	testutil.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(s.Log.String(), "reload failed; still serving") || !strings.Contains(s.Log.String(), "comet.heartbeat") {
			return fmt.Errorf("no reload error in the log")
		}
		return nil
	})
	if st := s.MustStats(); st.Generation != 1 || st.Manager.PID != s.Cmd.Process.Pid {
		t.Errorf("after a refused reload: generation %d, manager %d", st.Generation, st.Manager.PID)
	}
	id := publish(t, s.API, `{"to":"steady","data":"still"}`)[0]
	if m := next(t, c, 5*time.Second); m.ID != id {
		t.Errorf("got %d", m.ID)
	}
	os.WriteFile(s.Config, good, 0o644)
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 0, 0, 20*time.Second)
}

// A worker killed with SIGKILL is replaced; its clients reconnect with
// their cursor and miss nothing.
func TestWorkerKillLosesNothing(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	const n = 60
	clients, ids := startResilients(t, s, "wk", n)
	pub := startPublisher(t, s.API, ids, 2*time.Millisecond)
	var before manager.Stats
	testutil.CheckFor(t, 5*time.Second, func() error {
		if before = s.MustStats(); before.Connections != n {
			return fmt.Errorf("workers report %d of %d connections", before.Connections, n)
		}
		return nil
	})
	victim := before.Workers[0]
	if victim.Connections == 0 {
		victim = before.Workers[1]
	}
	// Every client has been sent something before the kill, and messages
	// are in flight when it comes.
	pub.waitSentToEach(t, ids, nil, 30*time.Second)
	syscall.Kill(victim.PID, syscall.SIGKILL)
	testutil.CheckFor(t, 10*time.Second, func() error {
		st := s.MustStats()
		if w := st.Workers[victim.Slot]; w.PID == victim.PID || w.State != "ready" || st.Connections != n {
			return fmt.Errorf("slot %d pid %d %s, %d connections", victim.Slot, w.PID, w.State, st.Connections)
		}
		return nil
	})
	// And every client is sent more once all are back.
	pub.waitSentToEach(t, ids, pub.sentCounts(), 30*time.Second)
	pub.halt()
	if pub.errs.Load() != 0 {
		t.Errorf("%d publishes failed while a worker was killed", pub.errs.Load())
	}
	checkExactlyOnce(t, clients, pub, 15*time.Second)
	unexpected := 0
	for _, c := range clients {
		c.mu.Lock()
		unexpected += c.unexpected
		c.mu.Unlock()
	}
	// The killed worker's clients saw their connections die (nobody could
	// announce it); they came back with their cursor.
	if unexpected != int(victim.Connections) {
		t.Errorf("%d unexpected closes, want the %d connections the killed worker held", unexpected, victim.Connections)
	}
}

// A publish with an Idempotency-Key can be resent safely, also across a
// reload: the repeat gets the first answer's ids and publishes nothing.
func TestIdempotentPublishAcrossReload(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1"})
	key := []string{"Idempotency-Key", "order-42"}
	body := `{"broadcast":true,"data":"once"}`
	first := publish(t, s.API, body, key...)
	if again := publish(t, s.API, body, key...); again[0] != first[0] {
		t.Errorf("repeat got id %d, first %d", again[0], first[0])
	}
	if status, resp := post(t, s.API, `{"broadcast":true,"data":"other"}`, key...); status != 422 || !strings.Contains(resp, "Idempotency-Key") {
		t.Errorf("same key, other body: %d %s", status, resp)
	}
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 0, 0, 20*time.Second)
	if again := publish(t, s.API, body, key...); again[0] != first[0] {
		t.Errorf("after the reload a repeat got id %d, first %d", again[0], first[0])
	}
	if st := s.MustStats(); st.Manager.Published != 1 {
		t.Errorf("published %d, want 1", st.Manager.Published)
	}
}
