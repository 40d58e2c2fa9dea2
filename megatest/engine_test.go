//go:build linux

package megatest

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary play a megatest child (tableflip's trick):
// the split tests re-execute it with MEGATEST_CHILD set.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(Main(os.Args[1:]))
	}
	stallAfter = time.Second // a refused port need not hold the test for 10 s
	os.Exit(m.Run())
}

// Every transport: the server's announced close is a reconnect, any other
// close is closed_unexpected; both reopen with the cursor and lose nothing.
func TestEngineReconnectsWithCursor(t *testing.T) {
	for _, tr := range []string{"sse", "stream", "lp", "ws"} {
		for _, announced := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/announced=%v", tr, announced), func(t *testing.T) {
				t.Parallel()
				const n = 20
				f := newFake(t, func(f *fake) {
					f.onOpen = func(c *fconn, k int) {
						if k > 1 {
							c.hold() // the reopened connection stays
							return
						}
						c.f.deliver(c.id, fmsg{uint64(100 + k), fmt.Sprintf(`{"id":%d,"data":"first"}`, 100+k)})
						c.heartbeat()
						if tr == "lp" {
							c.pollLoop(func(c *fconn, poll int) bool {
								if poll < 3 {
									return false // answer normally: the message, then a timeout
								}
								if announced {
									c.announce() // Connection: close
								} else {
									c.write("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n[") // cut off
								}
								c.conn.Close()
								return true
							})
							return
						}
						if announced {
							c.announce()
						}
						time.Sleep(20 * time.Millisecond) // let the notice go out before the FIN
						c.conn.Close()
					}
				})
				s, out := runMegatest(t, f, fmt.Sprintf("-n %d -transport %s -hold 1500ms", n, tr))
				wantRecon, wantUnexp := int64(n), int64(0)
				if !announced {
					wantRecon, wantUnexp = 0, n
				}
				if s.Reconnects != wantRecon || s.ClosedUnexpected != wantUnexp || s.ProtocolErrors != 0 || s.ConnectFailed != 0 {
					t.Fatalf("reconnects %d unexpected %d protocol %d failed %d; want %d %d 0 0\n%s",
						s.Reconnects, s.ClosedUnexpected, s.ProtocolErrors, s.ConnectFailed, wantRecon, wantUnexp, out)
				}
				if s.Active != n || s.PeakActive != n || s.Opened != 2*n || s.Closed != n {
					t.Fatalf("active %d peak %d opened %d closed %d\n%s", s.Active, s.PeakActive, s.Opened, s.Closed, out)
				}
				if s.Messages != n || s.Duplicates != 0 {
					t.Fatalf("messages %d duplicates %d, want %d 0", s.Messages, s.Duplicates, n)
				}
				if tr != "lp" && s.Heartbeats < n {
					t.Fatalf("heartbeats %d < %d", s.Heartbeats, n)
				}
				// Every reopen carried the cursor.
				since := 0
				for _, r := range f.requestList() {
					if strings.Contains(r, "?since=101") {
						since++
					}
				}
				if since < n {
					t.Fatalf("%d requests with since=101, want ≥ %d: %q", since, n, f.requestList())
				}
			})
		}
	}
}

// A connection dropped before its first message resumes from the cursor
// the server gave it (X-Megacomet-Cursor, SSE's opening id line), so what
// was published meanwhile is not missed. (A long-poll learns its cursor
// from its first answer only.)
func TestEngineResumesBeforeFirstMessage(t *testing.T) {
	for _, tr := range []string{"sse", "stream", "ws"} {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, func(f *fake) {
				f.seq = 1000 // earlier messages exist
				f.onOpen = func(c *fconn, k int) {
					if k > 1 {
						c.hold()
						return
					}
					time.Sleep(20 * time.Millisecond)
					c.conn.Close()
					c.f.mu.Lock()
					c.f.seq++
					id := c.f.seq
					c.f.mu.Unlock()
					c.f.deliver(c.id, fmsg{id, fmt.Sprintf(`{"id":%d,"data":"gap"}`, id)})
				}
			})
			s, out := runMegatest(t, f, "-n 10 -transport "+tr+" -hold 1s")
			if s.Messages != 10 || s.ClosedUnexpected != 10 || s.Duplicates != 0 {
				t.Fatalf("messages %d unexpected %d duplicates %d; want 10 10 0\n%s\n%q", s.Messages, s.ClosedUnexpected, s.Duplicates, out, f.requestList())
			}
		})
	}
}

// A long-poll connection closed after a complete answer, while the next
// poll is on its way, is a keep-alive close: a reconnect, not a failure.
func TestEngineLongPollKeepAliveClose(t *testing.T) {
	f := newFake(t, func(f *fake) {
		f.onOpen = func(c *fconn, k int) {
			if k > 1 {
				c.hold()
				return
			}
			c.pollLoop(func(c *fconn, poll int) bool {
				if poll == 2 {
					c.conn.Close() // the first answer was complete
					return true
				}
				return false
			})
		}
	})
	s, out := runMegatest(t, f, "-n 10 -transport lp -hold 800ms")
	if s.Reconnects != 10 || s.ClosedUnexpected != 0 {
		t.Fatalf("reconnects %d unexpected %d; want 10 0\n%s", s.Reconnects, s.ClosedUnexpected, out)
	}
}

// A WebSocket ping is answered with a masked pong carrying its payload.
func TestEngineAnswersWSPing(t *testing.T) {
	pongs := make(chan []byte, 1)
	f := newFake(t, func(f *fake) {
		f.onOpen = func(c *fconn, k int) {
			c.write(string(wsServerFrame(wsPing, []byte("are you there"))))
			var h [6]byte
			if _, err := io.ReadFull(c.br, h[:]); err != nil {
				t.Error(err)
				return
			}
			if h[0] != 0x80|byte(wsPong) || h[1]&0x80 == 0 {
				t.Errorf("not a masked pong: % x", h[:2])
			}
			p := make([]byte, h[1]&0x7f)
			io.ReadFull(c.br, p)
			for i := range p {
				p[i] ^= h[2+i&3]
			}
			pongs <- p
			c.hold()
		}
	})
	s, _ := runMegatest(t, f, "-n 1 -transport ws -hold 300ms")
	select {
	case p := <-pongs:
		if string(p) != "are you there" {
			t.Fatalf("pong payload %q", p)
		}
	default:
		t.Fatal("no pong")
	}
	if s.Heartbeats != 1 {
		t.Fatalf("heartbeats %d", s.Heartbeats)
	}
}

// Broken framing, a bad status and a refused port are each counted where
// they belong, and retried.
func TestEngineCountsFailures(t *testing.T) {
	t.Run("protocol", func(t *testing.T) {
		f := newFake(t, func(f *fake) {
			f.onOpen = func(c *fconn, k int) {
				if k == 1 {
					c.write("id: 5\ndata: {\"id\":6}\n\n") // id field and message differ
				}
				c.hold()
			}
		})
		s, _ := runMegatest(t, f, "-n 5 -hold 800ms")
		if s.ProtocolErrors != 5 || s.ClosedUnexpected != 0 || s.Active != 5 {
			t.Fatalf("protocol %d unexpected %d active %d", s.ProtocolErrors, s.ClosedUnexpected, s.Active)
		}
	})
	t.Run("status", func(t *testing.T) {
		s, _ := runMegatest(t, &fake{t: t, ln: statusServer(t, 503), api: newFake(t).api}, "-n 3 -hold 500ms")
		if s.HTTPErrors < 3 || s.ConnectFailed < 3 || s.ProtocolErrors != 0 {
			t.Fatalf("http %d failed %d protocol %d", s.HTTPErrors, s.ConnectFailed, s.ProtocolErrors)
		}
	})
	t.Run("refused", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		ln.Close() // nothing listens here now
		s, _ := runMegatest(t, &fake{t: t, ln: ln, api: newFake(t).api}, "-n 4 -hold 300ms")
		if s.ConnectFailed < 4 || s.Opened != 0 || s.Active != 0 {
			t.Fatalf("failed %d opened %d active %d", s.ConnectFailed, s.Opened, s.Active)
		}
	})
}

// A 503 with Retry-After is the server's "come back": a draining worker
// answers so a connection it hands over before answering it. It counts as
// a reconnect, on every transport, not as an error or an unexpected close.
func TestEngineTakes503RetryAfterAsAReconnect(t *testing.T) {
	for _, tr := range []string{"sse", "stream", "ws", "lp"} {
		t.Run(tr, func(t *testing.T) {
			f := newFake(t, func(f *fake) { f.busyFirst = 1 })
			s, _ := runMegatest(t, f, "-transport "+tr+" -n 5 -hold 300ms")
			if s.Reconnects != 5 || s.HTTPErrors != 0 || s.ConnectFailed != 0 || s.ClosedUnexpected != 0 || s.Ready != 5 {
				t.Errorf("reconnects %d http_errors %d connect_failed %d closed_unexpected %d ready %d; want 5 0 0 0 5",
					s.Reconnects, s.HTTPErrors, s.ConnectFailed, s.ClosedUnexpected, s.Ready)
			}
		})
	}
}

// -hold counts from when the server has answered every connection, not
// from when they are open: a slow server makes the run longer, and the
// hold still holds them all.
func TestHoldStartsOnceEveryConnectionIsAnswered(t *testing.T) {
	f := newFake(t, func(f *fake) { f.slowHead = time.Second })
	s, _ := runMegatest(t, f, "-n 4 -hold 100ms")
	if s.Ready != 4 || s.ClosedUnexpected != 0 {
		t.Errorf("ready %d of 4 at the end of the hold, closed_unexpected %d", s.Ready, s.ClosedUnexpected)
	}
}

func statusServer(t *testing.T, status int) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 %d Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status)
			c.Close()
		}
	}()
	return ln
}

func TestEngineCountsDuplicates(t *testing.T) {
	f := newFake(t, func(f *fake) {
		f.onOpen = func(c *fconn, k int) {
			for _, id := range []uint64{5, 5, 7, 6, 8} {
				c.send(fmsg{id, fmt.Sprintf(`{"id":%d,"data":0}`, id)})
			}
			c.hold()
		}
	})
	s, _ := runMegatest(t, f, "-n 3 -transport stream -hold 300ms")
	if s.Messages != 15 || s.Duplicates != 6 {
		t.Fatalf("messages %d duplicates %d; want 15 6", s.Messages, s.Duplicates)
	}
}

// -pub and -broadcast against the fake API: every message checked off,
// latencies measured; a server that drops messages shows loss.
func TestEnginePublishAndLoss(t *testing.T) {
	for _, drop := range []int{0, 7} {
		t.Run(fmt.Sprintf("drop=%d", drop), func(t *testing.T) {
			f := newFake(t, func(f *fake) { f.dropEvery = drop })
			s, out := runMegatest(t, f, "-n 50 -pub 400 -broadcast 2 -hold 1s -grace 1s -round-wait 1s")
			if s.Published < 100 || s.PublishErrors != 0 {
				t.Fatalf("published %d errors %d\n%s", s.Published, s.PublishErrors, out)
			}
			if len(s.BroadcastMs) != 2 {
				t.Fatalf("broadcast rounds %+v", s.BroadcastMs)
			}
			if s.LatencyMs.P50 <= 0 || s.LatencyMs.Max < s.LatencyMs.P99 {
				t.Fatalf("latency %+v", s.LatencyMs)
			}
			var bcastRecv, bcastExp int64
			for _, b := range s.BroadcastMs {
				bcastRecv += b.Received
				bcastExp += b.Expected
				if b.Expected != 50 || b.Max <= 0 {
					t.Fatalf("round %+v", b)
				}
			}
			if drop == 0 {
				if s.Lost != 0 || s.Duplicates != 0 || bcastRecv != bcastExp {
					t.Fatalf("lost %d dups %d broadcast %d/%d\n%s", s.Lost, s.Duplicates, bcastRecv, bcastExp, out)
				}
				if s.Messages != s.Published+bcastRecv {
					t.Fatalf("messages %d, published %d + broadcast %d", s.Messages, s.Published, bcastRecv)
				}
				return
			}
			// Every 7th delivery is dropped: about a seventh of each kind.
			total := s.Published + bcastExp
			missing := s.Lost + bcastExp - bcastRecv
			if missing < total/7-2 || missing > total/7+2 {
				t.Fatalf("lost %d + broadcast missing %d = %d of %d, want about %d\n%s", s.Lost, bcastExp-bcastRecv, missing, total, total/7, out)
			}
			if s.Lost == 0 {
				t.Fatal("no -pub message lost")
			}
		})
	}
}

// Split over child processes (the test binary plays the child): the
// parent adds the children up.
func TestEngineSplitsOverChildren(t *testing.T) {
	f := newFake(t)
	s, out := runMegatest(t, f, "-n 90 -procs 3 -pub 300 -broadcast 1 -hold 1s -grace 1s")
	if s.Processes != 3 || s.Active != 90 || s.PeakActive != 90 || s.ClosedUnexpected != 0 {
		t.Fatalf("processes %d active %d peak %d unexpected %d\n%s", s.Processes, s.Active, s.PeakActive, s.ClosedUnexpected, out)
	}
	if s.Lost != 0 || s.Published == 0 || len(s.BroadcastMs) != 1 || s.BroadcastMs[0].Received != 90 {
		t.Fatalf("lost %d published %d broadcast %+v", s.Lost, s.Published, s.BroadcastMs)
	}
	// Ids a0…a89, each exactly once: the children took disjoint ranges.
	seen := map[string]bool{}
	for _, r := range f.requestList() {
		seen[strings.TrimPrefix(r, "/sse/")] = true
	}
	for i := range 90 {
		if !seen[fmt.Sprintf("a%d", i)] {
			t.Fatalf("a%d never connected", i)
		}
	}
	if len(seen) != 90 {
		t.Fatalf("%d distinct ids", len(seen))
	}
}

// An idle connection costs its 48-byte struct and nothing else (with
// heardAt for heartbeat lateness, which took padding).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 48 {
		t.Fatalf("conn is %d bytes", n)
	}
}

// The engine's whole per-message path — bytes from the read buffer through
// the SSE parser, the message scan, the cursor, the latency histogram and
// the broadcast round — allocates nothing. (A -pub message also takes a
// ledger entry: that map is the one per-message cost, and it is freed.)
func TestEngineInputDoesNotAllocate(t *testing.T) {
	e, c, bufs := inputBench(t, 1200)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		if !e.input(0, c, bufs[i], time.Now().UnixNano()) {
			t.Fatal("closed")
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per message", allocs)
	}
	if e.st.msgs == 0 || e.st.hb == 0 || e.st.dups != 0 || e.rounds[0].recv != 1 {
		t.Fatalf("msgs %d hb %d dups %d round recv %d", e.st.msgs, e.st.hb, e.st.dups, e.rounds[0].recv)
	}
	if e.hbLate.n == 0 { // the heartbeat lateness sample was taken, too
		t.Fatal("no heartbeat lateness sample")
	}
}

func BenchmarkEngineInputSSE(b *testing.B) {
	e, c, bufs := inputBench(b, b.N+1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.input(0, c, bufs[i], 0)
	}
}

// inputBench is an engine with one streaming SSE connection and n reads
// to feed it: messages with rising ids (every 10th one of ours, a
// broadcast), each followed by a heartbeat.
func inputBench(t testing.TB, n int) (*engine, *conn, [][]byte) {
	o := defaultOptions()
	o.Letter, o.Host, o.Run = "a", "127.0.0.1", "run1"
	e, err := newEngine(&o, 0, 1, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, nil, 0, 0, func(*Snapshot) {}, logger())
	if err != nil {
		t.Fatal(err)
	}
	c := &e.conns[0]
	c.state = stBody
	bufs := make([][]byte, n)
	for i := range bufs {
		data := `{"x":1}`
		if i%10 == 0 {
			data = fmt.Sprintf(`{"t":%d,"b":1,"r":"run1"}`, time.Now().UnixNano())
		}
		bufs[i] = fmt.Appendf(nil, "id: %d\ndata: {\"id\":%[1]d,\"data\":%s}\n\n:\n\n", 1764000000000000+i, data)
	}
	return e, c, bufs
}

// A close the server did not announce is said in one line, with what was
// being done, the error, whether the server had answered, and the id; the
// next ones within logEvery are counted, not logged. An announced close
// says nothing.
func TestUnexpectedClosesAreLogged(t *testing.T) {
	o := defaultOptions()
	o.Letter, o.Host = "a", "127.0.0.1"
	var logs strings.Builder
	e, err := newEngine(&o, 40, 3, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, nil, 0, 0, func(*Snapshot) {},
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: dropTime})))
	if err != nil {
		t.Fatal(err)
	}
	for i := range e.conns {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fds[1])
		e.conns[i].fd, e.conns[i].state = int32(fds[0]), stHead
		e.st.active++
	}
	e.conns[1].flags |= fReady
	e.conns[2].flags |= fAnnounced
	e.closeUnexpected(0, &e.conns[0], "read", errEOF)
	e.closeUnexpected(1, &e.conns[1], "read", unix.ECONNRESET)
	e.closeUnexpected(2, &e.conns[2], "read", errEOF)
	want := `level=WARN msg="connection closed unexpectedly" op=read err=EOF answered=false path=/sse/a40 unexpected=1` + "\n"
	if logs.String() != want {
		t.Fatalf("logged\n%s\nwant\n%s", logs.String(), want)
	}
	if e.st.unexpected != 2 || e.st.recon != 1 || e.st.active != 0 {
		t.Fatalf("unexpected %d reconnects %d active %d, want 2 1 0", e.st.unexpected, e.st.recon, e.st.active)
	}
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// -round-every spaces the broadcast rounds, as a soak wants: three rounds
// 400 ms apart cannot be over before 800 ms, and each reaches everyone.
func TestRoundEverySpacesTheRounds(t *testing.T) {
	f := newFake(t)
	start := time.Now()
	s, _ := runMegatest(t, f, "-n 5 -broadcast 3 -round-every 2s -hold 10ms")
	if took := time.Since(start); took < 4*time.Second {
		t.Errorf("three rounds 2 s apart took %v", took)
	}
	if len(s.BroadcastMs) != 3 {
		t.Fatalf("%d rounds, want 3", len(s.BroadcastMs))
	}
	for i, b := range s.BroadcastMs {
		if b.Received != 5 {
			t.Errorf("round %d reached %d of 5", i+1, b.Received)
		}
	}
}

// An SSE stream in a chunked body (nginx re-frames megacomet's stream so):
// chunks that split events anywhere, read in pieces split anywhere, give
// every message and heartbeat once; the last chunk ends the response.
func TestEngineSSEInChunks(t *testing.T) {
	var stream []byte
	const msgs = 40
	for i := 0; i < msgs; i++ {
		stream = fmt.Appendf(stream, "id: %d\ndata: {\"id\":%[1]d,\"data\":{\"x\":%d}}\n\n:\n\n", 1764000000000000+i, i)
	}
	for _, size := range []int{1, 2, 7, 13, 64, 4096} {
		var body []byte
		for rest := stream; len(rest) > 0; {
			n := min(size, len(rest))
			body = fmt.Appendf(body, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		for _, read := range []int{1, 3, 10, 100, len(body)} {
			e, c, _ := inputBench(t, 0)
			c.flags |= fChunked
			for rest := body; len(rest) > 0; {
				n := min(read, len(rest))
				if !e.input(0, c, append([]byte(nil), rest[:n]...), time.Now().UnixNano()) {
					t.Fatalf("chunks of %d, reads of %d: closed", size, read)
				}
				rest = rest[n:]
			}
			if e.st.msgs != msgs || e.st.hb != msgs || e.st.dups != 0 || len(c.in) != 0 {
				t.Fatalf("chunks of %d, reads of %d: %d messages, %d heartbeats, %d duplicates, %d bytes left; want %d, %d, 0, 0",
					size, read, e.st.msgs, e.st.hb, e.st.dups, len(c.in), msgs, msgs)
			}
			if e.input(0, c, []byte("0\r\n\r\n"), time.Now().UnixNano()) {
				t.Fatalf("the last chunk did not end the response")
			}
		}
	}
}
