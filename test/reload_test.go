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
// reconnects whenever its stream ends, resuming with Last-Event-ID.
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
				if c.hints {
					r.announced++
				} else {
					r.unexpected++
				}
				r.mu.Unlock()
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
			status, resp := post(t, api, body, "Idempotency-Key", strconv.Itoa(n))
			if status != 200 {
				p.errs.Add(1)
				t.Errorf("publish during reload: %d %s", status, resp)
				continue
			}
			var out []struct{ ID uint64 }
			if err := jsonUnmarshal(resp, &out); err != nil || len(out) != 2 {
				t.Errorf("publish answer %s", resp)
				continue
			}
			p.mu.Lock()
			p.sent[a] = append(p.sent[a], out[0].ID)
			p.sent[b] = append(p.sent[b], out[1].ID)
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *publisher) halt() {
	close(p.stop)
	<-p.done
}

// checkExactlyOnce waits until every client has every message sent to it
// and fails on a duplicate or a stranger.
func checkExactlyOnce(t *testing.T, clients []*resilient, p *publisher, wait time.Duration) {
	t.Helper()
	testutil.CheckFor(t, wait, func() error {
		missing := 0
		for _, c := range clients {
			c.mu.Lock()
			for _, id := range p.sent[c.id] {
				if c.got[id] == 0 {
					missing++
				}
			}
			c.mu.Unlock()
		}
		if missing > 0 {
			return fmt.Errorf("%d published messages not received", missing)
		}
		return nil
	})
	total := 0
	for _, c := range clients {
		c.mu.Lock()
		want := map[uint64]bool{}
		for _, id := range p.sent[c.id] {
			want[id] = true
		}
		for id, n := range c.got {
			if n > 1 {
				t.Errorf("%s received %d twice... %d times", c.id, id, n)
			}
			if !want[id] {
				t.Errorf("%s received %d, which was not sent to it", c.id, id)
			}
		}
		total += len(c.got)
		c.mu.Unlock()
	}
	t.Logf("%d clients received %d messages, each exactly once", len(clients), total)
}

func TestReloadTwiceLosesNothing(t *testing.T) {
	restore := enableMigrateReq(t)
	defer restore()
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
	time.Sleep(200 * time.Millisecond) // keep publishing to the new generation a little
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
	var st manager.Stats
	testutil.CheckFor(t, wait, func() error {
		var err error
		if st, err = s.Stats(); err != nil {
			return err
		}
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
	return st
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

// enableMigrateReq sets net.ipv4.tcp_migrate_req = 1, as
// etc/sysctl.d/60-megacomet.conf does, so connections queued on a worker
// that stops accepting move to another; the previous value is restored.
func enableMigrateReq(t *testing.T) func() {
	const path = "/proc/sys/net/ipv4/tcp_migrate_req"
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("tcp_migrate_req: %v", err)
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		t.Fatalf("set net.ipv4.tcp_migrate_req=1 (needs root): %v", err)
	}
	return func() { os.WriteFile(path, old, 0o644) }
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
	restore := enableMigrateReq(t)
	defer restore()
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
	time.Sleep(100 * time.Millisecond) // publish a little first
	syscall.Kill(victim.PID, syscall.SIGKILL)
	testutil.CheckFor(t, 10*time.Second, func() error {
		st := s.MustStats()
		if w := st.Workers[victim.Slot]; w.PID == victim.PID || w.State != "ready" || st.Connections != n {
			return fmt.Errorf("slot %d pid %d %s, %d connections", victim.Slot, w.PID, w.State, st.Connections)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	pub.halt()
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
