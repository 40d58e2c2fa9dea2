package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
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

// A replay bomb: one join asks for everything its id and 16 channels
// retain - 17 rings of 100 messages of 48 KiB, 80 MiB, past what one IPC
// frame may carry (64 MiB) (the broadcasts' ring would make it 18, but broadcasts
// would also reach the suite's megatest). It gets the newest comet.max_replay (100)
// after a gap announcement naming the oldest it gets, in order, nothing
// twice; the worker's other clients notice nothing.
func replayBomb(t *testing.T, s *testutil.Server) {
	before := s.MustStats()
	cutBefore := before.Manager.ReplaysCut
	gapsBefore := workerSum(before, func(w manager.WorkerStats) uint64 { return w.GapsAnnounced })
	const size = 48 << 10
	var all []uint64
	all = append(all, publishMany(t, s.API, `"to":"bomb"`, 100, size)...)
	var chans []string
	for c := range 16 {
		chans = append(chans, fmt.Sprintf("c%d", c))
		all = append(all, publishMany(t, s.API, fmt.Sprintf(`"channel":"c%d"`, c), 100, size)...)
	}
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
	t.Logf("a reading bomb: its 100 newest messages (4.8 MiB) over %d connection(s)", conns)
	got, gaps, conns = followBomb(t, s, path, stalledSSE(t, s, path(1)), len(newest))
	check(got, gaps)
	if conns < 2 {
		t.Errorf("a bomb that did not read got its 4.8 MiB in %d connection: the replay was not paced", conns)
	}
	t.Logf("a stalled bomb: %d connections", conns)
	unharmed(t, s, by)
	// Workers report their counts every second or so.
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		g := workerSum(st, func(w manager.WorkerStats) uint64 { return w.GapsAnnounced }) - gapsBefore
		if cut := st.Manager.ReplaysCut - cutBefore; cut != 2 || g != 2 {
			return fmt.Errorf("replays_cut +%d, gaps_announced +%d; want 2 and 2", cut, g)
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

// smallReceiveBuffer dials with a 4 KiB receive buffer: a client that does
// not read fills it at once, and the server's unsent bytes pile up.
func smallReceiveBuffer() net.Dialer {
	return net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
}

// stalledSSE opens an SSE stream with a small receive buffer and reads
// nothing until its replay waits for it (a worker's replays_paced, or the
// manager's replays_partial: half of max_pending sent), then hands it to a
// reader.
func stalledSSE(t *testing.T, s *testutil.Server, path string) *streamClient {
	t.Helper()
	st0 := s.MustStats()
	before := workerSum(st0, func(w manager.WorkerStats) uint64 { return w.ReplaysPaced })
	d := smallReceiveBuffer()
	conn, err := d.Dial("tcp", s.Listen)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	s.WaitStats(t, 60*time.Second, func(st manager.Stats) error {
		// Paced by the worker, or stopped by the manager at half of
		// max_pending (replays_partial): either way it waits for the reader.
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.ReplaysPaced }); n <= before && st.Manager.ReplaysPartial <= st0.Manager.ReplaysPartial {
			return fmt.Errorf("replays_paced %d, replays_partial %d: the replay was not paced yet", n, st.Manager.ReplaysPartial)
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
func lpBacklog(t *testing.T, s *testutil.Server) {
	slowBefore := workerSum(s.MustStats(), func(w manager.WorkerStats) uint64 { return w.SlowConsumers })
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
	if sc := workerSum(s.MustStats(), func(w manager.WorkerStats) uint64 { return w.SlowConsumers }) - slowBefore; sc != 0 {
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
func publishFlood(t *testing.T, s *testutil.Server) {
	refusedBefore := s.MustStats().Manager.PublishRefused
	// Streams on the flood's channel until worker 0 holds one of them.
	var streams []chan uint64
	for on0 := false; !on0; {
		if len(streams) == 40 {
			t.Fatal("40 streams, none on worker 0")
		}
		before := s.MustStats()
		streams = append(streams, sseIDs(t, s.Listen, fmt.Sprintf("/sse/flood%d?channels=flood", len(streams))))
		s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
			if st.Connections != before.Connections+1 {
				return fmt.Errorf("%d connections, want %d", st.Connections, before.Connections+1)
			}
			on0 = st.Workers[0].Connections > before.Workers[0].Connections
			return nil
		})
	}
	pid := s.MustStats().Workers[0].PID
	syscall.Kill(pid, syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	body := `{"channel":"flood","data":"` + strings.Repeat("f", 250<<10) + `"}`
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
	if st := s.MustStats(); st.Manager.PublishRefused == refusedBefore || st.Manager.WorkersKilled != 0 {
		t.Errorf("publish_refused +%d, workers_killed %d", st.Manager.PublishRefused-refusedBefore, st.Manager.WorkersKilled)
	}
}

// The hostile-client suite: a live manager and 2 workers, a well-behaved
// megatest (1,000 SSE and 1,000 WebSocket connections, -pub 200) through
// all of it, and one subtest per attack. At the end megatest has lost
// nothing, had nothing twice and nothing closed under it, no worker
// restarted, and no process grew past the stated bound.
func TestHostileClients(t *testing.T) {
	// publish_flood fills a stopped worker's backlog to the high-water
	// mark with 250 KiB publishes: 20 MiB of them, not 64.
	t.Setenv("MEGACOMET_FAULT_IPC_HIGH_WATER", fmt.Sprint(20<<20))
	s := testutil.Start(t, map[string]string{
		"server": "workers = 2\nheader_timeout = \"2s\"\nmax_conns_per_ip = 5000",
		"comet":  "history_size = 100",
		// publish_flood stops a worker until the backlog passes the high
		// water mark, which a slow machine takes long to fill; a stuck
		// worker's kill has a test of its own (TestStuckWorkerKilled).
		"manager": `worker_stall_timeout = "10m"`,
	})
	sse := runMegatest(t, s, "hs", "-transport", "sse", "-n", "1000", "-pub", "100")
	wss := runMegatest(t, s, "hw", "-transport", "ws", "-n", "1000", "-pub", "100")
	waitHeld(t, s, 2000, 3*time.Minute)
	sse.waitMessages(t, 100)
	wss.waitMessages(t, 100)

	// What the server's processes may hold at any point of it (race-built
	// binaries, history up to the replay bomb's 80 MiB).
	const managerBound, workerBound = 1536 << 20, 768 << 20
	var peakManager, peakWorker uint64
	checkRSS := func(t *testing.T) {
		st := s.MustStats()
		peakManager = max(peakManager, st.Manager.RSSBytes)
		for _, w := range st.Workers {
			peakWorker = max(peakWorker, w.RSSBytes)
			if w.Restarts != 0 {
				t.Errorf("worker %d restarted", w.Slot)
			}
		}
		if peakManager > managerBound || peakWorker > workerBound {
			t.Errorf("RSS: manager %d MiB (bound %d), worker %d MiB (bound %d)", peakManager>>20, managerBound>>20, peakWorker>>20, workerBound>>20)
		}
	}
	attacks := []struct {
		name string
		run  func(t *testing.T, s *testutil.Server)
	}{
		{"publish_flood", publishFlood},
		{"slowloris", slowloris},
		{"header_flood", headerFlood},
		{"garbage", garbage},
		{"never_send", neverSend},
		{"ws_invalid_frames", wsInvalidFrames},
		{"ping_flood", pingFlood},
		{"non_readers", nonReaders},
		{"connect_storm", connectStorm},
		{"replay_bomb", replayBomb},
		{"lp_backlog", lpBacklog},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			a.run(t, s)
			checkRSS(t)
		})
	}
	t.Logf("peak RSS: manager %d MiB, workers %d MiB", peakManager>>20, peakWorker>>20)
	for _, r := range []*megatestRun{sse, wss} {
		_, sum := r.stop(t, 2*time.Minute)
		t.Logf("%s: %d published, %d messages, %d lost, %d duplicates, %d closed unexpectedly, %d reconnects", sum.Transport, sum.Published, sum.Messages, sum.Lost, sum.Duplicates, sum.ClosedUnexpected, sum.Reconnects)
		if sum.Lost != 0 || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 || sum.Reconnects != 0 || sum.Published == 0 {
			t.Errorf("%s megatest: lost %d, duplicates %d, closed_unexpected %d, reconnects %d, published %d",
				sum.Transport, sum.Lost, sum.Duplicates, sum.ClosedUnexpected, sum.Reconnects, sum.Published)
		}
	}
}

// answerOf reads what the server answers on c until it closes: the status
// line and the body, or the error that ended the read.
func answerOf(c net.Conn, wait time.Duration) (int, string, error) {
	c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), err
}

// parallel runs n attackers at once and fails the test with the first
// error any of them returns.
func parallel(t *testing.T, n int, attack func(i int) error) {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- attack(i) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// Slowloris: a request head a byte at a time, one every 300 ms. Past
// server.header_timeout (2 s here) the server answers 408 and closes.
func slowloris(t *testing.T, s *testutil.Server) {
	parallel(t, 50, func(i int) error {
		c, err := net.Dial("tcp", s.Listen)
		if err != nil {
			return err
		}
		defer c.Close()
		head := "GET /sse/slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("z", 200) + "\r\n\r\n"
		answered := make(chan struct{})
		go func() {
			defer close(answered)
			for j := 0; j < len(head); j++ {
				if _, err := c.Write([]byte{head[j]}); err != nil {
					return
				}
				select {
				case <-answered:
					return
				case <-time.After(300 * time.Millisecond):
				}
			}
		}()
		status, body, err := answerOf(c, time.Minute)
		if status != 408 || !strings.Contains(body, "header_timeout") {
			return fmt.Errorf("slowloris %d: %d %q %v, want 408 naming server.header_timeout", i, status, body, err)
		}
		return nil
	})
}

// Header floods: one header past server.max_header_bytes, and many small
// ones adding up past it: 431, then closed.
func headerFlood(t *testing.T, s *testutil.Server) {
	many := strings.Repeat("X-A: b\r\n", 2000)
	parallel(t, 40, func(i int) error {
		req := "GET /sse/h HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 20<<10) + "\r\n\r\n"
		if i%2 == 1 {
			req = "GET /sse/h HTTP/1.1\r\n" + many + "\r\n"
		}
		c, err := net.Dial("tcp", s.Listen)
		if err != nil {
			return err
		}
		defer c.Close()
		go io.WriteString(c, req) // the server may answer before it has read all
		if status, body, err := answerOf(c, time.Minute); status != 431 {
			return fmt.Errorf("header flood %d: %d %q %v, want 431", i, status, body, err)
		}
		return nil
	})
}

// Garbage: random bytes, with a blank line or without. Each gets one
// 4xx line - malformed (400), too large (431) or, for bytes that never
// end a head, the header timeout (408) - and is closed.
func garbage(t *testing.T, s *testutil.Server) {
	parallel(t, 40, func(i int) error {
		junk := make([]byte, 1000+i*100)
		rand.NewChaCha8([32]byte{byte(i)}).Read(junk)
		if i%2 == 0 {
			junk = append(junk, "\r\n\r\n"...)
		}
		c, err := net.Dial("tcp", s.Listen)
		if err != nil {
			return err
		}
		defer c.Close()
		go c.Write(junk)
		status, body, err := answerOf(c, time.Minute)
		if status != 400 && status != 408 && status != 431 && status != 505 {
			return fmt.Errorf("garbage %d: %d %q %v, want a 4xx answer", i, status, body, err)
		}
		return nil
	})
}

// Connections that never send: closed once server.header_timeout passes.
func neverSend(t *testing.T, s *testutil.Server) {
	parallel(t, 200, func(i int) error {
		c, err := net.Dial("tcp", s.Listen)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if n, err := c.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			return fmt.Errorf("silent connection %d: read %d, %v; want it closed", i, n, err)
		}
		return nil
	})
}

// dialWS opens a WebSocket with gobwas/ws's client.
func dialWS(s *testutil.Server, id string) (net.Conn, error) {
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/"+id)
	return c, err
}

// closeCode reads frames until the server's close frame and returns its
// status code.
func closeCode(c net.Conn) (ws.StatusCode, error) {
	c.SetReadDeadline(time.Now().Add(time.Minute))
	for {
		f, err := ws.ReadFrame(c)
		if err != nil {
			return 0, err
		}
		if f.Header.OpCode == ws.OpClose {
			code, _ := ws.ParseCloseFrameData(f.Payload)
			return code, nil
		}
	}
}

// Invalid WebSocket frames, each on its own connection: the close code
// RFC 6455 gives for it, then the close.
func wsInvalidFrames(t *testing.T, s *testutil.Server) {
	masked := func(op ws.OpCode, fin bool, payload []byte) []byte {
		f := ws.NewFrame(op, fin, payload)
		f = ws.MaskFrameInPlace(f)
		b, _ := ws.CompileFrame(f)
		return b
	}
	cases := []struct {
		name  string
		frame []byte
		code  ws.StatusCode
	}{
		{"unmasked", ws.MustCompileFrame(ws.NewTextFrame([]byte(`{"since":1}`))), ws.StatusProtocolError},
		{"reserved opcode", masked(0x3, true, []byte("x")), ws.StatusProtocolError},
		{"oversized", masked(ws.OpText, true, bytes.Repeat([]byte("a"), 70<<10)), ws.StatusMessageTooBig},
		{"bad UTF-8", masked(ws.OpText, true, []byte{0xff, 0xfe, 0xfd}), ws.StatusInvalidFramePayloadData},
		{"fragmented control", masked(ws.OpPing, false, []byte("p")), ws.StatusProtocolError},
		{"binary", masked(ws.OpBinary, true, []byte{1, 2, 3}), ws.StatusUnsupportedData},
	}
	for _, tc := range cases {
		c, err := dialWS(s, "bad")
		if err != nil {
			t.Fatal(err)
		}
		go c.Write(tc.frame)
		if code, err := closeCode(c); code != tc.code {
			t.Errorf("%s: close %d %v, want %d", tc.name, code, err, tc.code)
		}
		c.Close()
	}
}

// A ping flood: pongs for the first 32, then close 1008.
func pingFlood(t *testing.T, s *testutil.Server) {
	before := workerSum(s.MustStats(), func(w manager.WorkerStats) uint64 { return w.WSControlLimited })
	c, err := dialWS(s, "pinger")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := ws.MaskFrameInPlace(ws.NewPingFrame([]byte("p")))
	go func() {
		for range 10000 {
			if ws.WriteFrame(c, ping) != nil {
				return
			}
		}
	}()
	if code, err := closeCode(c); code != ws.StatusPolicyViolation {
		t.Errorf("ping flood: close %d %v, want 1008", code, err)
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.WSControlLimited }); n <= before {
			return fmt.Errorf("ws_control_limited %d: not counted", n)
		}
		return nil
	})
}

// 100 clients that never read while 8 MiB flow to their channel: each is
// dropped as a slow consumer once comet.max_pending waits for it, and
// the worker's memory stays bounded.
func nonReaders(t *testing.T, s *testutil.Server) {
	before := workerSum(s.MustStats(), func(w manager.WorkerStats) uint64 { return w.SlowConsumers })
	d := smallReceiveBuffer()
	ids0 := s.MustStats().IDs
	for i := range 100 {
		c, err := d.Dial("tcp", s.Listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /sse/nr%d?channels=nr HTTP/1.1\r\nHost: x\r\n\r\n", i)
	}
	s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		if st.IDs < ids0+100 {
			return fmt.Errorf("%d of 100 non-readers subscribed", st.IDs-ids0)
		}
		return nil
	})
	publishMany(t, s.API, `"channel":"nr"`, 128, 64<<10)
	// 8 MiB offered to each of 100 sockets: minutes on a slow machine.
	s.WaitStats(t, 5*time.Minute, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.SlowConsumers }) - before; n < 100 {
			return fmt.Errorf("%d of 100 non-readers dropped as slow consumers", n)
		}
		return nil
	})
}

// A connect/disconnect storm: 8 dialers connecting and closing as fast as
// they can for 5 s, half of them asking /ping first.
func connectStorm(t *testing.T, s *testutil.Server) {
	var n atomic.Int64
	end := time.Now().Add(5 * time.Second)
	parallel(t, 8, func(i int) error {
		req := []byte("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
		buf := make([]byte, 512)
		for time.Now().Before(end) {
			c, err := net.Dial("tcp", s.Listen)
			if err != nil {
				return fmt.Errorf("storm: %v", err)
			}
			if i%2 == 0 {
				c.Write(req)
				c.SetReadDeadline(time.Now().Add(time.Minute))
				if _, err := c.Read(buf); err != nil {
					c.Close()
					return fmt.Errorf("storm ping: %v", err)
				}
			}
			c.Close()
			n.Add(1)
		}
		return nil
	})
	t.Logf("%d connections in 5 s (%.0f/s)", n.Load(), float64(n.Load())/5)
}
