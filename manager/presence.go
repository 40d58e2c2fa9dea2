package manager

import "slices"

// linkID identifies one worker process's IPC link while it lives. Slots
// are reused by new processes; link ids are not reused until the old
// process's presence has been swept.
type linkID uint16

// presence maps a client id (or a channel) to the worker links holding it,
// with how many connections each holds: the routing, and the counts of
// GET /presence.
//
// At a million ids a map keyed by the id strings cost ~60 MB here (slots
// of 24 bytes, at most 7/8 full and half empty after each doubling, plus the
// strings). So presence stores no names: it is keyed by a seeded 64-bit
// hash of the name and counts, per link, the connections of names with that
// hash the link holds. Workers say when a connection takes a name and when
// it lets go (ipc.OpHas/OpLeave, OpSub/OpUnsub), so the counts are exact.
// Two names colliding on the hash (about one chance in 10^7 at a million
// ids) only means a message also goes to a worker that does not need it,
// which its own exact index ignores, and a presence count that adds both:
// a collision wastes an IPC record, it never loses a message.
//
// Almost every name lives on one worker: that case is one 12-byte entry of
// a hashTable (hash → link and count: 16 bytes a slot); names on several
// workers move to a map.
type presence struct {
	seed uint64
	one  hashTable
	many map[uint64][]holder
}

// holder is one link's count of connections on names with a given hash.
// 32 bits: a channel may have a million subscribers on one worker.
type holder struct {
	link  linkID
	count uint32
}

func newPresence(seed uint64) presence {
	return presence{seed: seed, many: make(map[uint64][]holder)}
}

// hash is FNV-1a from a per-deployment seed (it travels with a reload's
// hand-over, so hashes stay valid across managers).
func (p *presence) hash(name []byte) uint64 {
	h := p.seed ^ 14695981039346656037
	for _, c := range name {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

func (p *presence) hashString(name string) uint64 {
	h := p.seed ^ 14695981039346656037
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

// len is how many distinct hashes are held (the number of names but for
// collisions).
func (p *presence) len() int { return p.one.len() + len(p.many) }

// add records that link holds one more connection on a name with this
// hash.
func (p *presence) add(h uint64, l linkID) { p.addN(h, l, 1) }

// remove records that link holds one name fewer with this hash.
func (p *presence) remove(h uint64, l linkID) {
	if cur, ok := p.one.get(h); ok {
		if cur.link == l {
			if cur.count--; cur.count == 0 {
				p.one.del(h)
			} else {
				p.one.set(h, cur)
			}
		}
		return
	}
	hs, ok := p.many[h]
	if !ok {
		return
	}
	for i := range hs {
		if hs[i].link == l {
			if hs[i].count--; hs[i].count == 0 {
				hs = slices.Delete(hs, i, i+1)
			}
			break
		}
	}
	switch len(hs) {
	case 0:
		delete(p.many, h)
	case 1:
		delete(p.many, h)
		p.one.set(h, hs[0])
	default:
		p.many[h] = hs
	}
}

// addN records n more.
func (p *presence) addN(h uint64, l linkID, n uint32) {
	if hs, ok := p.many[h]; ok {
		for i := range hs {
			if hs[i].link == l {
				hs[i].count += n
				return
			}
		}
		p.many[h] = append(hs, holder{l, n})
		return
	}
	cur, ok := p.one.get(h)
	switch {
	case !ok:
		p.one.set(h, holder{l, n})
	case cur.link == l:
		cur.count += n
		p.one.set(h, cur)
	default:
		p.one.del(h)
		p.many[h] = []holder{cur, {l, n}}
	}
}

// count is the connections on names with this hash, over every link.
func (p *presence) count(h uint64) uint64 {
	if cur, ok := p.one.get(h); ok {
		return uint64(cur.count)
	}
	var n uint64
	for _, hc := range p.many[h] {
		n += uint64(hc.count)
	}
	return n
}

// each calls fn for every link holding a name with this hash.
func (p *presence) each(h uint64, fn func(linkID)) {
	if cur, ok := p.one.get(h); ok {
		fn(cur.link)
		return
	}
	for _, hc := range p.many[h] {
		fn(hc.link)
	}
}

// dropLink forgets everything link held (its process is gone).
func (p *presence) dropLink(l linkID) {
	var gone []uint64
	p.one.each(func(h uint64, cur holder) {
		if cur.link == l {
			gone = append(gone, h)
		}
	})
	for _, h := range gone {
		p.one.del(h)
	}
	for h, hs := range p.many {
		for i := range hs {
			if hs[i].link == l {
				hs[i].count = 1 // the last remove takes it out
				p.remove(h, l)
				break
			}
		}
	}
}

// heldBy lists link's hashes with their counts, for a hand-over.
func (p *presence) heldBy(l linkID) []hashCount {
	var out []hashCount
	p.one.each(func(h uint64, cur holder) {
		if cur.link == l {
			out = append(out, hashCount{h, cur.count})
		}
	})
	for h, hs := range p.many {
		for _, hc := range hs {
			if hc.link == l {
				out = append(out, hashCount{h, hc.count})
			}
		}
	}
	return out
}

// hashCount is a link's count of names with a hash, as handed over.
type hashCount struct {
	Hash  uint64 `json:"h"`
	Count uint32 `json:"n"`
}
