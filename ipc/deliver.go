package ipc

// Deliver frames (manager → worker) carry records:
//
//	RecMsg     id uvarint, kind byte, [channel string | n uvarint, n × id string], body bytes
//	RecReplay  token uvarint, flags byte, gap uvarint, n uvarint, n × (id uvarint, body bytes)
//	RecAck     token uvarint, id uvarint, error string
//
// A RecMsg for ids lists only the ids the receiving worker holds; a broadcast
// or channel message is one record per worker however many clients it
// reaches. Body is the message's JSON, rendered once by the manager.
// RecReplay answers one OpJoin: the retained messages after its cursor, in
// id order (n may be 0: the connection then goes live). A long replay comes
// in pieces, each in its own Deliver frame of bounded size: flags has
// ReplayMore on every piece but the last. A replay carries at most what the
// connection may have unsent (about comet.max_pending): when history holds
// more, the last piece has ReplayPartial, and the rest is the client's
// when it comes back from its cursor. A join the manager had no room for
// (the worker's queue is full of replays) is answered with no messages
// and ReplayDeferred: the worker asks again later. gap, on the first
// piece, is nonzero when the replay left out older messages
// (comet.max_replay): those with ids between the join's cursor and gap may
// be missing, and the client is told so.
// RecAck answers one TypePublish: the id it was published with, or 0 and
// why it was not (one line, for the client).

// Record kinds in a Deliver frame.
const (
	RecMsg    byte = 1
	RecReplay byte = 2
	RecAck    byte = 3
)

// RecReplay flags.
const (
	ReplayMore     byte = 1 << iota // another piece of this replay follows
	ReplayPartial                   // history holds more after this replay
	ReplayDeferred                  // no room now: join again later
	replayFlags    = ReplayMore | ReplayPartial | ReplayDeferred
)

// Message kinds in a RecMsg.
const (
	KindIDs       byte = 0
	KindChannel   byte = 1
	KindBroadcast byte = 2
)

// AppendMsgHead appends a RecMsg up to its targets. For KindIDs append
// AppendUvarint(n) and n AppendString ids; then AppendBytes(body).
func AppendMsgHead(dst []byte, id uint64, kind byte, channel string) []byte {
	dst = append(dst, RecMsg)
	dst = AppendUvarint(dst, id)
	dst = append(dst, kind)
	if kind == KindChannel {
		dst = AppendString(dst, channel)
	}
	return dst
}

// AppendReplayHead appends a RecReplay header; then append n (id, body)
// pairs with AppendUvarint and AppendBytes.
func AppendReplayHead(dst []byte, token uint32, flags byte, gap uint64, n int) []byte {
	dst = append(dst, RecReplay)
	dst = AppendUvarint(dst, uint64(token))
	dst = append(dst, flags)
	dst = AppendUvarint(dst, gap)
	return AppendUvarint(dst, uint64(n))
}

// AppendAck appends a RecAck: the publish with this token got id, or
// (id 0) was refused for reason.
func AppendAck(dst []byte, token uint32, id uint64, reason string) []byte {
	dst = append(dst, RecAck)
	dst = AppendUvarint(dst, uint64(token))
	dst = AppendUvarint(dst, id)
	return AppendString(dst, reason)
}

// Ack is one decoded RecAck; Reason aliases the payload.
type Ack struct {
	Token  uint32
	ID     uint64
	Reason []byte
}

// AppendPublish is a TypePublish payload: the worker's token for the
// publishing connection, the channel, the message's data (JSON) and the
// publishing client's id.
func AppendPublish(dst []byte, token uint32, channel, data, id []byte) []byte {
	dst = AppendUvarint(dst, uint64(token))
	dst = AppendBytes(dst, channel)
	dst = AppendBytes(dst, data)
	return AppendBytes(dst, id)
}

// ParsePublish reads a TypePublish payload; the slices alias it.
func ParsePublish(p []byte) (token uint32, channel, data, id []byte, err error) {
	r := NewReader(p)
	token = uint32(r.Uvarint())
	channel, data = r.Bytes(), r.Bytes()
	if r.Len() > 0 {
		id = r.Bytes()
	}
	return token, channel, data, id, r.Err()
}

// Msg is one decoded RecMsg; its slices alias the payload.
type Msg struct {
	ID      uint64
	Kind    byte
	Channel []byte
	Body    []byte
	ids     Reader
	n       uint64
}

// NextID returns a KindIDs message's target ids one by one.
func (m *Msg) NextID() ([]byte, bool) {
	if m.n == 0 {
		return nil, false
	}
	m.n--
	b := m.ids.Bytes()
	return b, m.ids.Err() == nil
}

// Replay is one decoded RecReplay; Next yields its N messages.
type Replay struct {
	Token    uint32
	More     bool   // another piece of this replay follows
	Partial  bool   // history holds more after this replay (on the last piece)
	Deferred bool   // no room now: join again later (no messages)
	Gap      uint64 // nonzero: messages after the cursor and before Gap were left out
	N        int
	r        Reader
}

// Next returns the next replayed message.
func (rp *Replay) Next() (id uint64, body []byte) {
	return rp.r.Uvarint(), rp.r.Bytes()
}

// DeliverReader walks a Deliver payload without copying or allocating.
type DeliverReader struct {
	r      Reader
	Msg    Msg    // valid after Next returns RecMsg
	Replay Replay // valid after Next returns RecReplay
	Ack    Ack    // valid after Next returns RecAck
}

// NewDeliverReader reads payload p.
func NewDeliverReader(p []byte) DeliverReader { return DeliverReader{r: NewReader(p)} }

// Next decodes the next record and returns its kind, or 0 at the end or on
// a corrupt payload (see Err).
func (d *DeliverReader) Next() byte {
	r := &d.r
	if r.Len() == 0 || r.err != nil {
		return 0
	}
	switch rec := r.Byte(); rec {
	case RecMsg:
		m := &d.Msg
		m.ID = r.Uvarint()
		m.Kind = r.Byte()
		m.Channel, m.n = nil, 0
		switch m.Kind {
		case KindChannel:
			m.Channel = r.Bytes()
		case KindIDs:
			m.n = r.Uvarint()
			start := r.b
			for i := uint64(0); i < m.n && r.err == nil; i++ {
				r.Bytes()
			}
			if r.err == nil {
				m.ids = NewReader(start[:len(start)-len(r.b)])
			}
		case KindBroadcast:
		default:
			r.fail("message kind")
		}
		m.Body = r.Bytes()
		if r.err != nil {
			return 0
		}
		return rec
	case RecReplay:
		rp := &d.Replay
		rp.Token = uint32(r.Uvarint())
		flags := r.Byte()
		if flags&^replayFlags != 0 {
			r.fail("replay flags")
			return 0
		}
		rp.More, rp.Partial, rp.Deferred = flags&ReplayMore != 0, flags&ReplayPartial != 0, flags&ReplayDeferred != 0
		rp.Gap = r.Uvarint()
		n := r.Uvarint()
		// Each message takes at least two bytes (id, body length): a
		// larger count is corrupt and would make the consumer spin.
		if r.err != nil || n > uint64(r.Len()/2) {
			r.fail("replay count")
			return 0
		}
		start := r.b
		for i := uint64(0); i < n && r.err == nil; i++ {
			r.Uvarint()
			r.Bytes()
		}
		if r.err != nil {
			return 0
		}
		rp.N, rp.r = int(n), NewReader(start[:len(start)-len(r.b)])
		return rec
	case RecAck:
		a := &d.Ack
		a.Token = uint32(r.Uvarint())
		a.ID = r.Uvarint()
		a.Reason = r.Bytes()
		if r.err != nil {
			return 0
		}
		return rec
	default:
		r.fail("deliver record")
		return 0
	}
}

// Rest is what of the payload Next has not decoded yet.
func (d *DeliverReader) Rest() []byte { return d.r.b }

// Err reports a corrupt payload once Next has returned 0.
func (d *DeliverReader) Err() error { return d.r.err }
