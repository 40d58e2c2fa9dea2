package worker

import "hash/maphash"

// idIndex maps a client id to the first of its connections; the others are
// linked through conn.inext. It replaces a map[string]*conn, whose entries
// cost ~38 bytes each at a million connections (24-byte slots, at most 7/8
// full, half empty after each doubling): this is an open-addressing table of
// *conn keyed by the connection's own id string, 8 bytes a slot, between
// 3/8 and 3/4 full - ~14 bytes an entry. Loop-owned, like all worker state.
type idIndex struct {
	slots []*conn // nil = empty, tombstone = deleted
	live  int     // entries
	used  int     // entries and tombstones
	seed  maphash.Seed
	epoch uint32 // counts resizes: a walk over slots that paused restarts after one
}

// tombstone marks a deleted slot, so probe chains stay intact.
var tombstone = &conn{}

const minIndexSize = 16

func (x *idIndex) len() int { return x.live }

// get returns the first connection subscribed to id, or nil.
func (x *idIndex) get(id []byte) *conn {
	if x.live == 0 {
		return nil
	}
	return find(x, maphash.Bytes(x.seed, id), id)
}

// getString is get for an id held as a string.
func (x *idIndex) getString(id string) *conn {
	if x.live == 0 {
		return nil
	}
	return find(x, maphash.String(x.seed, id), id)
}

func find[K string | []byte](x *idIndex, h uint64, id K) *conn {
	mask := len(x.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		switch c := x.slots[i]; {
		case c == nil:
			return nil
		case c != tombstone && c.id == string(id):
			return c
		}
	}
}

// put makes head the first connection of head.id, adding the id if new.
func (x *idIndex) put(head *conn) {
	if (x.used+1)*4 > len(x.slots)*3 {
		x.resize(2 * (x.live + 1)) // doubles at 3/4: 3/8 full after
	}
	mask := len(x.slots) - 1
	free := -1
	for i := int(maphash.String(x.seed, head.id)) & mask; ; i = (i + 1) & mask {
		switch c := x.slots[i]; {
		case c == nil:
			if free < 0 {
				free = i
				x.used++
			}
			x.slots[free] = head
			x.live++
			return
		case c == tombstone:
			if free < 0 {
				free = i
			}
		case c.id == head.id:
			x.slots[i] = head
			return
		}
	}
}

// del removes id.
func (x *idIndex) del(id string) {
	if x.live == 0 {
		return
	}
	mask := len(x.slots) - 1
	for i := int(maphash.String(x.seed, id)) & mask; ; i = (i + 1) & mask {
		switch c := x.slots[i]; {
		case c == nil:
			return
		case c != tombstone && c.id == id:
			x.slots[i] = tombstone
			x.live--
			if len(x.slots) > 1024 && x.live*8 < len(x.slots) {
				x.resize(2 * x.live) // after a mass disconnect, give the memory back
			}
			return
		}
	}
}

// resize rehashes into a table of at least n slots (a power of two),
// dropping tombstones.
func (x *idIndex) resize(n int) {
	size := minIndexSize
	for size < n {
		size *= 2
	}
	old := x.slots
	x.slots, x.live, x.used = make([]*conn, size), 0, 0
	x.epoch++
	if x.seed == (maphash.Seed{}) {
		x.seed = maphash.MakeSeed()
	}
	for _, c := range old {
		if c != nil && c != tombstone {
			x.put(c)
		}
	}
}
