package manager

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
)

type eventList struct{ got []hooks.Event }

func (l *eventList) Add(evs ...hooks.Event) { l.got = append(l.got, evs...) }

func (l *eventList) said() string {
	var s []string
	for _, e := range l.got {
		s = append(s, strings.Join(strings.Fields(e.Type+" "+e.Channel+" "+e.ID+" "+e.Reason), " "))
	}
	l.got = nil
	return strings.Join(s, ", ")
}

// eventsHub is a hub with events on (linger 1 s), two links, and a clock
// the test moves.
func eventsHub() (*hub, *eventList, *time.Time, [2]*proc) {
	h := testHub()
	l := &eventList{}
	h.ev = newEvents(l, time.Second, false)
	now := time.Unix(1800000000, 0)
	h.now = func() time.Time { return now }
	var ps [2]*proc
	for i := range ps {
		ps[i] = &proc{}
		h.addLink(ps[i])
	}
	return h, l, &now, ps
}

func presenceFrame(recs ...func([]byte) []byte) []byte {
	var b []byte
	for _, r := range recs {
		b = r(b)
	}
	return b
}

func has(id string) func([]byte) []byte {
	return func(b []byte) []byte { return ipc.AppendName(b, ipc.OpHas, id) }
}
func sub(ch string) func([]byte) []byte {
	return func(b []byte) []byte { return ipc.AppendName(b, ipc.OpSub, ch) }
}
func unsub(ch string) func([]byte) []byte {
	return func(b []byte) []byte { return ipc.AppendName(b, ipc.OpUnsub, ch) }
}
func bye(id string, why ipc.Reason) func([]byte) []byte {
	return func(b []byte) []byte { return ipc.AppendBye(b, why, id) }
}

// A name's first connection is told at once; its last going only once
// the linger is over with none back, whatever link it comes back on.
func TestEventsLinger(t *testing.T) {
	h, l, now, ps := eventsHub()
	h.presence(ps[0], presenceFrame(has("a"), sub("c"), has("a")))
	if got := l.said(); got != "connect a, occupied c" {
		t.Errorf("told %q", got)
	}
	h.presence(ps[0], presenceFrame(bye("a", ipc.ByeHandover), unsub("c"), bye("a", ipc.ByeHandover)))
	*now = now.Add(500 * time.Millisecond)
	h.eventsTick(false)
	h.presence(ps[1], presenceFrame(has("a"), sub("c"))) // back, on the other worker, within the linger
	*now = now.Add(2 * time.Second)
	h.eventsTick(false)
	if got := l.said(); got != "" {
		t.Errorf("a hand-over within the linger told %q", got)
	}
	h.presence(ps[1], presenceFrame(unsub("c"), bye("a", ipc.ByeSlow)))
	*now = now.Add(999 * time.Millisecond)
	h.eventsTick(false)
	if got := l.said(); got != "" {
		t.Errorf("told %q before the linger was over", got)
	}
	*now = now.Add(time.Millisecond)
	h.eventsTick(false)
	if got := l.said(); got != "vacated c, disconnect a slow" {
		t.Errorf("told %q", got)
	}
}

// A dead worker's names go with worker_lost; a reload hands what is held
// and what lingers to the next hub, which tells on from there.
func TestEventsWorkerLostAndHandOver(t *testing.T) {
	h, l, now, ps := eventsHub()
	h.presence(ps[0], presenceFrame(has("a"), sub("c")))
	h.presence(ps[1], presenceFrame(has("b"), sub("c")))
	h.presence(ps[0], presenceFrame(has("gone"), bye("gone", ipc.ByeExpired)))
	l.said()
	*now = now.Add(time.Millisecond)
	h.dropLink(ps[1])
	st, _ := h.snapshot([]linkID{ps[0].link})

	next, nl, nnow, nps := eventsHub()
	*nnow = *now
	next.restoreEvents(st.Events, map[int]linkID{0: nps[1].link})
	*nnow = nnow.Add(time.Second)
	next.eventsTick(false)
	if got := nl.said(); got != "disconnect gone expired, disconnect b worker_lost" {
		t.Errorf("after the hand-over, told %q", got)
	}
	next.presence(nps[1], presenceFrame(unsub("c"), bye("a", ipc.ByeClosed)))
	next.eventsTick(true)
	if got := nl.said(); got != "vacated c, disconnect a closed" {
		t.Errorf("told %q", got)
	}
	if len(l.got) != 0 {
		t.Errorf("the old hub told %v after its snapshot", l.got)
	}
}

// BenchmarkEventsBytesPerID: what hooks.events costs the manager per
// connected id (one connection each, on one of two workers, no channel).
func BenchmarkEventsBytesPerID(b *testing.B) {
	const n = 100000
	for range b.N {
		var before, after runtime.MemStats
		for _, on := range []bool{false, true} {
			h, _, _, ps := eventsHub()
			if !on {
				h.ev = newEvents(nil, 0, false) // channel names only
			}
			runtime.GC()
			runtime.ReadMemStats(&before)
			var frame []byte
			for i := range n {
				frame = ipc.AppendName(frame, ipc.OpHas, fmt.Sprintf("user-%07d", i))
				if len(frame) > 60000 {
					h.presence(ps[i%2], frame)
					frame = frame[:0]
				}
			}
			h.presence(ps[0], frame)
			runtime.GC()
			runtime.ReadMemStats(&after)
			per := float64(after.HeapAlloc-before.HeapAlloc) / n
			if on {
				b.ReportMetric(per, "B/id-with-events")
			} else {
				b.ReportMetric(per, "B/id-without")
			}
			runtime.KeepAlive(h)
		}
	}
}

// BenchmarkDisconnectLookup: what POST /disconnect looks up in the manager
// (the id's connections, for the answer) costs the same among 1,000 ids
// and among 1,000,000: a hash table probe (ns/op at each size).
func BenchmarkDisconnectLookup(b *testing.B) {
	for _, n := range []int{1000, 1000000} {
		b.Run(fmt.Sprintf("ids=%d", n), func(b *testing.B) {
			h := testHub()
			for i := range n {
				h.ids.add(h.ids.hashString(fmt.Sprintf("user-%07d", i)), 0)
			}
			d := ipc.Disconnect{ID: "user-0000500", Reason: "x", Reconnect: true}
			b.ResetTimer()
			for range b.N {
				if h.disconnect(&d) != 1 {
					b.Fatal("not found")
				}
			}
		})
	}
}
