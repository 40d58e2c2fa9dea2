package manager

import (
	"fmt"
	"strings"
	"testing"
)

// Within a window a join and a leave of one id cancel; a second
// connection of a member is no news; a storm is one message that says how
// many when it cannot name them all.
func TestMembersCoalesce(t *testing.T) {
	ms := newMembers()
	ms.note("room", "a", true)
	ms.note("room", "a", true) // a second connection
	ms.note("room", "b", true)
	ms.note("room", "b", false) // joined and left: nothing
	ms.note("room", "c", false) // never joined: nothing
	ann := ms.take()
	if len(ann) != 1 || string(ann[0].data) != `{"presence":{"join":"a"}}` {
		t.Fatalf("got %q", ann)
	}
	ms.note("room", "a", false) // one of two connections: still a member
	if ann := ms.take(); len(ann) != 0 {
		t.Fatalf("a still has a connection: %q", ann)
	}
	ms.note("room", "a", false)
	if ann := ms.take(); len(ann) != 1 || string(ann[0].data) != `{"presence":{"leave":"a"}}` {
		t.Fatalf("got %q", ann)
	}
	for i := range maxAnnounced + 5 {
		ms.note("room", fmt.Sprintf("u%03d", i), true)
	}
	ann = ms.take()
	if len(ann) != 1 || !strings.Contains(string(ann[0].data), `"joined":105`) || strings.Count(string(ann[0].data), `"u`) != maxAnnounced {
		t.Fatalf("a storm of %d joins: %s", maxAnnounced+5, ann[0].data)
	}
	if len(ms.conns["room"]) != maxAnnounced+5 {
		t.Errorf("%d members kept", len(ms.conns["room"]))
	}
}
