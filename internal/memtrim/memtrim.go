// Package memtrim returns a process's free memory to the OS once the count
// that drives its heap has changed a lot and then settled. The Go runtime
// keeps freed pages (the garbage of a connection storm, a routing table's
// old copy after it grew) and returns them only gradually; holding a million
// connections in 50-odd processes, that lag is tens of megabytes.
package memtrim

import (
	"runtime/debug"
	"time"
)

// Trimmer watches a count (connections, routed ids) through Observe.
type Trimmer struct {
	Settle time.Duration // how long the count must stay put before a trim
	Min    int           // how much it must have moved since the last trim
	at     int
	due    time.Duration
	trim   func() // debug.FreeOSMemory; a test seam
}

// Observe takes the count at time now (any monotonic clock) and trims when
// it is due. It is meant for a periodic housekeeping call (once a second):
// a trim is a full collection, a few milliseconds at these heap sizes.
func (t *Trimmer) Observe(now time.Duration, n int) (trimmed bool) {
	if d := n - t.at; d >= t.Min || d <= -t.Min {
		t.due = now + t.Settle // moved a lot: trim once it settles
		t.at = n
	}
	if t.due == 0 || now < t.due {
		return false
	}
	t.due = 0
	if t.trim == nil {
		t.trim = debug.FreeOSMemory
	}
	t.trim()
	return true
}
