package worker

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

// openSSE connects a raw client to /sse/id and reads the answer head.
func (h *harness) openSSE(id string) *rawConn {
	c := h.dialRaw()
	c.write([]byte("GET /sse/" + id + " HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.readOpening()
	return c
}

// stalledSSE subscribes a client to /sse/id that does not read. A fixed
// receive buffer stops autotuning, so a backlog piles up on the server: its
// send buffer grows to net.ipv4.tcp_wmem's max (4 MB here) and the rest must
// wait in the worker.
func (h *harness) stalledSSE(id string) *rawConn {
	c := h.dialRaw()
	syscall.SetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
	joined := h.joins.Load()
	c.write([]byte("GET /sse/" + id + " HTTP/1.1\r\n\r\n"))
	h.waitJoins(joined + 1)
	return c
}

// readOpening reads an SSE answer's head and its opening block
// ("retry: 2000\nid: <cursor>\n\n").
func (c *rawConn) readOpening() []byte { return readSSEOpening(c.t, c.fd, c.buf) }

// readSSEOpening reads an SSE answer's head and opening block from fd into
// buf.
func readSSEOpening(t testing.TB, fd int, buf []byte) []byte {
	got := 0
	for !(bytes.Contains(buf[:got], []byte("\nretry: 2000\nid: ")) && bytes.HasSuffix(buf[:got], []byte("\n\n"))) {
		n, err := readSock(fd, buf[got:])
		if err != nil || n == 0 {
			t.Fatalf("read: %v after %q", err, buf[:got])
		}
		got += n
	}
	return buf[:got]
}

// readUntil reads until the bytes read so far end with suffix.
func (c *rawConn) readUntil(suffix []byte) []byte {
	got := 0
	for !bytes.HasSuffix(c.buf[:got], suffix) {
		if got == len(c.buf) {
			c.t.Fatalf("no %q in %d bytes", suffix, got)
		}
		n, err := readSock(c.fd, c.buf[got:])
		if err != nil || n == 0 {
			c.t.Fatalf("read: %v after %q", err, c.buf[:got])
		}
		got += n
	}
	return c.buf[:got]
}

// readSock reads from a client socket, again when a signal interrupts the
// read: with SO_RCVTIMEO set the kernel does not restart it (signal(7)),
// and the runtime signals threads often when the worker in this process
// allocates.
func readSock(fd int, buf []byte) (int, error) {
	for {
		n, err := syscall.Read(fd, buf)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// nowID is a message id newer than any connection's start cursor.
func nowID() uint64 { return uint64(time.Now().UnixMicro()) + 1000 }

func sseEvent(id uint64, body []byte) []byte {
	return []byte("id: " + strconv.FormatUint(id, 10) + "\ndata: " + string(body) + "\n\n")
}

// The path from a Deliver frame to a client's socket allocates nothing.
func TestDeliverAllocatesNothing(t *testing.T) {
	h := startWorker(t, nil)
	c := h.openSSE("a")
	h.waitJoins(1)
	body := []byte(`{"id":0,"data":"x"}`)
	checkDeliverAllocs(t, h, c, body, len(sseEvent(nowID(), body)))
}

// checkDeliverAllocs delivers body to client id "a" (read back as want
// bytes) again and again: the worker must allocate nothing for it.
func checkDeliverAllocs(t *testing.T, h *harness, c *rawConn, body []byte, want int) {
	t.Helper()
	frame := make([]byte, 0, 256)
	id := nowID()
	deliver := func() {
		id++
		frame = appendDeliver(frame[:0], "a", id, body)
		h.send(frame)
		c.readN(want)
	}
	deliver()
	if n := testing.AllocsPerRun(1000, deliver); n != 0 {
		t.Errorf("%.2f allocations per delivered message", n)
	}
}

// Regression for evio issue #72: a wake replaces evio's unsent output. A
// client that does not read while megabytes are pushed at it, back to back,
// must still get every byte, in order, once it reads (slowly).
func TestSlowReaderGetsEveryByteInOrder(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Comet.MaxPending = 64 << 20 })
	c := h.stalledSSE("slow")

	var want bytes.Buffer
	big := bytes.Repeat([]byte("0123456789abcdef"), 20<<10/16)
	const n = 800 // 800 × 20 KiB = 16 MiB, far beyond the socket buffers
	var frame []byte
	base := nowID()
	for i := 1; i <= n; i++ {
		body := fmt.Appendf(nil, `{"id":%d,"data":"%s"}`, i, big[:len(big)-i%7])
		frame = appendDeliver(frame[:0], "slow", base+uint64(i), body)
		h.send(frame)
		want.Write(sseEvent(base+uint64(i), body))
	}
	// back to back in one frame too
	for i := n + 1; i <= n+1000; i++ {
		body := fmt.Appendf(nil, `{"id":%d}`, i)
		frame = appendDeliver(frame, "slow", base+uint64(i), body)
		want.Write(sseEvent(base+uint64(i), body))
	}
	h.send(frame)

	var got bytes.Buffer
	buf := make([]byte, 16<<10)
	for got.Len() < want.Len()+200 && !bytes.HasSuffix(got.Bytes(), want.Bytes()[want.Len()-30:]) {
		if got.Len()%(1<<20) < len(buf) {
			time.Sleep(10 * time.Millisecond) // a slow reader: pauses now and then
		}
		m, err := readSock(c.fd, buf)
		if err != nil || m == 0 {
			t.Fatalf("read after %d of %d bytes: %v", got.Len(), want.Len(), err)
		}
		got.Write(buf[:m])
	}
	body := got.Bytes()[headLen(got.Bytes()):]
	_, body, ok := bytes.Cut(body, []byte("\n\n")) // the opening block
	if !ok {
		t.Fatalf("no opening block in %.100q", got.Bytes())
	}
	i := firstDiff(body, want.Bytes())
	if i >= 0 {
		t.Fatalf("stream differs at byte %d of %d", i, want.Len())
	}
}

func headLen(b []byte) int { return bytes.Index(b, []byte("\r\n\r\n")) + 4 }

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func TestSlowConsumerIsDropped(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Comet.MaxPending = 64 << 10 })
	c := h.stalledSSE("stuck")
	body := bytes.Repeat([]byte("x"), 8<<10)
	var frame []byte
	base := nowID()
	for i := 1; i <= 1000; i++ { // 8 MB to a client that never reads: past every buffer
		frame = appendDeliver(frame, "stuck", base+uint64(i), body)
	}
	h.send(frame)
	h.countsWhere(func(c ipc.Counts) bool { return c.SlowConsumers == 1 && c.Conns == 0 })
	c.readToEnd() // what the kernel already held, then the end
}

// With the default comet.max_pending a client that stops reading is dropped
// once more than max_pending waits unsent in the worker; a client reading
// the same messages at the same time is not.
func TestSlowConsumerIsDroppedAtDefaultMaxPending(t *testing.T) {
	const maxPending = 1 << 20 // the default etc/megacomet.toml documents
	if d := config.Default().Comet.MaxPending; d != maxPending {
		t.Fatalf("default comet.max_pending is %d, etc/megacomet.toml says %d", d, maxPending)
	}
	h := startWorker(t, nil)
	reader := h.openSSE("reader")
	stuck := h.stalledSSE("stuck")
	h.waitJoins(2)

	// Before anything waits in the worker the kernel takes the server's
	// send buffer (up to tcp_wmem's max) and the stalled client's receive
	// buffer, and evio holds one hand-over (at most max_pending) besides
	// the worker's own pending bytes: push twice all of that.
	budget := 2 * (tcpWmemMax(t) + 2*(64<<10) + 2*maxPending)
	body := fmt.Appendf(nil, `{"data":"%s"}`, bytes.Repeat([]byte("y"), 32<<10))
	var frame []byte
	base := nowID()
	pushed := 0
	for i := uint64(1); pushed <= budget; i++ {
		frame = appendDeliverIDs(frame[:0], []string{"stuck", "reader"}, base+i, body)
		h.send(frame)
		// In step with the reader, so nothing ever waits for it: it
		// must not be dropped, and the stalled client's message was
		// handled before the reader's.
		ev := sseEvent(base+i, body)
		reader.readEvent(ev)
		pushed += len(ev)
	}
	// The stalled client dropped and closed, the reader open.
	h.countsWhere(func(c ipc.Counts) bool { return c.SlowConsumers == 1 && c.Conns == 1 })
	stuck.readToEnd()
	// The reader still takes live messages.
	h.deliverTo("reader", base+1<<20, body)
	reader.readEvent(sseEvent(base+1<<20, body))
}

// appendDeliverIDs appends a Deliver frame of one message to several ids.
func appendDeliverIDs(dst []byte, ids []string, msgID uint64, body []byte) []byte {
	dst, start := ipc.Begin(dst, ipc.TypeDeliver)
	dst = ipc.AppendMsgHead(dst, msgID, ipc.KindIDs, "")
	dst = ipc.AppendUvarint(dst, uint64(len(ids)))
	for _, id := range ids {
		dst = ipc.AppendString(dst, id)
	}
	return ipc.End(ipc.AppendBytes(dst, body), start)
}

// tcpWmemMax is net.ipv4.tcp_wmem's max: how far the kernel lets a TCP
// send buffer grow.
func tcpWmemMax(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	n, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatalf("tcp_wmem %q: %v", b, err)
	}
	return n
}

// readEvent reads one SSE event, skipping heartbeats ahead of it, and fails
// unless it is want.
func (c *rawConn) readEvent(want []byte) {
	c.t.Helper()
	got := c.readUntil(want[len(want)-min(len(want), 32):])
	for bytes.HasPrefix(got, hbSSE) {
		got = got[len(hbSSE):]
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("read %.80q..., want %.80q...", got, want)
	}
}

// readToEnd reads until the server ends the connection, as a client sees it:
// end of stream, or a reset. A read that times out (SO_RCVTIMEO) means the
// connection is still open, and fails the test.
func (c *rawConn) readToEnd() {
	c.t.Helper()
	n := 0
	for {
		m, err := readSock(c.fd, c.buf)
		switch {
		case err == syscall.EAGAIN:
			c.t.Fatalf("connection still open after %d bytes: the read timed out", n)
		case err == syscall.ECONNRESET || err == nil && m == 0:
			return
		case err != nil:
			c.t.Fatalf("read after %d bytes: %v", n, err)
		}
		n += m
	}
}

// dialRequests opens a raw client for each request, sends it, and appends
// the descriptors to fds; with room in fds it allocates nothing.
func (h *harness) dialRequests(fds []int, reqs [][]byte) []int {
	addr := &syscall.SockaddrInet4{Port: h.port, Addr: [4]byte{127, 0, 0, 1}}
	for _, req := range reqs {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			h.t.Fatal(err)
		}
		fds = append(fds, fd)
		if err := syscall.Connect(fd, addr); err != nil {
			h.t.Fatal(err)
		}
		if _, err := syscall.Write(fd, req); err != nil {
			h.t.Fatal(err)
		}
	}
	return fds
}

// BenchmarkIdleConnBytes reports the worker's Go heap per idle SSE
// connection (subscribed, heartbeat scheduled), measured in-process with a
// client that keeps nothing on the Go heap per connection.
func BenchmarkIdleConnBytes(b *testing.B) {
	b.Run("sse", func(b *testing.B) {
		for range b.N {
			heap, allocs := idleConnBytes(b, nil, func(j int) string { return "GET /sse/idle" + strconv.Itoa(j) + " HTTP/1.1\r\n\r\n" })
			reportIdleConns(b, heap, allocs)
		}
	})
	b.Run("sse+auth", func(b *testing.B) { // a token checked, then nothing of it kept
		for range b.N {
			heap, allocs := idleConnBytes(b, withAuth, authedSSE)
			reportIdleConns(b, heap, allocs)
		}
	})
}

func reportIdleConns(b *testing.B, heap, allocs float64) {
	b.ReportMetric(heap, "heap-bytes/conn")
	b.ReportMetric(allocs, "allocs/conn")
}

// benchIdleConns opens 5000 connections, each sending request(j), and
// reports the worker's heap and allocations per connection once all are
// subscribed.
// idleConnBytes opens 5,000 idle connections with request(j) to a worker
// set up by mut and returns the live heap and allocations they cost each.
func idleConnBytes(b testing.TB, mut func(*config.Options), request func(j int) string) (heap, allocs float64) {
	const n = 5000
	h := startWorker(b, mut)
	fds := make([]int, 0, n)
	reqs := make([][]byte, n)
	for j := range reqs {
		reqs[j] = []byte(request(j))
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fds = h.dialRequests(fds, reqs)
	h.waitJoins(n)
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == n })
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(reqs) // built before the first reading: not counted either way
	for _, fd := range fds {
		syscall.Close(fd)
	}
	// Its worker lets them go before the next measurement begins, or their
	// memory would be freed during it.
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == 0 })
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n, float64(after.Mallocs-before.Mallocs) / n
}

// A replay that left messages out announces the gap first, in each
// transport's own way, then what it has: an SSE "gap" event, a stream
// line, a WebSocket text frame, the first element of a long-poll answer.
func TestGapAnnouncedOnEveryTransport(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	h.gapAt.Store(15)
	gap := `{"gap":{"after":5,"before":15}}`
	for _, tc := range []struct {
		req, gap, msg string
	}{
		{"GET /sse/g1?since=5 HTTP/1.1\r\n\r\n", "event: gap\nid: 14\ndata: " + gap + "\n\n", "id: 15\ndata: \"r\"\n\n"},
		{"GET /stream/g2?since=5 HTTP/1.1\r\n\r\n", "20\r\n" + gap + "\n\r\n", "4\r\n\"r\"\n\r\n"},
		{"GET /stream/g3?since=5 HTTP/1.0\r\n\r\n", gap + "\n", "\"r\"\n"},
		{"GET /lp/g4?since=5 HTTP/1.1\r\n\r\n", "[" + gap + ",", "\"r\"]"},
		{"GET /ws/g5?since=5 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
			string(appendWSText(nil, []byte(gap))), string(appendWSText(nil, []byte(`"r"`)))},
	} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(tc.req))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var got []byte
		buf := make([]byte, 4096)
		for !bytes.Contains(got, []byte(tc.msg)) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("%.20q: %v after %q", tc.req, err, got)
			}
			got = append(got, buf[:n]...)
		}
		if g, m := bytes.Index(got, []byte(tc.gap)), bytes.Index(got, []byte(tc.msg)); g < 0 || g > m {
			t.Errorf("%.20q: got %q, want %q before %q", tc.req, got, tc.gap, tc.msg)
		}
		c.Close()
	}
}

// A connection that came without a cursor missed nothing: it is never
// told of a gap, even when the manager's replay names one.
func TestNoGapForAFreshConnection(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	h.gapAt.Store(nowID() + 1_000_000) // a gap past any connect cursor
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /stream/fresh HTTP/1.1\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(`"r"`)) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%v after %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
	if bytes.Contains(got, []byte("gap")) {
		t.Errorf("a fresh connection was told of a gap: %q", got)
	}
}

// Answers that carry client-chosen bytes cannot be taken for something
// else: a JSONP body starts with /**/, not with the callback the client
// named (Rosetta Flash), and every comet answer with a body says nosniff
// (long-poll, JSONP, NDJSON stream, SSE, HEAD).
func TestAnswersAreNotSniffable(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	c := h.dialRaw()
	joined := h.joins.Load()
	c.write([]byte("GET /lp/j?since=5&callback=cb.x HTTP/1.1\r\nHost: x\r\n\r\n"))
	h.waitJoins(joined + 1)
	h.deliverTo("j", 7, []byte(`{"id":7,"data":1}`))
	want := `/**/cb.x([{"id":7,"data":1}]);`
	got := string(c.readUntil([]byte(");")))
	head, body, _ := strings.Cut(got, "\r\n\r\n")
	if body != want || !strings.Contains(head, "\r\nContent-Length: "+strconv.Itoa(len(want))+"\r\n") {
		t.Errorf("JSONP answer %q, want the body %q", got, want)
	}
	for _, tc := range []struct{ name, req string }{
		{"JSONP", ""}, // the answer above
		{"long-poll", "GET /lp/p?since=5 HTTP/1.1\r\n\r\n"},
		{"HEAD long-poll", "HEAD /lp/p HTTP/1.1\r\n\r\n"},
		{"stream", "GET /stream/s HTTP/1.1\r\n\r\n"},
		{"stream, HTTP/1.0", "GET /stream/s HTTP/1.0\r\n\r\n"},
		{"SSE", "GET /sse/s HTTP/1.1\r\n\r\n"},
	} {
		if tc.req != "" {
			c := h.dialRaw()
			joined := h.joins.Load()
			c.write([]byte(tc.req))
			if !strings.HasPrefix(tc.req, "HEAD") {
				h.waitJoins(joined + 1)
			}
			if strings.HasPrefix(tc.req, "GET /lp/") {
				h.deliverTo("p", 7, []byte(`{"id":7,"data":1}`))
			}
			head = c.readHeadOnly()
		}
		if !strings.Contains(head, "\r\nX-Content-Type-Options: nosniff\r\n") {
			t.Errorf("%s: head %q without X-Content-Type-Options: nosniff", tc.name, head)
		}
	}
}

// readHeadOnly reads until an answer head is complete and returns it; what
// follows it is read too, and dropped.
func (c *rawConn) readHeadOnly() string {
	got := 0
	for {
		i := bytes.Index(c.buf[:got], []byte("\r\n\r\n"))
		if i >= 0 {
			return string(c.buf[:i])
		}
		n, err := readSock(c.fd, c.buf[got:])
		if err != nil || n == 0 {
			c.t.Fatalf("read: %v after %q", err, c.buf[:got])
		}
		got += n
	}
}
