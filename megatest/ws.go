package megatest

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
)

// WebSocket frames from server to client (RFC 6455 §5.2). A client only
// reads unmasked frames and writes masked ones.

type wsOp byte

const (
	wsCont   wsOp = 0x0
	wsText   wsOp = 0x1
	wsBinary wsOp = 0x2
	wsClose  wsOp = 0x8
	wsPing   wsOp = 0x9
	wsPong   wsOp = 0xA
)

// wsServiceRestart is close status 1012: the server is restarting, come
// back — megacomet's hand-over notice.
const wsServiceRestart = 1012

// wsTokenExpired is megacomet's close status for a token that expired: come
// back with a new one.
const wsTokenExpired = 4001

// wsDisconnected and wsGone close a connection for POST /disconnect: it may
// come back, or should not.
const (
	wsDisconnected = 4002
	wsGone         = 4003
)

var (
	errWSFrame  = errors.New("megatest: malformed WebSocket frame")
	errWSMasked = errors.New("megatest: masked WebSocket frame from the server")
	errWSLarge  = errors.New("megatest: WebSocket message over 1 MiB")
	errWSFrag   = errors.New("megatest: control frame inside a fragmented message")
	errWSBinary = errors.New("megatest: binary WebSocket message")
	errWSClosed = errors.New("megatest: WebSocket closed by the server")
	errWSUTF8   = errors.New("megatest: WebSocket text that is not UTF-8")
)

// wsMsg is one data message or control frame. payload aliases the input,
// or scratch for a fragmented message.
type wsMsg struct {
	op      wsOp
	payload []byte
}

func (m *wsMsg) closeCode() int {
	if len(m.payload) < 2 {
		return 1005 // no status received
	}
	return int(binary.BigEndian.Uint16(m.payload))
}

// parseWSFrame parses one frame header and payload at the front of b.
func parseWSFrame(b []byte) (n int, fin bool, op wsOp, payload []byte, err error) {
	if len(b) < 2 {
		return 0, false, 0, nil, errNeedMore
	}
	fin, op = b[0]&0x80 != 0, wsOp(b[0]&0x0f)
	// "MUST be 0 unless an extension is negotiated" — we negotiate none.
	if b[0]&0x70 != 0 {
		return 0, false, 0, nil, errWSFrame
	}
	// "A client MUST close a connection if it detects a masked frame."
	if b[1]&0x80 != 0 {
		return 0, false, 0, nil, errWSMasked
	}
	size, h := uint64(b[1]&0x7f), 2
	switch size {
	case 126:
		if len(b) < 4 {
			return 0, false, 0, nil, errNeedMore
		}
		size, h = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, false, 0, nil, errNeedMore
		}
		size, h = binary.BigEndian.Uint64(b[2:]), 10
	}
	switch op {
	case wsCont, wsText, wsBinary:
	case wsClose, wsPing, wsPong:
		// "All control frames MUST have a payload length of 125 bytes or
		// less and MUST NOT be fragmented."
		if size > 125 || !fin {
			return 0, false, 0, nil, errWSFrame
		}
	default:
		return 0, false, 0, nil, errWSFrame
	}
	if size > maxEvent {
		return 0, false, 0, nil, errWSLarge
	}
	end := h + int(size)
	if len(b) < end {
		return 0, false, 0, nil, errNeedMore
	}
	return end, fin, op, b[h:end], nil
}

// parseWSMessage parses one whole message (its frames up to FIN, joined
// into *scratch when there are several) or one control frame.
func parseWSMessage(b []byte, scratch *[]byte) (int, wsMsg, error) {
	n, fin, op, payload, err := parseWSFrame(b)
	if err != nil {
		return 0, wsMsg{}, err
	}
	if op == wsCont {
		return 0, wsMsg{}, errWSFrame // a continuation with nothing to continue
	}
	if fin {
		return n, wsMsg{op: op, payload: payload}, nil
	}
	// Fragmented: find every fragment before copying any.
	total, off := len(payload), n
	for {
		k, fin, cop, p, err := parseWSFrame(b[off:])
		if err != nil {
			return 0, wsMsg{}, err
		}
		if cop != wsCont {
			return 0, wsMsg{}, errWSFrag
		}
		total += len(p)
		if total > maxEvent {
			return 0, wsMsg{}, errWSLarge
		}
		off += k
		if fin {
			break
		}
	}
	buf := append((*scratch)[:0], payload...)
	for i := n; i < off; {
		k, _, _, p, _ := parseWSFrame(b[i:])
		buf = append(buf, p...)
		i += k
	}
	*scratch = buf
	return off, wsMsg{op: op, payload: buf}, nil
}

// appendWSFrame appends a masked client frame (FIN set).
func appendWSFrame(dst []byte, op wsOp, payload []byte, mask uint32) []byte {
	dst = append(dst, 0x80|byte(op))
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var key [4]byte
	binary.BigEndian.PutUint32(key[:], mask)
	dst = append(dst, key[:]...)
	for i, c := range payload {
		dst = append(dst, c^key[i&3])
	}
	return dst
}

func appendWSClose(dst []byte, code int, mask uint32) []byte {
	var p [2]byte
	if code == 1005 || code == 1006 || code == 1015 {
		code = 1000 // reserved codes must not be sent
	}
	binary.BigEndian.PutUint16(p[:], uint16(code))
	return appendWSFrame(dst, wsClose, p[:], mask)
}

// wsKeyPair makes a Sec-WebSocket-Key from seed and the
// Sec-WebSocket-Accept value the server must answer with (§4.2.2).
func wsKeyPair(seed uint64) (key, accept []byte) {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:], seed)
	binary.LittleEndian.PutUint64(raw[8:], seed*0x9e3779b97f4a7c15)
	key = []byte(base64.StdEncoding.EncodeToString(raw[:]))
	return key, wsAccept(key)
}

func wsAccept(key []byte) []byte {
	h := sha1.New()
	h.Write(key)
	h.Write([]byte("258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return []byte(base64.StdEncoding.EncodeToString(h.Sum(nil)))
}
