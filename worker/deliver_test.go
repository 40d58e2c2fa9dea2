package worker

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
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
		n, err := syscall.Read(fd, buf[got:])
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
		n, err := syscall.Read(c.fd, c.buf[got:])
		if err != nil || n == 0 {
			c.t.Fatalf("read: %v after %q", err, c.buf[:got])
		}
		got += n
	}
	return c.buf[:got]
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
		m, err := syscall.Read(c.fd, buf)
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
	// the client sees its connection end
	for {
		n, err := syscall.Read(c.fd, c.buf)
		if n == 0 || err != nil {
			break
		}
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
	benchIdleConns(b, func(j int) string { return "GET /sse/idle" + strconv.Itoa(j) + " HTTP/1.1\r\n\r\n" })
}

// benchIdleConns opens 5000 connections, each sending request(j), and
// reports the worker's heap and allocations per connection once all are
// subscribed.
func benchIdleConns(b *testing.B, request func(j int) string) {
	const n = 5000
	for i := 0; i < b.N; i++ {
		h := startWorker(b, nil)
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
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/n, "heap-bytes/conn")
		b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/conn")
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}
