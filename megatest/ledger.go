package megatest

import "sync"

// The ledger checks every published id off at the connection it was
// addressed to. The publisher learns an id from the API's answer; the loop
// sees it arrive; either can come first, so each side records what it saw
// and the second one deletes the entry. What is left at the end is the
// answer: acknowledged but never delivered = lost; delivered but never
// acknowledged = a publish whose answer failed (unacked).
//
// Lock order: ledger.mu is a leaf; nothing is called with it held.
type ledger struct {
	mu      sync.Mutex
	m       map[ledgerKey]uint8
	pending int64 // acked, not delivered yet
	early   int64 // delivered, not acked yet
	matched int64
	gapped  int64 // owed, then announced as a gap
}

type ledgerKey struct {
	conn uint32
	id   uint64
}

const (
	lgAcked     = 1
	lgDelivered = 2
)

func newLedger() *ledger { return &ledger{m: make(map[ledgerKey]uint8)} }

// acked records that the API gave id to a message for conn.
func (l *ledger) acked(conn uint32, id uint64) {
	k := ledgerKey{conn, id}
	l.mu.Lock()
	if l.m[k] == lgDelivered {
		delete(l.m, k)
		l.early--
		l.matched++
	} else {
		l.m[k] = lgAcked
		l.pending++
	}
	l.mu.Unlock()
}

// delivered records that conn received our published message id.
func (l *ledger) delivered(conn uint32, id uint64) {
	k := ledgerKey{conn, id}
	l.mu.Lock()
	if l.m[k] == lgAcked {
		delete(l.m, k)
		l.pending--
		l.matched++
	} else {
		l.m[k] = lgDelivered
		l.early++
	}
	l.mu.Unlock()
}

// gap records that the server announced conn may have missed the ids
// strictly between after and before: those still owed are written off as
// announced, not lost. (A scan of the ledger: gaps are rare.)
func (l *ledger) gap(conn uint32, after, before uint64) {
	l.mu.Lock()
	for k, v := range l.m {
		if k.conn == conn && k.id > after && k.id < before && v == lgAcked {
			delete(l.m, k)
			l.pending--
			l.gapped++
		}
	}
	l.mu.Unlock()
}

func (l *ledger) counts() (pending, early, matched int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending, l.early, l.matched
}
