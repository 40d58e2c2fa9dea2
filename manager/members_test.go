package manager

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Within a window a join and a leave of one id cancel; a second
// connection of a member is no news; a storm is one message that says how
// many when it cannot name them all.
func TestMembersCoalesce(t *testing.T) {
	ms := newMembers()
	now := time.Unix(1e9, 0)
	take := func() []announcement {
		now = now.Add(time.Hour) // every window over, nothing paced
		return ms.take(now)
	}
	ms.note("room", "a", true, now)
	ms.note("room", "a", true, now) // a second connection
	ms.note("room", "b", true, now)
	ms.note("room", "b", false, now) // joined and left: nothing
	ms.note("room", "c", false, now) // never joined: nothing
	ann := take()
	if len(ann) != 1 || string(ann[0].data) != `{"presence":{"join":"a"}}` {
		t.Fatalf("got %q", ann)
	}
	ms.note("room", "a", false, now) // one of two connections: still a member
	if ann := take(); len(ann) != 0 {
		t.Fatalf("a still has a connection: %q", ann)
	}
	ms.note("room", "a", false, now)
	if ann := take(); len(ann) != 1 || string(ann[0].data) != `{"presence":{"leave":"a"}}` {
		t.Fatalf("got %q", ann)
	}
	for i := range maxAnnounced + 5 {
		ms.note("room", fmt.Sprintf("u%03d", i), true, now)
	}
	ann = take()
	if len(ann) != 1 || !strings.Contains(string(ann[0].data), `"joined":105`) || strings.Count(string(ann[0].data), `"u`) != maxAnnounced {
		t.Fatalf("a storm of %d joins: %s", maxAnnounced+5, ann[0].data)
	}
	if len(ms.conns["room"]) != maxAnnounced+5 {
		t.Errorf("%d members kept", len(ms.conns["room"]))
	}
}

// A channel that has something to say in every window has its window
// doubled, up to maxMemberGap, and gets memberWindow back once quiet; what
// waits is said, coalesced, in its next message.
func TestMembersPacedPerChannel(t *testing.T) {
	ms := newMembers()
	now := time.Unix(1e9, 0)
	var said []time.Duration // when "room" spoke, from the start
	start := now
	i := 0
	for now.Sub(start) < 10*time.Second { // a join every 10 ms for 10 s
		ms.note("room", fmt.Sprintf("u%d", i), true, now)
		i++
		if i%10 == 0 {
			if ann := ms.take(now); len(ann) > 0 {
				said = append(said, now.Sub(start))
			}
		}
		now = now.Add(10 * time.Millisecond)
	}
	// 100 ms, then 200, 400, 800, 1600, then every 2 s: 9 messages, not 100.
	if len(said) < 6 || len(said) > 10 {
		t.Fatalf("a room joined 100 times a second spoke %d times in 10 s: %v", len(said), said)
	}
	for k := 1; k < len(said); k++ {
		if gap := said[k] - said[k-1]; gap > maxMemberGap+memberWindow {
			t.Errorf("%v between announcements, more than %v", gap, maxMemberGap)
		}
	}
	// Nothing lost: the held changes come when the window ends.
	now = now.Add(maxMemberGap)
	ann := ms.take(now)
	if len(ann) != 1 || !strings.Contains(string(ann[0].data), fmt.Sprintf(`"u%d"`, i-1)) {
		t.Fatalf("the held joins: %q", ann)
	}
	// Quiet for a window: back to memberWindow.
	now = now.Add(2*maxMemberGap + memberWindow)
	ms.note("room", "late", true, now)
	if ann := ms.take(now); len(ann) != 1 || string(ann[0].data) != `{"presence":{"join":"late"}}` {
		t.Fatalf("after a quiet while: %q", ann)
	}
}

// A flood over many rooms publishes at most maxAnnouncements a window,
// the longest waiting first, and holds the rest for the next windows.
func TestMembersFloodBudget(t *testing.T) {
	ms := newMembers()
	now := time.Unix(1e9, 0)
	const rooms = 3*maxAnnouncements + 10
	for r := range rooms {
		ms.note(fmt.Sprintf("room%d", r), "x", true, now.Add(time.Duration(r)*time.Microsecond))
	}
	seen := map[string]bool{}
	for w := range 4 {
		now = now.Add(memberWindow)
		ann := ms.take(now)
		if w < 3 && len(ann) != maxAnnouncements || w == 3 && len(ann) != 10 {
			t.Fatalf("window %d: %d announcements", w, len(ann))
		}
		for _, a := range ann {
			if seen[a.channel] {
				t.Fatalf("%s announced twice", a.channel)
			}
			seen[a.channel] = true
		}
		if w == 0 && !seen["room0"] {
			t.Errorf("the longest waiting room was not first")
		}
	}
	if ms.announced != rooms || ms.held != 2*maxAnnouncements+10+maxAnnouncements+10+10 {
		t.Errorf("announced %d, held %d", ms.announced, ms.held)
	}
}
