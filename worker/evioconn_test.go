package worker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/check"
)

// onLoop runs fn on the worker's loop (at its next tick) and waits for it:
// the only safe way for a test to look at loop state.
func (h *harness) onLoop(fn func()) {
	h.t.Helper()
	done := make(chan struct{})
	var once atomic.Bool
	hook := func() {
		if once.CompareAndSwap(false, true) {
			fn()
			close(done)
		}
	}
	h.w.tickHook.Store(&hook)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		h.t.Fatal("the loop did not tick")
	}
	h.w.tickHook.Store(nil)
}

// A connection that fell behind leaves evio holding an output buffer of up
// to 4 KiB after the backlog is written (evio keeps small ones for reuse);
// the worker lets it go by the connection's next heartbeat, or every
// client that was ever slow would cost 4 KiB for as long as it stays.
func TestBacklogBufferIsReleased(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Comet.Heartbeat = config.Duration(300 * time.Millisecond) })
	c := h.dialRaw()
	syscall.SetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	c.write([]byte("GET /sse/slow HTTP/1.1\r\n\r\n"))
	h.waitJoins(1)
	var cc *conn
	h.onLoop(func() {
		cc = h.w.byID.getString("slow")
		// Small socket buffers on both sides: a few messages fill them,
		// and the first that does not fit is the whole backlog.
		syscall.SetsockoptInt(evioFD(cc.ec), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
	})
	body := []byte(`"` + strings.Repeat("x", 200) + `"`)
	behind := func() (b bool) {
		h.onLoop(func() { b = cc.pendingLen()+evioUnsent(cc.ec) > 0 })
		return b
	}
	id := nowID()
	for i := 0; !behind(); i++ { // one at a time until output waits: a backlog of one message
		if i > 2000 {
			t.Fatal("the client never fell behind")
		}
		id++
		h.deliverTo("slow", id, body)
	}
	// Now the client reads everything, and the backlog drains.
	buf := make([]byte, 1<<20)
	check.For(t, time.Minute, func() error {
		syscall.SetNonblock(c.fd, true)
		for {
			if n, err := syscall.Read(c.fd, buf); n <= 0 || err != nil {
				break
			}
		}
		if behind() {
			return fmt.Errorf("output still waits")
		}
		return nil
	})
	check.For(t, time.Minute, func() error {
		var held int
		h.onLoop(func() { held = cap(*(*[]byte)(unsafeOut(cc))) })
		if held != 0 {
			syscall.Read(c.fd, buf) // the heartbeats
			return fmt.Errorf("evio still holds a %d-byte output buffer", held)
		}
		return nil
	})
}
