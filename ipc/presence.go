package ipc

// Presence frames (worker → manager) carry records that keep the manager's
// routing table and ask for each new subscription's replay:
//
//	OpHas    id string       (a connection on this worker takes the id)
//	OpSub    channel string  (a connection here joins the channel)
//	OpLeave  id string       (a connection here lets go of the id)
//	OpBye    reason byte, id string  (OpLeave, saying why: Reason)
//	OpUnsub  channel string  (a connection here leaves the channel)
//	OpJoin   token uvarint, since uvarint, id string, n uvarint, n × channel string
//	OpMemberJoin   channel string, id string  (on a comet.presence_events channel)
//	OpMemberLeave  channel string, id string
//
// Has/Leave and Sub/Unsub come in pairs per connection, so the manager
// counts connections per id and channel (version 3; before, per worker). Every subscribing connection sends a Join, with the cursor it resumes
// from, after the Has/Sub that make its worker a target; the manager answers
// with a Replay record carrying the same token, so live and replayed
// messages never race.

// Op is the kind of a presence record.
type Op uint8

// Presence record kinds.
const (
	OpJoin Op = 1 + iota
	OpLeave
	OpUnsub
	OpHas
	OpSub
	OpMemberJoin
	OpMemberLeave
	OpBye
)

// Reason is why a connection let go of its id (OpBye), for the
// application's disconnect events.
type Reason uint8

// The reasons a worker knows.
const (
	ByeClosed   Reason = iota // the client closed, or was answered and closed (long-poll)
	ByeHandover               // handed over (reload, stop): it reconnects with its cursor
	ByeSlow                   // a slow consumer, past comet.max_pending
	ByeExpired                // its token expired
	ByeTimeout                // it stopped answering (WebSocket pings, TCP keepalive)
	ByeError                  // writing to it failed
	ByeKicked                 // the application disconnected it
	byeCount
)

var reasonNames = [...]string{"closed", "handover", "slow", "expired", "timeout", "error", "kicked"}

// String is the reason as the events name it.
func (r Reason) String() string {
	if r < byeCount {
		return reasonNames[r]
	}
	return "closed"
}

// AppendBye appends an OpBye record: a connection let go of id, for why.
func AppendBye(dst []byte, why Reason, id string) []byte {
	dst = append(dst, byte(OpBye), byte(why))
	return AppendString(dst, id)
}

// AppendMember appends an OpMemberJoin or OpMemberLeave record: a
// connection of id joined or left a channel whose members are announced.
func AppendMember(dst []byte, op Op, channel, id string) []byte {
	dst = AppendString(append(dst, byte(op)), channel)
	return AppendString(dst, id)
}

// AppendJoin appends an OpJoin record.
func AppendJoin[T string | []byte](dst []byte, token uint32, since uint64, id []byte, channels []T) []byte {
	dst = append(dst, byte(OpJoin))
	dst = AppendUvarint(dst, uint64(token))
	dst = AppendUvarint(dst, since)
	dst = AppendBytes(dst, id)
	dst = AppendUvarint(dst, uint64(len(channels)))
	for _, c := range channels {
		dst = append(AppendUvarint(dst, uint64(len(c))), c...)
	}
	return dst
}

// AppendName appends an OpHas, OpSub, OpLeave or OpUnsub record.
func AppendName[T string | []byte](dst []byte, op Op, name T) []byte {
	dst = AppendUvarint(append(dst, byte(op)), uint64(len(name)))
	return append(dst, name...)
}

// Join is one decoded OpJoin record; its slices alias the payload.
type Join struct {
	Token uint32
	Since uint64
	ID    []byte
	chans Reader
	n     uint64
}

// NextChannel returns the Join's channels one by one.
func (j *Join) NextChannel() ([]byte, bool) {
	if j.n == 0 {
		return nil, false
	}
	j.n--
	b := j.chans.Bytes()
	return b, j.chans.Err() == nil
}

// PresenceReader walks a Presence payload without copying or allocating.
type PresenceReader struct {
	r    Reader
	Join Join   // valid after Next returns OpJoin
	Name []byte // valid after Next returns OpHas, OpSub, OpLeave or OpUnsub
	// Reason is why, after Next returns OpLeave (an OpBye record reads
	// as an OpLeave with its reason; a plain one's is ByeClosed).
	Reason Reason
	// Channel and Name are valid after Next returns OpMemberJoin or
	// OpMemberLeave.
	Channel []byte
}

// NewPresenceReader reads payload p.
func NewPresenceReader(p []byte) PresenceReader { return PresenceReader{r: NewReader(p)} }

// Next decodes the next record and returns its kind, or 0 at the end or on
// a corrupt payload (see Err).
func (pr *PresenceReader) Next() Op {
	r := &pr.r
	if r.Len() == 0 || r.err != nil {
		return 0
	}
	switch op := Op(r.Byte()); op {
	case OpJoin:
		j := &pr.Join
		j.Token = uint32(r.Uvarint())
		j.Since = r.Uvarint()
		j.ID = r.Bytes()
		j.n = r.Uvarint()
		start := r.b
		for i := uint64(0); i < j.n && r.err == nil; i++ {
			r.Bytes()
		}
		if r.err != nil {
			return 0
		}
		j.chans = NewReader(start[:len(start)-len(r.b)])
		return op
	case OpHas, OpSub, OpLeave, OpUnsub:
		pr.Name, pr.Reason = r.Bytes(), ByeClosed
		if r.err != nil {
			return 0
		}
		return op
	case OpBye:
		pr.Reason = Reason(r.Byte())
		pr.Name = r.Bytes()
		if r.err != nil {
			return 0
		}
		return OpLeave
	case OpMemberJoin, OpMemberLeave:
		pr.Channel, pr.Name = r.Bytes(), r.Bytes()
		if r.err != nil {
			return 0
		}
		return op
	default:
		r.fail("presence record")
		return 0
	}
}

// Err reports a corrupt payload once Next has returned 0.
func (pr *PresenceReader) Err() error { return pr.r.err }

// Disconnect is a TypeDisconnect payload: end id's connections, telling
// them Reason; with Reconnect false they should not come back, and until
// BanUntil (unix seconds, 0 = no ban) the id is refused.
type Disconnect struct {
	ID, Reason string
	Reconnect  bool
	BanUntil   uint64
}

// AppendDisconnect appends a TypeDisconnect payload.
func AppendDisconnect(dst []byte, d *Disconnect) []byte {
	dst = AppendString(dst, d.ID)
	dst = AppendString(dst, d.Reason)
	var flags byte
	if d.Reconnect {
		flags = 1
	}
	return AppendUvarint(append(dst, flags), d.BanUntil)
}

// ParseDisconnect reads a TypeDisconnect payload.
func ParseDisconnect(p []byte) (Disconnect, error) {
	r := NewReader(p)
	d := Disconnect{ID: string(r.Bytes()), Reason: string(r.Bytes())}
	d.Reconnect = r.Byte()&1 != 0
	d.BanUntil = r.Uvarint()
	return d, r.Err()
}

// AppendChannel appends a TypeChannel payload.
func AppendChannel(dst []byte, subscribe bool, id, channel string) []byte {
	var op byte
	if subscribe {
		op = 1
	}
	return AppendString(AppendString(append(dst, op), id), channel)
}

// ParseChannel reads a TypeChannel payload; the slices alias it.
func ParseChannel(p []byte) (subscribe bool, id, channel []byte, err error) {
	r := NewReader(p)
	subscribe = r.Byte() == 1
	id, channel = r.Bytes(), r.Bytes()
	return subscribe, id, channel, r.Err()
}

// Revoke is a TypeRevoke payload: with ID, the id's tokens issued before
// Before (unix seconds); with JTI, the token of that jti; either refused
// until Until.
type Revoke struct {
	ID     string `json:"id,omitempty"`
	JTI    string `json:"jti,omitempty"`
	Before int64  `json:"before,omitempty"`
	Until  int64  `json:"until"`
	// End: the id's live connections end too (POST /revoke); not when a
	// worker that starts is told what is in force.
	End bool `json:"-"`
}

// AppendRevoke appends a TypeRevoke payload.
func AppendRevoke(dst []byte, r *Revoke) []byte {
	dst = AppendString(AppendString(dst, r.ID), r.JTI)
	dst = AppendUvarint(AppendUvarint(dst, uint64(r.Before)), uint64(r.Until))
	var end byte
	if r.End {
		end = 1
	}
	return append(dst, end)
}

// ParseRevoke reads a TypeRevoke payload.
func ParseRevoke(p []byte) (Revoke, error) {
	r := NewReader(p)
	v := Revoke{ID: string(r.Bytes()), JTI: string(r.Bytes())}
	v.Before, v.Until = int64(r.Uvarint()), int64(r.Uvarint())
	v.End = r.Byte() == 1
	return v, r.Err()
}
