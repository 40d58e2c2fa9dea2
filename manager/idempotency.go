package manager

import (
	"hash/fnv"
	"time"
)

// Publishers resend a request when they cannot tell whether it arrived - a
// timeout, or a keep-alive connection closed by a reload just as they sent
// on it. With an Idempotency-Key header the resend is safe: the hub
// remembers each key with the ids it got (and a hash of the body) for
// comet.history_ttl, and answers a repeat with the same ids instead of
// publishing again. The keys travel with a reload's hand-over.

// maxIdemKeys bounds how many keys are remembered; the oldest go first.
const maxIdemKeys = 1 << 20

// maxIdemKeyLen bounds one key.
const maxIdemKeyLen = 256

type idemEntry struct {
	ids     []uint64
	sum     uint64 // FNV-1a of the request body
	expires time.Time
}

type idemKeys struct {
	ttl  time.Duration
	keys map[string]*idemEntry
	fifo []string // keys, oldest first
	off  int
}

func newIdemKeys(ttl time.Duration) *idemKeys {
	return &idemKeys{ttl: max(ttl, time.Minute), keys: make(map[string]*idemEntry)}
}

func bodySum(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// lookup returns the entry of a live key.
func (k *idemKeys) lookup(key string, now time.Time) *idemEntry {
	e := k.keys[key]
	if e == nil || !now.Before(e.expires) {
		return nil
	}
	return e
}

func (k *idemKeys) put(key string, e *idemEntry) {
	if _, dup := k.keys[key]; !dup {
		k.fifo = append(k.fifo, key)
	}
	k.keys[key] = e
	for len(k.fifo)-k.off > maxIdemKeys {
		k.drop()
	}
}

func (k *idemKeys) drop() {
	delete(k.keys, k.fifo[k.off])
	k.fifo[k.off] = ""
	k.off++
}

func (k *idemKeys) expire(now time.Time) {
	for k.off < len(k.fifo) {
		if e := k.keys[k.fifo[k.off]]; e != nil && now.Before(e.expires) {
			break
		}
		k.drop()
	}
	if k.off > 1024 && k.off*2 > len(k.fifo) {
		k.fifo = append(k.fifo[:0:0], k.fifo[k.off:]...)
		k.off = 0
	}
}
