package worker

import (
	"net"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

// BenchmarkParkedConnBytes: what a connection waiting for the connect
// hook costs the worker, beside an idle subscribed one (BenchmarkIdleConnBytes).
// The application never answers while it is measured; calls in flight
// (hooks.Concurrency) are part of the cost, spread over the connections.
func BenchmarkParkedConnBytes(b *testing.B) {
	for range b.N {
		heap, allocs := parkedConnBytes(b)
		b.ReportMetric(heap, "heap-bytes/conn")
		b.ReportMetric(allocs, "allocs/conn")
	}
}

func parkedConnBytes(b testing.TB) (heap, allocs float64) {
	const n = 3000 // under hooks.QueueMax, so every one waits
	// The application takes each call's connection and never answers: a
	// bare listener, so that no HTTP server's buffers in this process are
	// counted as the worker's.
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer app.Close()
	go func() {
		var held []net.Conn
		for {
			c, err := app.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	h := startWorker(b, func(o *config.Options) {
		o.Hooks.Connect = "http://" + app.Addr().String()
		o.Hooks.Timeout = config.Duration(time.Minute)
	})
	reqs := make([][]byte, n)
	for j := range reqs {
		reqs[j] = []byte("GET /sse/parked" + strconv.Itoa(j) + " HTTP/1.1\r\nCookie: s=abcdef\r\n\r\n")
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fds := h.dialRequests(make([]int, 0, n), reqs)
	h.countsWhere(func(c ipc.Counts) bool { return c.HookWaiting == n })
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(reqs)
	for _, fd := range fds {
		syscall.Close(fd)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == 0 })
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n, float64(after.Mallocs-before.Mallocs) / n
}
