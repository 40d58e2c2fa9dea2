package ipc

import (
	"errors"
	"io"
	"sync"
)

// ErrOutboxFull means the peer stopped reading: more than the outbox's limit
// is waiting to be written to it.
var ErrOutboxFull = errors.New("ipc: peer is not reading (outbox full)")

// Outbox batches frames for one peer: any goroutine appends, one writer
// goroutine (Run) flushes everything queued in a single write. Appending
// never blocks on the socket.
type Outbox struct {
	mu      sync.Mutex
	buf     []byte
	spare   []byte
	writing int    // bytes taken by Run and not yet written
	written uint64 // bytes written so far: the peer's progress
	limit   int
	err     error
	closed  bool
	pending chan struct{}
}

// writeChunk is how much Run writes at a time, so that a peer reading a
// large batch shows progress (Written) while it reads.
const writeChunk = 1 << 20

// NewOutbox returns an outbox that fails once more than limit bytes wait.
func NewOutbox(limit int) *Outbox {
	return &Outbox{limit: limit, pending: make(chan struct{}, 1)}
}

// Append lets fn append frames to the queued bytes. fn runs under the
// outbox's lock, so a batch built in it is written contiguously. The append
// that takes the outbox past its limit returns ErrOutboxFull; every later
// one, io.ErrClosedPipe.
func (o *Outbox) Append(fn func(dst []byte) []byte) error {
	o.mu.Lock()
	if o.err != nil || o.closed {
		o.mu.Unlock()
		return io.ErrClosedPipe // said once already (ErrOutboxFull), or closed
	}
	o.buf = fn(o.buf)
	if len(o.buf)+o.writing > o.limit {
		o.err = ErrOutboxFull
	}
	err := o.err
	o.mu.Unlock()
	select {
	case o.pending <- struct{}{}:
	default:
	}
	return err
}

// Len is how many bytes wait to be written.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.buf) + o.writing
}

// Written is how many bytes the peer has taken so far: a peer with bytes
// queued whose Written does not move is not reading.
func (o *Outbox) Written() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.written
}

// Close makes Run return once everything queued has been written.
func (o *Outbox) Close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	select {
	case o.pending <- struct{}{}:
	default:
	}
}

// Run writes queued bytes to w until Close, a write error or overflow.
func (o *Outbox) Run(w io.Writer) error {
	for range o.pending {
		o.mu.Lock()
		buf, closed, err := o.buf, o.closed, o.err
		o.buf, o.spare, o.writing = o.spare[:0], nil, len(buf)
		o.mu.Unlock()
		if err != nil {
			return err
		}
		for off := 0; off < len(buf); {
			n := min(len(buf)-off, writeChunk)
			if _, err := w.Write(buf[off : off+n]); err != nil {
				o.mu.Lock()
				o.err = err
				o.mu.Unlock()
				return err
			}
			off += n
			o.mu.Lock()
			o.writing -= n
			o.written += uint64(n)
			o.mu.Unlock()
		}
		o.mu.Lock()
		if o.spare == nil && cap(buf) <= 1<<20 {
			o.spare = buf[:0] // keep one buffer warm; drop huge ones
		}
		more := len(o.buf) > 0
		o.mu.Unlock()
		if closed && !more {
			return nil
		}
		if more {
			select {
			case o.pending <- struct{}{}:
			default:
			}
		}
	}
	return nil
}
