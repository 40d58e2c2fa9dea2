package worker

import (
	"bytes"
	"testing"

	"github.com/megacomet/megacomet/ipc"
)

// A broadcast to thousands of connections pauses to let the loop's other
// events in; what the manager sent after it waits behind it, so every
// connection still gets every message once and in order. Here a broadcast
// to 5,000 connections, a message to one id, a second broadcast, a message
// to a connection that subscribes while the first broadcast is paused, and
// a third broadcast all arrive in one write.
func TestPausedBroadcastKeepsOrder(t *testing.T) {
	needFanoutFiles(t)
	h := startWorker(t, noHeartbeat)
	fds := openSSEFds(t, h, fanoutConns)
	body := []byte(`{"k":"v"}`)
	id := nowID()
	var frames []byte
	bcast := func() uint64 {
		id++
		f, start := ipc.Begin(nil, ipc.TypeDeliver)
		f = ipc.AppendMsgHead(f, id, ipc.KindBroadcast, "")
		frames = append(frames, ipc.End(ipc.AppendBytes(f, body), start)...)
		return id
	}
	to := func(target string) uint64 {
		id++
		frames = appendDeliver(frames, target, id, body)
		return id
	}
	b1 := bcast()
	m2 := to("fan7") // openSSEFds' ids are fan0, fan1, …
	b3 := bcast()
	h.send(frames)
	late := h.openSSE("late") // subscribes while the first broadcast fans out
	h.waitJoins(fanoutConns + 1)
	frames = nil
	id = max(id, nowID()) // newer than the late one's start cursor
	m4 := to("late")
	b5 := bcast()
	h.send(frames)

	for i, fd := range fds {
		want := append(sseEvent(b1, body), sseEvent(b3, body)...)
		if i == 7 {
			want = append(append(sseEvent(b1, body), sseEvent(m2, body)...), sseEvent(b3, body)...)
		}
		want = append(want, sseEvent(b5, body)...)
		if got := readEvents(t, fd, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("connection fan%d got\n%q\nwant\n%q", i, got, want)
		}
	}
	// The late one's replay (empty: the harness plays a manager with no
	// history) waits behind the paused broadcast like everything else, so
	// it goes live after b3: it gets m4 and b5, nothing twice.
	want := append(sseEvent(m4, body), sseEvent(b5, body)...)
	if got := readEvents(t, late.fd, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("the connection that subscribed during the pause got %q, want %q", got, want)
	}
	// Counts come on the worker's own schedule: wait for one that has
	// counted them all (or more, which fails below).
	c := h.countsWhere(func(c ipc.Counts) bool {
		return c.FanOutPauses > 0 && c.MessagesOut >= uint64(3*fanoutConns+3)
	})
	t.Logf("%d pauses, %d messages out", c.FanOutPauses, c.MessagesOut)
	if c.MessagesOut != uint64(3*fanoutConns+3) {
		t.Errorf("%d messages out, want %d", c.MessagesOut, 3*fanoutConns+3)
	}
}

// readEvents reads n bytes of SSE events from fd, leaving out heartbeats:
// the first one comes at a random point of the interval, even of an hour.
func readEvents(t testing.TB, fd int, n int) []byte {
	t.Helper()
	var got []byte
	buf := make([]byte, 1)
	for len(got) < n {
		got = append(got, readFull(t, fd, buf)...)
		got = bytes.TrimPrefix(got, hbSSE)
		if i := bytes.Index(got, append([]byte("\n\n"), hbSSE...)); i >= 0 {
			got = append(got[:i+2], got[i+2+len(hbSSE):]...)
		}
	}
	return got
}
