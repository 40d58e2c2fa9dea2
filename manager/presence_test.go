package manager

import "testing"

func TestPresenceCountsPerLink(t *testing.T) {
	p := newPresence(42)
	a, b := p.hash([]byte("alice")), p.hash([]byte("bob"))
	if a == b || p.hashString("alice") != a {
		t.Fatal("hash")
	}
	links := func(h uint64) (ls []linkID) {
		p.each(h, func(l linkID) { ls = append(ls, l) })
		return ls
	}
	p.add(a, 1)
	p.add(a, 2) // alice on two workers
	p.add(b, 1)
	if got := links(a); len(got) != 2 || p.len() != 2 {
		t.Fatalf("alice on %v, %d names", got, p.len())
	}
	p.remove(a, 2)
	if got := links(a); len(got) != 1 || got[0] != 1 {
		t.Fatalf("alice on %v after leaving 2", got)
	}
	// Two names colliding on one link: the link stays a target until both
	// have gone.
	p.add(b, 1)
	p.remove(b, 1)
	if got := links(b); len(got) != 1 {
		t.Fatalf("bob unrouted while a colliding name is still held: %v", got)
	}
	p.remove(b, 1)
	if got := links(b); len(got) != 0 {
		t.Fatalf("bob still routed to %v", got)
	}
	p.add(b, 3)
	p.add(b, 4)
	p.add(b, 4)
	p.dropLink(4)
	if got := links(b); len(got) != 1 || got[0] != 3 {
		t.Fatalf("after dropping link 4: %v", got)
	}
	// A hand-over carries the counts.
	next := newPresence(42)
	for _, l := range []linkID{1, 3} {
		for _, hc := range p.heldBy(l) {
			for range hc.Count {
				next.add(hc.Hash, l)
			}
		}
	}
	if next.one.len() != p.one.len() || len(next.many) != len(p.many) {
		t.Errorf("hand-over: %d/%d entries, want %d/%d", next.one.len(), len(next.many), p.one.len(), len(p.many))
	}
}
