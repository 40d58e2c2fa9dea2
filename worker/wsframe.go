package worker

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// WebSocket frames (RFC 6455 §5), the low layer of ws.go: parseFrame reads
// one client frame in place, appendWSHeader writes a server frame's header,
// and wsError is a reason to fail the connection with its close frame
// compiled once. gobwas/ws supplies the types, the header checks, the
// unmasking and the close-code rules; the byte-level header codec is ours
// because gobwas's reads and writes go through io.Reader/io.Writer, which
// costs an allocation per frame on evio's append-style hot path
// (wsframe_test.go checks both directions against gobwas byte for byte).

// wsFrame is one client frame parsed in place: payload aliases the input
// and stays masked until the caller unmasks it with ws.Cipher.
type wsFrame struct {
	ws.Header
	payload []byte
}

// wsError fails a WebSocket connection: the close frame that says why
// (§7.4.1 status, short reason) is built once, so failing allocates
// nothing. Reasons never quote client bytes.
type wsError struct {
	code  ws.StatusCode
	text  string
	frame []byte
}

func (e *wsError) Error() string { return "websocket: " + e.text }

func newWSError(code ws.StatusCode, reason string) *wsError {
	return &wsError{code: code, text: reason, frame: ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason)))}
}

// Close status 1012 is IANA-registered but not in RFC 6455, so gobwas has
// no name for it.
const wsStatusServiceRestart ws.StatusCode = 1012

var (
	errWSReserved     = newWSError(ws.StatusProtocolError, "reserved opcode")
	errWSControlLen   = newWSError(ws.StatusProtocolError, "control frame payload over 125 bytes")
	errWSControlFrag  = newWSError(ws.StatusProtocolError, "fragmented control frame")
	errWSRsv          = newWSError(ws.StatusProtocolError, "RSV bits set, no extension negotiated")
	errWSUnmasked     = newWSError(ws.StatusProtocolError, "client frames must be masked")
	errWSInterleaved  = newWSError(ws.StatusProtocolError, "new data frame inside a fragmented message")
	errWSContinuation = newWSError(ws.StatusProtocolError, "continuation frame outside a fragmented message")
	errWSLength       = newWSError(ws.StatusProtocolError, "64-bit payload length with the top bit set")
	errWSCloseBody    = newWSError(ws.StatusProtocolError, "bad close frame payload")
	errWSNoPong       = newWSError(ws.StatusProtocolError, "no pong within two heartbeat intervals")
	errWSTooBig       = newWSError(ws.StatusMessageTooBig, "message over comet.ws_max_message")
	errWSBinary       = newWSError(ws.StatusUnsupportedData, "binary messages are not accepted")
	errWSUTF8         = newWSError(ws.StatusInvalidFramePayloadData, "text message is not valid UTF-8")
	errWSCommand      = newWSError(ws.StatusPolicyViolation, `send {"since":N}, {"subscribe":"c"} or {"unsubscribe":"c"}`)
	errWSSince        = newWSError(ws.StatusPolicyViolation, "bad since: message ids are below 2^53")
	errWSChannel      = newWSError(ws.StatusPolicyViolation, "bad channel: use 1 to 64 of A-Z a-z 0-9 _ -")
	errWSChannels     = newWSError(ws.StatusPolicyViolation, "too many channels: 16 at most")
	errWSRate         = newWSError(ws.StatusPolicyViolation, "too many commands: 32 at once, then 10 a second")
	errWSAsking       = newWSError(ws.StatusPolicyViolation, "more input than comet.ws_max_message while the application decides on a command")
	errWSControlRate  = newWSError(ws.StatusPolicyViolation, "too many pings: over comet.ws_ping_rate")
	errWSFragTimeout  = newWSError(ws.StatusPolicyViolation, "message not finished within comet.ws_fragment_timeout")
	errWSHeld         = newWSError(ws.StatusPolicyViolation, "server busy: too many unfinished messages")
)

// Precompiled frames the server sends.
var (
	wsPing        = ws.CompiledPing  // heartbeat (§5.5.2), no payload
	wsPong        = ws.CompiledPong  // answer to an empty ping
	wsCloseEmpty  = ws.CompiledClose // answer to a close without status
	wsCloseReload = ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(wsStatusServiceRestart, "reconnect")))
)

// checkErrors maps gobwas's header checks to our close frames.
var checkErrors = map[error]*wsError{
	ws.ErrProtocolOpCodeReserved:         errWSReserved,
	ws.ErrProtocolControlPayloadOverflow: errWSControlLen,
	ws.ErrProtocolControlNotFinal:        errWSControlFrag,
	ws.ErrProtocolNonZeroRsv:             errWSRsv,
	ws.ErrProtocolMaskRequired:           errWSUnmasked,
	ws.ErrProtocolContinuationExpected:   errWSInterleaved,
	ws.ErrProtocolContinuationUnexpected: errWSContinuation,
}

// parseFrame parses the client frame at the front of b into f and returns
// its length. It returns errNeedMore while the frame is incomplete, and a
// *wsError as soon as the header shows the frame must fail the connection
// (before its payload arrives). fragmented says a data message has begun
// and not finished; limit bounds a frame's payload.
func parseFrame(b []byte, f *wsFrame, fragmented bool, limit int64) (int, error) {
	if len(b) < 2 {
		return 0, errNeedMore
	}
	// §5.2: FIN, RSV1-3, opcode; MASK, payload length 7 bits, "if 126, the
	// following 2 bytes interpreted as a 16-bit unsigned integer are the
	// payload length. If 127, the following 8 bytes interpreted as a 64-bit
	// unsigned integer (the most significant bit MUST be 0)".
	h := ws.Header{
		Fin:    b[0]&0x80 != 0,
		Rsv:    b[0] >> 4 & 0x7,
		OpCode: ws.OpCode(b[0] & 0x0f),
		Masked: b[1]&0x80 != 0,
		Length: int64(b[1] & 0x7f),
	}
	n := 2
	switch h.Length {
	case 126:
		if len(b) < 4 {
			return 0, errNeedMore
		}
		h.Length, n = int64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, errNeedMore
		}
		v := binary.BigEndian.Uint64(b[2:])
		if v>>63 != 0 {
			return 0, errWSLength
		}
		h.Length, n = int64(v), 10
	}
	if h.Masked {
		if len(b) < n+4 {
			return 0, errNeedMore
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	state := ws.StateServerSide
	if fragmented {
		state = state.Set(ws.StateFragmented)
	}
	// ws.CheckHeader enforces, quoting §5.2-§5.5: reserved opcodes, control
	// frames of at most 125 bytes that are not fragmented, zero RSV bits,
	// "The server MUST close the connection upon receiving a frame that is
	// not masked", and continuation frames only inside a fragmented message
	// (§5.4).
	if err := ws.CheckHeader(h, state); err != nil {
		if e := checkErrors[err]; e != nil {
			return 0, e
		}
		return 0, errWSReserved
	}
	// §7.4.1: 1009 "indicates that an endpoint is terminating the connection
	// because it has received a message that is too big for it to process."
	if h.Length > limit {
		return 0, errWSTooBig
	}
	if int64(len(b)-n) < h.Length {
		return 0, errNeedMore
	}
	end := n + int(h.Length)
	f.Header, f.payload = h, b[n:end]
	return end, nil
}

// appendWSHeader appends the header of an unmasked, final server frame
// carrying n payload bytes: §5.2 with "the minimal number of bytes"
// for the length, and §5.1 "A server MUST NOT mask any frames that it
// sends to the client."
func appendWSHeader(dst []byte, op ws.OpCode, n int) []byte {
	b0 := 0x80 | byte(op)
	switch {
	case n <= 125:
		return append(dst, b0, byte(n))
	case n <= 0xffff:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, 127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// appendWSText appends body as one text frame. §5.6: text "is interpreted
// as UTF-8"; a message whose bytes are not (published JSON may carry
// invalid UTF-8 inside a string) has each invalid byte replaced by U+FFFD,
// or every browser would fail the connection with 1007 - and fail it again
// on each reconnect's replay.
func appendWSText(dst, body []byte) []byte {
	if utf8.Valid(body) {
		return append(appendWSHeader(dst, ws.OpText, len(body)), body...)
	}
	n := 0
	for i := 0; i < len(body); {
		r, size := utf8.DecodeRune(body[i:])
		if r == utf8.RuneError && size == 1 {
			n += utf8.RuneLen(utf8.RuneError)
		} else {
			n += size
		}
		i += size
	}
	dst = appendWSHeader(dst, ws.OpText, n)
	for i := 0; i < len(body); {
		r, size := utf8.DecodeRune(body[i:])
		if r == utf8.RuneError && size == 1 {
			dst = utf8.AppendRune(dst, utf8.RuneError)
		} else {
			dst = append(dst, body[i:i+size]...)
		}
		i += size
	}
	return dst
}

// validCloseCode reports whether a client may send code (§7.4): what
// gobwas accepts, plus 1012-1014, which IANA registered after the RFC
// (service restart, try again later, bad gateway), and nothing past the
// private range 4000-4999 (§7.4.2 defines no code above it).
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1012 && code <= 1014:
		return true
	case code > ws.StatusRangePrivate.Max:
		return false
	}
	return ws.CheckCloseFrameData(code, "") == nil
}
