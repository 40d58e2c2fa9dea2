package megatest

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// pinger measures the server's responsiveness while it holds the load: a
// GET /ping every interval, each on a new connection, so the kernel spreads
// them over all the server's workers and each answer includes the accept.
type pinger struct {
	mu     sync.Mutex
	h      hist
	n      int64
	errors int64
}

func (p *pinger) run(ctx context.Context, url string, every time.Duration) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		ok := false
		if req, err := http.NewRequestWithContext(ctx, "GET", url, nil); err == nil {
			if resp, err := hc.Do(req); err == nil {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
				resp.Body.Close()
				ok = resp.StatusCode == 200 && string(body) == "pong"
			}
		}
		if ctx.Err() != nil {
			return // the run is over: not the server's fault
		}
		p.mu.Lock()
		if ok {
			p.n++
			p.h.add(uint64(time.Since(start) / time.Microsecond))
		} else {
			p.errors++
		}
		p.mu.Unlock()
	}
}

// latency returns the measured round trips.
func (p *pinger) latency() (LatencyMs, int64, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return latencyOf(&p.h), p.n, p.errors
}
