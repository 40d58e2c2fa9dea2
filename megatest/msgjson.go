package megatest

import "errors"

// The JSON here is read in place, without allocating: megatest needs only
// the message id and, inside data, the fields it wrote itself. Everything
// else is skipped but still checked against the JSON grammar, so a server
// that sends broken JSON is caught.

var (
	errJSON    = errors.New("megatest: malformed JSON")
	errNoID    = errors.New("megatest: message without a numeric id")
	errTooDeep = errors.New("megatest: JSON nested too deep")
)

const maxDepth = 64

// What megatest writes into the data of its own messages:
// {"t":<send unix ns>,"k":<seq>,"r":"<run>"} for -pub and
// {"t":<send unix ns>,"b":<round>,"r":"<run>"} for -broadcast and
// {"t":<send unix ns>,"c":<seq>,"r":"<run>"} for -chat.
const (
	kindNone  = 0
	kindPub   = 1
	kindBcast = 2
	kindChat  = 3
)

// msgInfo is what megatest reads from one message.
type msgInfo struct {
	id   uint64
	t    int64  // send time of one of our messages, unix ns
	seq  uint64 // k or b
	kind uint8  // kindPub or kindBcast when the message is from this run
	gap  bool   // not a message: the server's {"gap":{"after":A,"before":B}}
	// ack: not a message: the answer to a client publish, {"ack":ID};
	// refused: not a message: {"error":…}, a refused publish.
	ack     uint64
	refused bool
	// after, before: a gap's bounds (ids strictly between may be missing)
	after, before uint64
}

// scanMessage reads the single message object that is all of b (blanks
// around it allowed). run is this run's tag: only data carrying it is ours.
func scanMessage(b, run []byte, m *msgInfo) error {
	i, err := scanMessageAt(b, skipWS(b, 0), run, m)
	if err != nil {
		return err
	}
	if skipWS(b, i) != len(b) {
		return errJSON
	}
	return nil
}

// scanMessageAt reads the message object starting at b[i] and returns the
// index just past it.
func scanMessageAt(b []byte, i int, run []byte, m *msgInfo) (int, error) {
	*m = msgInfo{}
	hasID, gap := false, false
	var d dataInfo
	i, err := scanObject(b, i, func(key []byte, b []byte, i int) (int, error) {
		switch string(key) {
		case "id":
			v, j, ok := scanUint(b, i)
			if !ok {
				return 0, errNoID
			}
			m.id, hasID = v, true
			return j, nil
		case "data":
			if i < len(b) && b[i] == '{' {
				return scanData(b, i, &d)
			}
		case "ack":
			if v, j, ok := scanUint(b, i); ok {
				m.ack = v
				return j, nil
			}
		case "error":
			m.refused = true
		case "gap":
			gap = true
			if i < len(b) && b[i] == '{' {
				return scanObject(b, i, func(key, b []byte, i int) (int, error) {
					if v, j, ok := scanUint(b, i); ok && (string(key) == "after" || string(key) == "before") {
						if key[0] == 'a' {
							m.after = v
						} else {
							m.before = v
						}
						return j, nil
					}
					return skipValue(b, i, 2)
				})
			}
		}
		return skipValue(b, i, 1)
	})
	if err != nil {
		return 0, err
	}
	if gap && !hasID {
		a, bf := m.after, m.before
		*m = msgInfo{gap: true, after: a, before: bf}
		return i, nil
	}
	if !hasID && (m.ack != 0 || m.refused) {
		a, r := m.ack, m.refused
		*m = msgInfo{ack: a, refused: r}
		return i, nil
	}
	if !hasID {
		return 0, errNoID
	}
	if d.hasT && d.kind != kindNone && len(run) > 0 && string(d.run) == string(run) {
		m.t, m.seq, m.kind = d.t, d.seq, d.kind
	}
	return i, nil
}

type dataInfo struct {
	t    int64
	seq  uint64
	run  []byte
	hasT bool
	kind uint8
}

func scanData(b []byte, i int, d *dataInfo) (int, error) {
	return scanObject(b, i, func(key []byte, b []byte, i int) (int, error) {
		switch string(key) {
		case "t":
			if v, j, ok := scanUint(b, i); ok {
				d.t, d.hasT = int64(v), true
				return j, nil
			}
		case "k", "b", "c":
			if v, j, ok := scanUint(b, i); ok {
				d.seq = v
				switch key[0] {
				case 'k':
					d.kind = kindPub
				case 'b':
					d.kind = kindBcast
				default:
					d.kind = kindChat
				}
				return j, nil
			}
		case "r":
			if i < len(b) && b[i] == '"' {
				s, e, j, err := scanString(b, i)
				if err != nil {
					return 0, err
				}
				d.run = b[s:e]
				return j, nil
			}
		}
		return skipValue(b, i, 2)
	})
}

// scanObject walks the object at b[i], calling field for each member with
// i at the start of its value; field returns the index past the value.
// The func literals do not escape, so this allocates nothing.
func scanObject(b []byte, i int, field func(key, b []byte, i int) (int, error)) (int, error) {
	return scanList(b, i, '{', '}', func(b []byte, i int) (int, error) {
		s, e, j, err := scanString(b, i)
		if err != nil {
			return 0, err
		}
		j = skipWS(b, j)
		if j >= len(b) || b[j] != ':' {
			return 0, errJSON
		}
		return field(b[s:e], b, skipWS(b, j+1))
	})
}

// scanUint reads a JSON number that is a plain unsigned integer fitting
// uint64. ok is false for anything else (the caller then skips it as a
// general value, so "-1" or "1.5" are valid JSON that simply is not ours).
func scanUint(b []byte, i int) (v uint64, end int, ok bool) {
	j := i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		d := uint64(b[j] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, 0, false
		}
		v = v*10 + d
		j++
	}
	if j == i || (b[i] == '0' && j > i+1) {
		return 0, 0, false
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
		return 0, 0, false
	}
	return v, j, true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString reads the string at b[i]; [s, e) is its raw content.
func scanString(b []byte, i int) (s, e, end int, err error) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, 0, errJSON
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return i + 1, j, j + 1, nil
		case c == '\\':
			j++
			if j >= len(b) {
				return 0, 0, 0, errJSON
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) || !isHex(b[j+1]) || !isHex(b[j+2]) || !isHex(b[j+3]) || !isHex(b[j+4]) {
					return 0, 0, 0, errJSON
				}
				j += 4
			default:
				return 0, 0, 0, errJSON
			}
		case c < 0x20:
			return 0, 0, 0, errJSON
		}
	}
	return 0, 0, 0, errJSON
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipValue checks and skips any JSON value at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if depth > maxDepth {
		return 0, errTooDeep
	}
	if i >= len(b) {
		return 0, errJSON
	}
	switch c := b[i]; {
	case c == '{':
		return scanObject(b, i, func(_, b []byte, i int) (int, error) { return skipValue(b, i, depth+1) })
	case c == '[':
		return scanArray(b, i, func(b []byte, i int) (int, error) { return skipValue(b, i, depth+1) })
	case c == '"':
		_, _, j, err := scanString(b, i)
		return j, err
	case c == '-' || c >= '0' && c <= '9':
		return skipNumber(b, i)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	}
	return 0, errJSON
}

// scanArray walks the array at b[i], calling elem at the start of each
// element; elem returns the index past it.
func scanArray(b []byte, i int, elem func(b []byte, i int) (int, error)) (int, error) {
	return scanList(b, i, '[', ']', elem)
}

// scanList walks what open and close enclose at b[i]: items separated by
// commas, each read by item from its start to the index past it.
func scanList(b []byte, i int, open, close byte, item func(b []byte, i int) (int, error)) (int, error) {
	if i >= len(b) || b[i] != open {
		return 0, errJSON
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == close {
		return i + 1, nil
	}
	for {
		j, err := item(b, i)
		if err != nil {
			return 0, err
		}
		j = skipWS(b, j)
		if j >= len(b) {
			return 0, errJSON
		}
		switch b[j] {
		case ',':
			i = skipWS(b, j+1)
		case close:
			return j + 1, nil
		default:
			return 0, errJSON
		}
	}
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, errJSON
	}
	return i + len(lit), nil
}

// skipNumber follows the JSON number grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(b []byte, i int) (int, error) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return 0, errJSON
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return 0, errJSON
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return 0, errJSON
		}
		i = j
	}
	return i, nil
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
