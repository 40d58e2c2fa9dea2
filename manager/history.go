package manager

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"
)

// message is one published message as the manager keeps it for replay.
type message struct {
	id      uint64
	body    []byte // the rendered JSON clients receive
	kind    byte   // ipc.KindIDs, KindChannel or KindBroadcast
	channel string
	to      []string
	expires time.Time
	rings   int // how many rings still hold it
	// presence: a presence announcement (members.go), kept in its
	// channel's presence ring, apart from what applications publish.
	presence bool
}

// ring is the replayable tail of one client id, one channel, or the
// broadcasts: at most history_size messages, oldest first.
type ring struct {
	buf  []*message
	head int
	n    int
	// dropped is the newest id this ring let go of (size, TTL, bytes): a
	// cursor below it may have missed something. emptied: when the ring
	// last ran empty (it is deleted tombstoneFor TTLs after, if still empty).
	dropped uint64
	emptied time.Time
}

func (r *ring) push(m *message, limit int) (evicted *message) {
	if limit <= 0 {
		return nil
	}
	if r.n == limit {
		evicted = r.buf[r.head]
		r.dropped = max(r.dropped, evicted.id)
		r.buf[r.head] = m
		r.head = (r.head + 1) % len(r.buf)
		return evicted
	}
	if r.n == len(r.buf) {
		// grow: unroll into a bigger buffer, capped at the limit
		nb := make([]*message, min(limit, max(4, 2*len(r.buf))))
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = m
	r.n++
	return nil
}

func (r *ring) front() *message {
	if r.n == 0 {
		return nil
	}
	return r.buf[r.head]
}

func (r *ring) popFront() {
	r.dropped = max(r.dropped, r.buf[r.head].id)
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.n--
}

// after appends the ring's messages with id > since, in order.
func (r *ring) after(dst []*message, since uint64) []*message {
	for i := 0; i < r.n; i++ {
		if m := r.buf[(r.head+i)%len(r.buf)]; m.id > since {
			dst = append(dst, m)
		}
	}
	return dst
}

// history keeps recent messages per client id, per channel and for
// broadcasts, bounded by comet.history_size per ring, comet.history_ttl
// and, in total, comet.history_max_bytes of bodies (the oldest go first).
// Not safe for concurrent use: the hub's lock guards it.
//
// Presence announcements have rings of their own, of presenceRing
// messages per channel, and their bodies do not count in the bytes: a
// flood of joins and leaves never pushes out what applications published,
// and their loss is no gap (history.replay). What a client missed of them
// it can read whole from GET /presence?channel=C&ids=1.
type history struct {
	size     int
	ttl      time.Duration
	maxBytes int
	bytes    int    // of the bodies still held (but presence announcements')
	evicted  uint64 // messages let go before their TTL for maxBytes
	byID     map[string]*ring
	byChan   map[string]*ring
	byPres   map[string]*ring // presence announcements, per channel
	bcast    ring
	fifo     []*message // every retained message, oldest first, for expiry
	fifoOff  int
	// A ring that ran empty stays, as a tombstone that remembers what it
	// dropped, for tombstoneFor TTLs; then it goes, and forgotten keeps the
	// newest id any such ring had dropped: a cursor below it, for a key
	// with no ring, may have missed something. horizon is where this
	// history begins: ids up to it may have been issued before a restart,
	// and are gone.
	empties   []emptied
	forgotten uint64
	horizon   uint64
}

// emptied is a ring that ran empty, to be deleted once it has been for
// tombstoneFor TTLs.
type emptied struct {
	rings map[string]*ring
	key   string
	at    time.Time
}

// tombstoneFor is how long an empty ring is kept for what it dropped, in
// multiples of the history's TTL. Past it a client that comes back for
// that key with an older cursor than what any forgotten ring dropped is
// told of a gap that may not be real (nothing is ever skipped silently).
// The 30-minute soak with 10 TTLs: the manager grew from 19 to 38.5 MiB
// over the first 12 minutes (a tombstone per id published to), then held
// (+0.5 MiB over 18 minutes); 2 TTLs settle before the soak's 5th minute.
const tombstoneFor = 2

// presenceRing is how many presence announcements a channel keeps for
// replay (fewer when comet.history_size is smaller): under a flood one
// every maxMemberGap, so 32 s of them.
const presenceRing = 16

func newHistory(size int, ttl time.Duration) *history {
	return &history{size: size, ttl: ttl, maxBytes: math.MaxInt, byID: make(map[string]*ring), byChan: make(map[string]*ring),
		byPres: make(map[string]*ring)}
}

// retained is how many messages are still replayable.
func (h *history) retained() int { return len(h.fifo) - h.fifoOff }

func (h *history) add(m *message, now time.Time) { h.addUntil(m, now.Add(h.ttl)) }

// addUntil keeps m for replay until expires.
func (h *history) addUntil(m *message, expires time.Time) {
	if h.size <= 0 || h.ttl <= 0 {
		return
	}
	m.expires = expires
	switch {
	case m.presence:
		h.pushPresence(m)
	case m.kind == kindIDs:
		h.bytes += len(m.body)
		for _, id := range m.to {
			h.pushTo(h.byID, id, m)
		}
	case m.kind == kindChannel:
		h.bytes += len(m.body)
		h.pushTo(h.byChan, m.channel, m)
	default:
		h.bytes += len(m.body)
		m.rings++
		h.dropped(h.bcast.push(m, h.size))
	}
	h.fifo = append(h.fifo, m)
	for h.bytes > h.maxBytes && h.retained() > 1 {
		if o := h.fifo[h.fifoOff]; o.body != nil && !o.presence {
			h.evicted++
		}
		h.popOldest()
	}
	h.compact()
}

func (h *history) pushTo(rings map[string]*ring, key string, m *message) {
	r := rings[key]
	if r == nil {
		r = &ring{}
		rings[key] = r
	}
	m.rings++
	h.dropped(r.push(m, h.size))
}

// pushPresence keeps a presence announcement in its channel's presence
// ring; one pushed out is released at once.
func (h *history) pushPresence(m *message) {
	r := h.byPres[m.channel]
	if r == nil {
		r = &ring{}
		h.byPres[m.channel] = r
	}
	m.rings++
	h.dropped(r.push(m, min(h.size, presenceRing)))
}

// dropped notes that a ring let go of m; once no ring holds it, its body is
// released even before it expires.
func (h *history) dropped(m *message) {
	if m == nil {
		return
	}
	if m.rings--; m.rings == 0 {
		h.release(m)
	}
}

// release lets go of m's body.
func (h *history) release(m *message) {
	if !m.presence {
		h.bytes -= len(m.body)
	}
	m.body = nil
}

// expire removes messages older than the TTL.
func (h *history) expire(now time.Time) {
	for h.fifoOff < len(h.fifo) && !now.Before(h.fifo[h.fifoOff].expires) {
		h.popOldest()
	}
	h.compact()
	h.sweep(now)
}

// popOldest removes the oldest retained message from every ring.
func (h *history) popOldest() {
	m := h.fifo[h.fifoOff]
	h.fifo[h.fifoOff] = nil
	h.fifoOff++
	switch {
	case m.presence:
		// No tombstone: a presence ring's losses are no gap.
		if r := h.byPres[m.channel]; r != nil && r.front() == m {
			if r.popFront(); r.n == 0 {
				delete(h.byPres, m.channel)
			}
		}
	case m.kind == kindIDs:
		for _, id := range m.to {
			h.popIf(h.byID, id, m)
		}
	case m.kind == kindChannel:
		h.popIf(h.byChan, m.channel, m)
	default:
		if h.bcast.front() == m {
			h.bcast.popFront()
		}
	}
	h.release(m)
}

// compact reclaims the consumed front of the queue now and then.
func (h *history) compact() {
	if h.fifoOff > 1024 && h.fifoOff*2 > len(h.fifo) {
		h.fifo = append(h.fifo[:0:0], h.fifo[h.fifoOff:]...)
		h.fifoOff = 0
	}
}

func (h *history) popIf(rings map[string]*ring, key string, m *message) {
	r := rings[key]
	if r == nil || r.front() != m {
		return // the ring already evicted it for size
	}
	r.popFront()
	if r.n == 0 {
		r.buf, r.head, r.emptied = nil, 0, m.expires
		h.empties = append(h.empties, emptied{rings, key, m.expires})
	}
}

// droppedMarks is every ring's dropped id, for a successor.
func (h *history) droppedMarks() map[string]uint64 {
	d := make(map[string]uint64)
	for k, r := range h.byID {
		if r.dropped > 0 {
			d["i:"+k] = r.dropped
		}
	}
	for k, r := range h.byChan {
		if r.dropped > 0 {
			d["c:"+k] = r.dropped
		}
	}
	if h.bcast.dropped > 0 {
		d["b"] = h.bcast.dropped
	}
	return d
}

// setDropped takes a predecessor's dropped ids; a ring that holds nothing
// now is a tombstone, as if it had just run empty.
func (h *history) setDropped(d map[string]uint64, now time.Time) {
	for k, v := range d {
		rings, key := h.byID, k[min(2, len(k)):]
		switch {
		case k == "b":
			h.bcast.dropped = max(h.bcast.dropped, v)
			continue
		case strings.HasPrefix(k, "c:"):
			rings = h.byChan
		case !strings.HasPrefix(k, "i:"):
			continue
		}
		r := rings[key]
		if r == nil {
			r = &ring{emptied: now}
			rings[key] = r
			h.empties = append(h.empties, emptied{rings, key, now})
		}
		r.dropped = max(r.dropped, v)
	}
}

// sweep deletes rings that have been empty for tombstoneFor TTLs.
func (h *history) sweep(now time.Time) {
	keep := time.Duration(tombstoneFor) * h.ttl
	n := 0
	for _, e := range h.empties {
		if now.Sub(e.at) < keep {
			break
		}
		n++
		if r := e.rings[e.key]; r != nil && r.n == 0 && r.emptied.Equal(e.at) {
			h.forgotten = max(h.forgotten, r.dropped)
			delete(e.rings, e.key)
		}
	}
	if n > 0 {
		h.empties = append(h.empties[:0], h.empties[n:]...)
	}
}

// replay returns the retained messages a connection with id, channels and
// cursor since should receive, in id order, and whether some after since
// may be missing from them: a ring it reads dropped one, a key it reads
// has no ring left but rings were forgotten past the cursor, or the cursor
// is from before this history began (a restart).
func (h *history) replay(id string, channels []string, since uint64) (out []*message, lost bool) {
	return h.read(id, channels, true, since)
}

// read is replay's walk, of id's ring (none for ""), channels' and, with
// bcast, the broadcasts'; GET /history reads one ring with it.
func (h *history) read(id string, channels []string, bcast bool, since uint64) (out []*message, lost bool) {
	lost = since < h.horizon
	read := func(r *ring) {
		if r == nil {
			lost = lost || since < h.forgotten
			return
		}
		lost = lost || since < r.dropped
		out = r.after(out, since)
	}
	if id != "" {
		read(h.byID[id])
	}
	for _, ch := range channels {
		read(h.byChan[ch])
		if r := h.byPres[ch]; r != nil {
			out = r.after(out, since)
		}
	}
	if bcast {
		read(&h.bcast)
	}
	slices.SortFunc(out, func(a, b *message) int { return cmp.Compare(a.id, b.id) })
	// A message to several ids the client holds, or on two of its
	// channels, appears once.
	return slices.CompactFunc(out, func(a, b *message) bool { return a.id == b.id }), lost
}
