package worker

import (
	"bytes"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/ipc"
	"golang.org/x/sys/unix"
)

// A draining worker answers every connection it holds: a stream gets its
// transport's reconnect hint, and one it has not answered yet - nothing
// sent, or half a request head - gets a 503 with Retry-After, never a bare
// FIN.
func TestDrainAnswersConnectionsNotAnsweredYet(t *testing.T) {
	h := startWorker(t, noHeartbeat)
	stream := h.openSSE("s")
	h.waitJoins(1)
	silent := h.dialRaw()
	half := h.dialRaw()
	half.write([]byte("GET /sse/h HTTP/1.1\r\nHost: x\r\n"))
	h.countsWhere(func(c ipc.Counts) bool { return c.Conns == 3 })

	h.send(ipc.AppendFrame(nil, ipc.TypeDrain, ipc.AppendUvarint(nil, 0)))
	for name, c := range map[string]*rawConn{"a connection that sent nothing": silent, "half a request head": half} {
		if got := c.readAll(); !bytes.Equal(got, errRetryNow.resp) {
			t.Errorf("%s got %q, want the 503 %q", name, got, errRetryNow.resp)
		}
	}
	if got := stream.readAll(); !bytes.Equal(got, sseHandOff) {
		t.Errorf("the stream got %q, want %q", got, sseHandOff)
	}
	if !bytes.Contains(errRetryNow.resp, []byte("HTTP/1.1 503 ")) || !bytes.Contains(errRetryNow.resp, []byte("\r\nRetry-After: 0\r\n")) {
		t.Errorf("the hand-over answer is %q", errRetryNow.resp)
	}
}

// Leaving the port's SO_REUSEPORT group replaces the listener in place with
// one whose accept says EAGAIN, as evio may still call accept on that
// descriptor in the batch of events that held the drain (any other error
// stops its loop and closes every client). Nothing connects any more.
func TestLeftListenerAcceptSaysEAGAIN(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	other, err := net.Listen("tcp", "127.0.0.1:0") // another worker's, in this process
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	if err := leaveReusePortGroup(port); err != nil {
		t.Fatal(err)
	}
	if _, _, err := unix.Accept(fd); err != unix.EAGAIN {
		t.Errorf("accept on the left listener: %v, want EAGAIN", err)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); err == nil {
		c.Close()
		t.Errorf("a connection reached the port after the worker left it")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after leaving: %v, want connection refused", err)
	}
	if c, err := net.Dial("tcp", other.Addr().String()); err != nil {
		t.Errorf("another port's listener was replaced too: %v", err)
	} else {
		c.Close()
	}
}
