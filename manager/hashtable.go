package manager

import "math/bits"

// hashTable maps a 64-bit hash to a holder in open addressing, sized to what
// it holds rather than to a power of two: 16 bytes a slot, at most 4/5 full,
// no pointers (the garbage collector never scans it). At a million ids it is
// ~20 MB where a map[uint64]holder was ~34. (12 bytes a slot, ~15 MB, while
// a holder counted names, not connections: the presence API's counts cost
// 4 bytes an id.)
type hashTable struct {
	keys []uint64 // emptyKey, deletedKey, or a stored hash (see stored)
	vals []holder
	live int // entries
	used int // entries and deleted slots
}

const (
	emptyKey   = 0
	deletedKey = 1
)

// stored keeps 0 and 1 free for the markers.
func stored(h uint64) uint64 {
	if h < 2 {
		return h + 2
	}
	return h
}

// slot maps a hash onto [0, len) without a power-of-two size (Lemire's
// multiply-shift, which takes the high bits), after mixing them: FNV-1a's
// high bits barely change with a name's last characters, so ids like
// user-0000001 … user-0001000 crowded into a few runs of slots and a
// lookup at a thousand ids took 514 ns against 24 at a million
// (BenchmarkDisconnectLookup).
func (t *hashTable) slot(h uint64) int {
	h ^= h >> 31
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 29
	hi, _ := bits.Mul64(h, uint64(len(t.keys)))
	return int(hi)
}

func (t *hashTable) len() int { return t.live }

// find returns the index of h, or -1.
func (t *hashTable) find(h uint64) int {
	if t.live == 0 {
		return -1
	}
	h = stored(h)
	n := len(t.keys)
	for i := t.slot(h); ; i++ {
		if i == n {
			i = 0
		}
		switch t.keys[i] {
		case emptyKey:
			return -1
		case h:
			return i
		}
	}
}

func (t *hashTable) get(h uint64) (holder, bool) {
	if i := t.find(h); i >= 0 {
		return t.vals[i], true
	}
	return holder{}, false
}

// set adds or replaces h's holder.
func (t *hashTable) set(h uint64, v holder) {
	if i := t.find(h); i >= 0 {
		t.vals[i] = v
		return
	}
	if (t.used+1)*5 > len(t.keys)*4 {
		t.resize(t.live + 1)
	}
	h = stored(h)
	n := len(t.keys)
	for i := t.slot(h); ; i++ {
		if i == n {
			i = 0
		}
		if k := t.keys[i]; k == emptyKey || k == deletedKey {
			if k == emptyKey {
				t.used++
			}
			t.keys[i], t.vals[i] = h, v
			t.live++
			return
		}
	}
}

// del removes h.
func (t *hashTable) del(h uint64) {
	i := t.find(h)
	if i < 0 {
		return
	}
	t.keys[i], t.vals[i] = deletedKey, holder{}
	t.live--
	if len(t.keys) > 1024 && t.live*5 < len(t.keys) {
		t.resize(t.live) // most have gone: give the memory back
	}
}

// each calls fn for every entry; fn must not change the table.
func (t *hashTable) each(fn func(h uint64, v holder)) {
	for i, k := range t.keys {
		if k != emptyKey && k != deletedKey {
			fn(k, t.vals[i])
		}
	}
}

// resize rehashes for n entries, with room to grow (1.6 slots an entry),
// dropping deleted slots.
func (t *hashTable) resize(n int) {
	oldKeys, oldVals := t.keys, t.vals
	size := max(16, n*8/5)
	t.keys, t.vals, t.live, t.used = make([]uint64, size), make([]holder, size), 0, 0
	for i, k := range oldKeys {
		if k != emptyKey && k != deletedKey {
			t.set(k, oldVals[i]) // stored(k) == k: k >= 2
		}
	}
}
