package worker

import (
	"net/http"
	"net/http/httptest"
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
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Write([]byte(`{"allow":false}`))
	}))
	defer app.Close()
	defer close(release)
	h := startWorker(b, func(o *config.Options) {
		o.Hooks.Connect = app.URL
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
