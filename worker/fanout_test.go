package worker

import (
	"bytes"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/loopback"
	"github.com/megacomet/megacomet/ipc"
)

// fanoutConns is how many clients the fan-out benchmarks hold: enough that
// every socket is cold in the CPU's caches, as at a million.
const fanoutConns = 5000

// needFanoutFiles skips a benchmark that cannot open both ends of
// fanoutConns connections under this process's open-file limit (Go raises
// the soft limit to the hard one at start).
func needFanoutFiles(b testing.TB) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < 2*fanoutConns+256 {
		b.Skipf("needs %d open files, the limit is %d", 2*fanoutConns+256, rl.Cur)
	}
}

// BenchmarkBroadcastFanout is a broadcast through a real worker loop: one
// Deliver frame in, an SSE event out to each of 5,000 connections, read by
// clients in this process (so both ends' kernel work is in the figure, as
// with megatest on the same box). ns/conn is wall time per connection; a
// million connections at 2 s needs 2,000 over the whole box.
func BenchmarkBroadcastFanout(b *testing.B) {
	needFanoutFiles(b)
	// no heartbeat comes between the events being read
	h := startWorker(b, func(o *config.Options) { o.Comet.Heartbeat = config.Duration(time.Hour) })
	fds := openSSEFds(b, h, fanoutConns)
	body := []byte(`{"hello":"world"}`)
	buf := make([]byte, 4096)
	id := nowID()
	cpu := processCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id++
		frame, start := ipc.Begin(nil, ipc.TypeDeliver)
		frame = ipc.AppendMsgHead(frame, id, ipc.KindBroadcast, "")
		frame = ipc.End(ipc.AppendBytes(frame, body), start)
		h.send(frame)
		want := sseEvent(id, body)
		for _, fd := range fds {
			if got := readFull(b, fd, buf[:len(want)]); !bytes.Equal(got, want) {
				b.Fatalf("got %q, want %q", got, want)
			}
		}
	}
	reportPerConn(b, cpu)
}

// BenchmarkLoopbackFloor is the kernel's part of a fan-out alone: the same
// event written to and read from each of 5,000 loopback TCP connections
// by one thread, with no event loop and no wake-ups. A broadcast cannot go
// faster than this per connection per core.
func BenchmarkLoopbackFloor(b *testing.B) {
	needFanoutFiles(b)
	pairs, err := loopback.Open(fanoutConns)
	if err != nil {
		b.Fatal(err)
	}
	defer loopback.Close(pairs)
	msg := sseEvent(nowID(), []byte(`{"hello":"world"}`))
	buf := make([]byte, 4096)
	cpu := processCPU()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := loopback.Round(pairs, msg, buf); err != nil {
			b.Fatal(err)
		}
	}
	reportPerConn(b, cpu)
}

// reportPerConn reports wall time and CPU time (user and system, every
// thread of this process: the worker's and the clients') per connection
// reached, since cpu was taken.
func reportPerConn(b *testing.B, cpu time.Duration) {
	n := float64(b.N * fanoutConns)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/conn")
	b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/n, "cpu-ns/conn")
}

func processCPU() time.Duration { return loopback.CPU() }

// openSSEFds opens n raw SSE clients without a Go object each and reads
// their openings.
func openSSEFds(b testing.TB, h *harness, n int) []int {
	reqs := make([][]byte, n)
	for j := range reqs {
		reqs[j] = []byte("GET /sse/fan" + strconv.Itoa(j) + " HTTP/1.1\r\n\r\n")
	}
	fds := make([]int, 0, n)
	b.Cleanup(func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	})
	fds = h.dialRequests(fds, reqs)
	h.waitJoins(int64(n))
	tv := syscall.Timeval{Sec: 5}
	buf := make([]byte, 4096)
	for _, fd := range fds {
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		readSSEOpening(b, fd, buf)
	}
	return fds
}
