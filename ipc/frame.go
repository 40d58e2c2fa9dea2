package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Type says what a frame carries.
type Type uint8

// Frames a worker sends to the manager.
const (
	// Hello: the worker is serving. Payload: Hello.
	TypeHello Type = 1 + iota
	// Counts: the worker's counters, at least once a second. Payload: Counts.
	TypeCounts
	// Presence: a batch of subscribe/unsubscribe operations. Payload: Ops.
	TypePresence
	// Fatal: why the worker is about to exit. Payload: a string.
	TypeFatal
	// Publish: a client's message to a channel (WebSocket client
	// publish). Payload: AppendPublish's; answered with a RecAck.
	TypePublish
)

// Frames the manager sends to a worker.
const (
	// Config: the worker's start-up settings as JSON, always the first frame.
	TypeConfig Type = 64 + iota
	// Deliver: a batch of messages to hand to clients.
	TypeDeliver
	// Drain: leave the port and hand clients over within the given time.
	// Payload: uvarint milliseconds.
	TypeDrain
	// Stop: close every client now and exit.
	TypeStop
	// Disconnect: end every connection of an id (POST /disconnect), and
	// refuse it until a time. Payload: AppendDisconnect's.
	TypeDisconnect
	// Channel: add a channel to, or take one from, every live connection
	// of an id (POST /subscribe, /unsubscribe). Payload: a byte (1
	// subscribe, 0 unsubscribe), the id, the channel, as strings.
	TypeChannel
	// Revoke: refuse an id's tokens issued before a time, or one token
	// (jti), until a time. Payload: AppendRevoke's.
	TypeRevoke
)

// TypeHooksAnswered is made inside a worker, never sent between processes:
// the application's hooks have answered (worker/park.go), and the frame
// wakes the worker's loop through its control connection.
const TypeHooksAnswered Type = 128

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeCounts:
		return "counts"
	case TypePresence:
		return "presence"
	case TypeFatal:
		return "fatal"
	case TypePublish:
		return "publish"
	case TypeConfig:
		return "config"
	case TypeDeliver:
		return "deliver"
	case TypeDrain:
		return "drain"
	case TypeStop:
		return "stop"
	case TypeDisconnect:
		return "disconnect"
	case TypeChannel:
		return "channel"
	case TypeRevoke:
		return "revoke"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// HeaderLen is the length prefix plus the type byte.
const HeaderLen = 5

// MaxFrame bounds one frame, so a corrupt length cannot make a peer buffer
// gigabytes. A broadcast batch is far smaller.
const MaxFrame = 64 << 20

var (
	// ErrNeedMore means the buffer holds no complete frame yet.
	ErrNeedMore = errors.New("ipc: need more data")
	// ErrFrame means the stream is corrupt; the connection must be dropped.
	ErrFrame = errors.New("ipc: bad frame")
)

// Parse reads one frame from the front of b. It returns the frame's type, its
// payload (aliasing b) and the number of bytes consumed. With an incomplete
// frame it returns ErrNeedMore and n = 0.
func Parse(b []byte) (t Type, payload []byte, n int, err error) {
	if len(b) < HeaderLen {
		return 0, nil, 0, ErrNeedMore
	}
	size := binary.LittleEndian.Uint32(b)
	if size == 0 || size > MaxFrame {
		return 0, nil, 0, fmt.Errorf("%w: length %d", ErrFrame, size)
	}
	end := 4 + int(size)
	if len(b) < end {
		return 0, nil, 0, ErrNeedMore
	}
	return Type(b[4]), b[HeaderLen:end], end, nil
}

// Begin appends a frame header to dst; append the payload, then call End
// with the returned start to fill in the length.
func Begin(dst []byte, t Type) ([]byte, int) {
	start := len(dst)
	return append(dst, 0, 0, 0, 0, byte(t)), start
}

// End patches the length of the frame begun at start.
func End(dst []byte, start int) []byte {
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// AppendFrame appends a whole frame with the given payload.
func AppendFrame(dst []byte, t Type, payload []byte) []byte {
	dst, start := Begin(dst, t)
	return End(append(dst, payload...), start)
}

// AppendUvarint appends v as a varint.
func AppendUvarint(dst []byte, v uint64) []byte { return binary.AppendUvarint(dst, v) }

// AppendBytes appends b with a varint length prefix.
func AppendBytes(dst []byte, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

// AppendString appends s with a varint length prefix.
func AppendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// Reader decodes a payload field by field without copying. The first error
// sticks: check Err once after reading everything.
type Reader struct {
	b   []byte
	err error
}

// NewReader reads the given payload.
func NewReader(b []byte) Reader { return Reader{b: b} }

// Len is how many bytes are left.
func (r *Reader) Len() int { return len(r.b) }

// Err reports the first decoding error.
func (r *Reader) Err() error { return r.err }

// Uvarint reads a varint; it returns 0 once an error has occurred.
func (r *Reader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail("byte")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// Bytes reads a length-prefixed field; the result aliases the payload.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("field length")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *Reader) fail(what string) {
	r.err = fmt.Errorf("%w: truncated %s", ErrFrame, what)
	r.b = nil
}
