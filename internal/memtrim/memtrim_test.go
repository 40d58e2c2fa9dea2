package memtrim

import (
	"testing"
	"time"
)

func TestTrimsOnceTheCountSettles(t *testing.T) {
	trims := 0
	tr := &Trimmer{Settle: 5 * time.Second, Min: 100, trim: func() { trims++ }}
	at := func(s int, n int) bool { return tr.Observe(time.Duration(s)*time.Second, n) }
	for s, n := range []int{0, 50, 150, 400, 900, 1000, 1000, 1000, 1000, 1000, 1000, 1010, 1020} {
		if at(s, n) && s != 10 {
			t.Errorf("trimmed at %ds (count %d)", s, n)
		}
	}
	if trims != 1 {
		t.Fatalf("%d trims while connecting and settling, want 1 (5 s after the last big move)", trims)
	}
	for s := 20; s < 40; s++ { // small changes: nothing
		at(s, 1000+s%7)
	}
	at(40, 10) // mass disconnect
	if !at(46, 10) || trims != 2 {
		t.Errorf("no trim after a mass disconnect settled (%d trims)", trims)
	}
}
