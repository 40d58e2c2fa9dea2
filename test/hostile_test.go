package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// publishMany publishes n messages of size bytes of data each, to one
// target ("to":"id", "channel":"c" or "broadcast":true), in batches the
// API takes, and returns their ids.
func publishMany(t *testing.T, api, target string, n, size int) []uint64 {
	t.Helper()
	data := `"` + strings.Repeat("x", size) + `"`
	var ids []uint64
	per := max(1, (12<<20)/(size+64))
	for n > 0 {
		k := min(n, per)
		items := make([]string, k)
		for i := range items {
			items[i] = `{` + target + `,"data":` + data + `}`
		}
		ids = append(ids, publish(t, api, "["+strings.Join(items, ",")+"]")...)
		n -= k
	}
	return ids
}

// bystanders opens n SSE streams (on both workers, as the kernel spreads
// them) that must not notice what another client does.
func bystanders(t *testing.T, s *testutil.Server, n int) []*streamClient {
	var cs []*streamClient
	for i := range n {
		c := openStream(t, s.Listen, fmt.Sprintf("/sse/by%d", i))
		waitLive(t, s.API, c, fmt.Sprintf("by%d", i))
		cs = append(cs, c)
	}
	return cs
}

// unharmed checks that every bystander still has its first stream and
// gets a message on it, and that no worker restarted.
func unharmed(t *testing.T, s *testutil.Server, cs []*streamClient) {
	t.Helper()
	for i, c := range cs {
		id := publish(t, s.API, fmt.Sprintf(`{"to":"by%d","data":"after"}`, i))[0]
		for {
			m, ok := c.tryNext(30 * time.Second)
			if !ok {
				t.Fatalf("bystander by%d: no message after the attack (its stream ended: %v)", i, c.hints)
			}
			if m.ID == id {
				break
			}
		}
		if c.hints {
			t.Errorf("bystander by%d was handed off: its worker drained", i)
		}
	}
	for _, w := range s.MustStats().Workers {
		if w.Restarts != 0 {
			t.Errorf("worker %d restarted %d times", w.Slot, w.Restarts)
		}
	}
}

// A replay bomb: one join asks for everything its id, 16 channels and the
// broadcasts retain - 18 rings of 100 messages of 100 KiB, 180 MiB, past
// what one IPC frame may carry. It gets the newest comet.max_replay (100)
// after a gap announcement naming the oldest it gets, in order, nothing
// twice; the worker's other clients notice nothing.
func TestReplayBomb(t *testing.T) {
	s := testutil.Start(t, map[string]string{"comet": `history_size = 100`})
	const size = 100 << 10
	var all []uint64
	all = append(all, publishMany(t, s.API, `"to":"bomb"`, 100, size)...)
	var chans []string
	for c := range 16 {
		chans = append(chans, fmt.Sprintf("c%d", c))
		all = append(all, publishMany(t, s.API, fmt.Sprintf(`"channel":"c%d"`, c), 100, size)...)
	}
	all = append(all, publishMany(t, s.API, `"broadcast":true`, 100, size)...)
	slices.Sort(all)
	newest := all[len(all)-100:]
	by := bystanders(t, s, 20)

	path := func(cursor uint64) string {
		return fmt.Sprintf("/sse/bomb?channels=%s&since=%d", strings.Join(chans, ","), cursor)
	}
	// One that reads as fast as it can, then one that reads nothing until
	// the worker has paced its replay (max_pending unsent): that one gets
	// what fit and the reconnect hint, and the rest from its cursor.
	check := func(got []uint64, gaps []msg) {
		t.Helper()
		if !slices.Equal(got, newest) {
			t.Fatalf("the bomb got %d messages %v…, want the newest 100 %v…", len(got), got[:min(3, len(got))], newest[:3])
		}
		if len(gaps) != 1 || gaps[0].Gap.After != 1 || gaps[0].Gap.Before != newest[0] {
			t.Errorf("gap announcements %+v, want one {after 1, before %d}", gaps, newest[0])
		}
	}
	got, gaps, conns := followBomb(t, s, path, nil, len(newest))
	check(got, gaps)
	t.Logf("a reading bomb: its 100 newest messages (10 MiB) over %d connection(s)", conns)
	got, gaps, conns = followBomb(t, s, path, stalledSSE(t, s, path(1)), len(newest))
	check(got, gaps)
	if conns < 2 {
		t.Errorf("a bomb that did not read got its 10 MiB in %d connection: the replay was not paced", conns)
	}
	t.Logf("a stalled bomb: %d connections", conns)
	unharmed(t, s, by)
	// Workers report their counts every second or so.
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if g := workerSum(st, func(w manager.WorkerStats) uint64 { return w.GapsAnnounced }); st.Manager.ReplaysCut != 2 || g != 2 {
			return fmt.Errorf("replays_cut %d, gaps_announced %d; want 2 and 2", st.Manager.ReplaysCut, g)
		}
		return nil
	})
}

// followBomb reads a stream as EventSource would, from first if given,
// and on the server's reconnect hint comes back with the last id, until
// it has n messages.
func followBomb(t *testing.T, s *testutil.Server, path func(uint64) string, first *streamClient, n int) (got []uint64, gaps []msg, conns int) {
	t.Helper()
	cursor := uint64(1)
	for len(got) < n {
		if conns++; conns > 200 {
			t.Fatalf("after %d connections: %d of %d messages", conns, len(got), n)
		}
		c := first
		if c == nil {
			var err error
			if c, err = dialStream(t, s.Listen, path(cursor)); err != nil {
				t.Fatal(err)
			}
		}
		first = nil
		for len(got) < n {
			ev, ended := c.nextEvent(60 * time.Second)
			if ended {
				break
			}
			switch {
			case ev.msg != nil && ev.msg.Gap != nil:
				gaps = append(gaps, *ev.msg)
			case ev.msg != nil:
				got = append(got, ev.msg.ID)
				cursor = ev.msg.ID
			}
		}
		c.close()
	}
	return got, gaps, conns
}

// stalledSSE opens an SSE stream with a small receive buffer and reads
// nothing until a worker has paced a replay (replays_paced), then hands
// it to a reader.
func stalledSSE(t *testing.T, s *testutil.Server, path string) *streamClient {
	t.Helper()
	before := workerSum(s.MustStats(), func(w manager.WorkerStats) uint64 { return w.ReplaysPaced })
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	s.WaitStats(t, 60*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.ReplaysPaced }); n <= before {
			return fmt.Errorf("replays_paced %d: the replay was not paced yet", n)
		}
		return nil
	})
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &streamClient{t: t, resp: resp, cancel: func() { conn.Close() }, events: make(chan event, 10000), done: make(chan struct{})}
	go c.read(true)
	return c
}

// A long-poll client with a 5 MiB backlog (100 messages of 52 KiB, five
// times comet.max_pending) gets all of it over several polls, each answer
// within the bound, its cursor moving forward each time: nothing dropped,
// nothing twice, never refused as a slow consumer.
func TestLongPollBacklog(t *testing.T) {
	s := testutil.Start(t, nil)
	want := publishMany(t, s.API, `"to":"lp5"`, 100, 52<<10)
	cl := &http.Client{Timeout: time.Minute}
	var got []uint64
	since, polls := uint64(1), 0
	for len(got) < len(want) {
		if polls++; polls > 100 {
			t.Fatalf("after %d polls: %d of %d messages", polls, len(got), len(want))
		}
		ms := poll(t, cl, s.Listen, fmt.Sprintf("/lp/lp5?since=%d", since))
		size := 0
		for _, m := range ms {
			got = append(got, m.ID)
			since = m.ID
			size += len(m.Data)
		}
		if size > 1<<20 {
			t.Errorf("one answer carried %d bytes of messages, over comet.max_pending", size)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %d messages, want %d in order: %v", len(got), len(want), got)
	}
	if polls < 5 {
		t.Errorf("%d polls for 5 MiB: answers are not bounded by comet.max_pending", polls)
	}
	st := s.MustStats()
	if sc := workerSum(st, func(w manager.WorkerStats) uint64 { return w.SlowConsumers }); sc != 0 {
		t.Errorf("%d slow consumers dropped", sc)
	}
}

// sseIDs reads an SSE stream with raw bytes and sends the id of every
// message event on ids, keeping nothing else (the messages here are big).
func sseIDs(t *testing.T, addr, path string) chan uint64 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	ids := make(chan uint64, 100000)
	go func() {
		r := bufio.NewReaderSize(conn, 1<<20)
		var id uint64
		for {
			line, err := r.ReadSlice('\n')
			if err == bufio.ErrBufferFull {
				for err == bufio.ErrBufferFull {
					_, err = r.ReadSlice('\n')
				}
				line = nil
			}
			if err != nil {
				return
			}
			switch {
			case bytes.HasPrefix(line, []byte("id: ")):
				id, _ = strconv.ParseUint(string(bytes.TrimSpace(line[4:])), 10, 64)
			case bytes.HasPrefix(line, []byte("data: ")) && id != 0:
				ids <- id
				id = 0
			}
		}
	}()
	return ids
}

// A publish flood against a worker that has stopped taking its messages
// (SIGSTOP): once its IPC backlog passes the high-water mark the API
// answers 503 with Retry-After, one line naming the worker, instead of
// taking more; when the worker runs again publishing goes on, and every
// client gets every message that was answered 200, once and in order.
func TestPublishFloodGets503(t *testing.T) {
	s := testutil.Start(t, nil)
	// Streams until both workers hold some, as the kernel spreads them.
	var streams []chan uint64
	for len(streams) < 40 {
		streams = append(streams, sseIDs(t, s.Listen, fmt.Sprintf("/sse/flood%d", len(streams))))
		st := s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
			if st.IDs != len(streams) {
				return fmt.Errorf("%d ids subscribed, want %d", st.IDs, len(streams))
			}
			return nil
		})
		if len(streams) >= 4 && st.Workers[0].Connections > 0 && st.Workers[1].Connections > 0 {
			break
		}
	}
	pid := s.MustStats().Workers[0].PID
	syscall.Kill(pid, syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	body := `{"broadcast":true,"data":"` + strings.Repeat("f", 250<<10) + `"}`
	var accepted []uint64
	var refused string
	for i := 0; refused == "" && i < 2000; i++ {
		status, resp, err := tryPost(s.API, body)
		switch {
		case err != nil:
			t.Fatal(err)
		case status == 200:
			var a struct{ ID uint64 }
			json.Unmarshal([]byte(resp), &a)
			accepted = append(accepted, a.ID)
		case status == 503:
			refused = resp
		default:
			t.Fatalf("publish: %d %s", status, resp)
		}
	}
	if !strings.Contains(refused, "worker 0 is behind") {
		t.Fatalf("after %d publishes to a stopped worker: %q, want a 503 naming worker 0", len(accepted), refused)
	}
	t.Logf("%d publishes accepted, then: %s", len(accepted), strings.TrimSpace(refused))
	syscall.Kill(pid, syscall.SIGCONT)
	stopped = false
	testutil.CheckFor(t, time.Minute, func() error {
		status, resp, err := tryPost(s.API, body)
		if err != nil || status != 200 {
			return fmt.Errorf("publish after SIGCONT: %d %s %v", status, resp, err)
		}
		var a struct{ ID uint64 }
		json.Unmarshal([]byte(resp), &a)
		accepted = append(accepted, a.ID)
		return nil
	})
	for i, ids := range streams {
		for _, want := range accepted {
			select {
			case got := <-ids:
				if got != want {
					t.Fatalf("client %d got message %d, want %d (in order, once)", i, got, want)
				}
			case <-time.After(time.Minute):
				t.Fatalf("client %d: message %d never came", i, want)
			}
		}
	}
	st := s.MustStats()
	if st.Manager.PublishRefused == 0 || st.Manager.WorkersKilled != 0 {
		t.Errorf("publish_refused %d, workers_killed %d", st.Manager.PublishRefused, st.Manager.WorkersKilled)
	}
	for _, w := range st.Workers {
		if w.Restarts != 0 {
			t.Errorf("worker %d restarted", w.Slot)
		}
	}
}
