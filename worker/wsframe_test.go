package worker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// The frame layer is checked against gobwas/ws as the oracle: it builds
// the client frames the tests send and reads the server frames back.

var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// clientFrame is a masked client frame as gobwas writes it.
func clientFrame(fin bool, rsv byte, op ws.OpCode, payload []byte) []byte {
	return frameWith(ws.Header{Fin: fin, Rsv: rsv, OpCode: op, Masked: true, Mask: testMask, Length: int64(len(payload))}, payload)
}

func frameWith(h ws.Header, payload []byte) []byte {
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, h); err != nil {
		panic(err)
	}
	p := append([]byte(nil), payload...)
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	b.Write(p)
	return b.Bytes()
}

func text(s string) []byte { return clientFrame(true, 0, ws.OpText, []byte(s)) }

func TestAppendWSHeaderMatchesGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 1 << 20} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpPong, ws.OpClose} {
			var want bytes.Buffer
			h := ws.Header{Fin: true, OpCode: op, Length: int64(n)}
			ws.WriteHeader(&want, h)
			got := appendWSHeader([]byte("x"), op, n)[1:]
			if !bytes.Equal(got, want.Bytes()) || len(got) != ws.HeaderSize(h) {
				t.Errorf("op %v length %d: % x, gobwas writes % x", op, n, got, want.Bytes())
			}
		}
	}
}

func TestAppendWSText(t *testing.T) {
	for body, want := range map[string]string{
		`{"id":1,"data":"é"}`:            `{"id":1,"data":"é"}`,
		"{\"id\":1,\"data\":\"a\xffb\"}": `{"id":1,"data":"a` + "\uFFFD" + `b"}`,
		"\"\xe2\x82\"":                   "\"\uFFFD\uFFFD\"",
		strings.Repeat("x", 70000):       strings.Repeat("x", 70000),
	} {
		frame := appendWSText(nil, []byte(body))
		r := bytes.NewReader(frame)
		h, err := ws.ReadHeader(r)
		if err != nil || !h.Fin || h.OpCode != ws.OpText || h.Masked {
			t.Fatalf("%q: header %+v, %v", body, h, err)
		}
		rest, _ := io.ReadAll(r)
		if int64(len(rest)) != h.Length || string(rest) != want || !utf8.Valid(rest) {
			t.Errorf("%q: payload %q (length field %d), want %q", body, rest, h.Length, want)
		}
	}
}

// parseFrame on single frames: what it accepts and how it fails.
func TestParseFrame(t *testing.T) {
	long := func(n uint64) []byte { // a masked text header with a 64-bit length
		return append(binary.BigEndian.AppendUint64([]byte{0x81, 0x80 | 127}, n), testMask[:]...)
	}
	cases := []struct {
		name       string
		in         []byte
		fragmented bool
		max        int64 // 64 KiB when 0
		err        error
		op         ws.OpCode
		payload    string
	}{
		{name: "text", in: text("hi"), op: ws.OpText, payload: "hi"},
		{name: "empty text", in: text(""), op: ws.OpText},
		{name: "16-bit length", in: text(strings.Repeat("a", 126)), op: ws.OpText, payload: strings.Repeat("a", 126)},
		{name: "64-bit length", in: frameWith(ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: 70000}, make([]byte, 70000)), max: 1 << 20, op: ws.OpText, payload: string(make([]byte, 70000))},
		{name: "at the limit", in: text(strings.Repeat("a", 100)), max: 100, op: ws.OpText, payload: strings.Repeat("a", 100)},
		{name: "ping", in: clientFrame(true, 0, ws.OpPing, []byte("p")), op: ws.OpPing, payload: "p"},
		{name: "ping 125", in: clientFrame(true, 0, ws.OpPing, make([]byte, 125)), op: ws.OpPing, payload: string(make([]byte, 125))},
		{name: "continuation in a message", in: clientFrame(true, 0, ws.OpContinuation, []byte("x")), fragmented: true, op: ws.OpContinuation, payload: "x"},
		{name: "ping in a message", in: clientFrame(true, 0, ws.OpPing, nil), fragmented: true, op: ws.OpPing},
		{name: "empty", in: nil, err: errNeedMore},
		{name: "one byte", in: text("hi")[:1], err: errNeedMore},
		{name: "half a 16-bit length", in: text(strings.Repeat("a", 200))[:3], err: errNeedMore},
		{name: "no mask yet", in: text("hi")[:4], err: errNeedMore},
		{name: "half a payload", in: text("hello")[:8], err: errNeedMore},
		{name: "unmasked", in: frameWith(ws.Header{Fin: true, OpCode: ws.OpText, Length: 2}, []byte("hi")), err: errWSUnmasked},
		{name: "rsv1", in: clientFrame(true, 4, ws.OpText, nil), err: errWSRsv},
		{name: "rsv3", in: clientFrame(true, 1, ws.OpPing, nil), err: errWSRsv},
		{name: "opcode 3", in: clientFrame(true, 0, 3, nil), err: errWSReserved},
		{name: "opcode 11", in: clientFrame(true, 0, 11, nil), err: errWSReserved},
		{name: "ping 126", in: clientFrame(true, 0, ws.OpPing, make([]byte, 126)), err: errWSControlLen},
		{name: "fragmented ping", in: clientFrame(false, 0, ws.OpPing, nil), err: errWSControlFrag},
		{name: "continuation alone", in: clientFrame(true, 0, ws.OpContinuation, nil), err: errWSContinuation},
		{name: "text in a message", in: text("x"), fragmented: true, err: errWSInterleaved},
		{name: "over the limit", in: text(strings.Repeat("a", 101))[:8], max: 100, err: errWSTooBig},
		{name: "huge length, header only", in: long(1 << 62), err: errWSTooBig},
		{name: "length top bit", in: long(1 << 63), err: errWSLength},
	}
	for _, c := range cases {
		var f wsFrame
		max := c.max
		if max == 0 {
			max = 1 << 16
		}
		n, err := parseFrame(c.in, &f, c.fragmented, max)
		if err != c.err {
			t.Errorf("%s: error %v, want %v", c.name, err, c.err)
			continue
		}
		if err != nil {
			continue
		}
		ws.Cipher(f.payload, f.Mask, 0)
		if n != len(c.in) || f.OpCode != c.op || string(f.payload) != c.payload {
			t.Errorf("%s: n=%d op=%v payload %q", c.name, n, f.OpCode, f.payload)
		}
	}
}

func TestParseFrameAllocatesNothing(t *testing.T) {
	in := clientFrame(true, 0, ws.OpPing, []byte("heartbeat"))
	var f wsFrame
	if n := testing.AllocsPerRun(1000, func() { parseFrame(in, &f, false, 1<<16) }); n != 0 {
		t.Errorf("parseFrame allocates %.1f times per frame", n)
	}
}

// Every error the parser can return fails the connection with a valid
// close frame that gobwas reads back as the intended status.
func TestWSErrorsCarryTheirCloseFrame(t *testing.T) {
	for _, e := range []*wsError{errWSReserved, errWSControlLen, errWSControlFrag, errWSRsv, errWSUnmasked,
		errWSInterleaved, errWSContinuation, errWSLength, errWSCloseBody, errWSNoPong, errWSTooBig,
		errWSBinary, errWSUTF8, errWSCommand, errWSChannel, errWSChannels, errWSRate} {
		r := bytes.NewReader(e.frame)
		h, err := ws.ReadHeader(r)
		p, _ := io.ReadAll(r)
		code, reason := ws.ParseCloseFrameData(p)
		if err != nil || h.OpCode != ws.OpClose || !h.Fin || h.Length > ws.MaxControlFramePayloadSize || code != e.code || reason != e.text {
			t.Errorf("%s: frame % x", e.text, e.frame)
		}
	}
}

// streamEvents runs parseFrame over a stream delivered in chunks the way
// wsData does (complete frames in place, a partial one buffered), tracking
// fragmentation, and lists what it saw up to the first error.
func streamEvents(chunks [][]byte, max int64) []string {
	var evs []string
	var pending []byte
	fragmented := false
	for _, in := range chunks {
		buf := in
		if len(pending) > 0 {
			pending = append(pending, in...)
			buf = pending
		}
		for len(buf) > 0 {
			var f wsFrame
			n, err := parseFrame(buf, &f, fragmented, max)
			if err == errNeedMore {
				break
			}
			if err != nil {
				return append(evs, "fail "+err.Error())
			}
			buf = buf[n:]
			p := append([]byte(nil), f.payload...)
			ws.Cipher(p, f.Mask, 0)
			if f.OpCode.IsData() {
				fragmented = !f.Fin
			}
			evs = append(evs, fmt.Sprintf("%v fin=%v %q", f.OpCode, f.Fin, p))
		}
		pending = append(pending[:0], buf...)
	}
	if len(pending) > 0 {
		evs = append(evs, fmt.Sprintf("partial %d", len(pending)))
	}
	return evs
}

// FuzzParseFrame: a stream of client frames split at any point parses to
// the same frames as the whole stream, and every frame parseFrame accepts
// is the frame gobwas reads from the same bytes.
func FuzzParseFrame(f *testing.F) {
	f.Add(append(append(text(`{"since":1}`), clientFrame(true, 0, ws.OpPing, []byte("p"))...), clientFrame(true, 0, ws.OpClose, []byte{3, 232})...), 5)
	f.Add(append(clientFrame(false, 0, ws.OpText, []byte(`{"sin`)), clientFrame(true, 0, ws.OpContinuation, []byte(`ce":1}`))...), 13)
	f.Add(text(strings.Repeat(" ", 300)), 3)
	f.Add(frameWith(ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: 70000}, make([]byte, 70000))[:40], 11)
	f.Add(clientFrame(true, 4, ws.OpBinary, []byte{1}), 1)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if split < 0 || split > len(data) {
			return
		}
		const max = 1 << 10
		whole := streamEvents([][]byte{data}, max)
		parts := streamEvents([][]byte{data[:split], data[split:]}, max)
		if strings.Join(whole, "\n") != strings.Join(parts, "\n") {
			t.Fatalf("split at %d:\n%s\nwhole:\n%s", split, strings.Join(parts, "\n"), strings.Join(whole, "\n"))
		}
		// The first frame against gobwas.
		var fr wsFrame
		n, err := parseFrame(data, &fr, false, max)
		if err != nil {
			return
		}
		r := bytes.NewReader(data)
		h, gerr := ws.ReadHeader(r)
		if gerr != nil || h != fr.Header {
			t.Fatalf("parsed %+v, gobwas reads %+v (%v)", fr.Header, h, gerr)
		}
		if ws.CheckHeader(h, ws.StateServerSide) != nil {
			t.Fatalf("accepted a frame gobwas rejects: %+v", h)
		}
		if hl := len(data) - r.Len(); n != hl+int(h.Length) {
			t.Fatalf("frame length %d, gobwas: header %d + payload %d", n, hl, h.Length)
		}
	})
}

func TestParseCommand(t *testing.T) {
	for in, want := range map[string]string{
		`{"since":0}`:                         "1 0 ",
		` { "since" : 1764000000000001 } `:    "1 1764000000000001 ",
		`{"subscribe":"news"}`:                "2 0 news",
		"{\n\t\"unsubscribe\":\"a-b_c\"\r\n}": "3 0 a-b_c",
		`{"subscribe":"bad name"}`:            "2 0 bad name", // parsed; ipc.ValidName rejects it
		`{"since":01}`:                        "",
		`{"since":-1}`:                        "",
		`{"since":1.5}`:                       "",
		`{"since":"1"}`:                       "",
		`{"since":18446744073709551616}`:      "",
		`{"since":1,"x":2}`:                   "",
		`{"subscribe":"a\"b"}`:                "",
		`{"subscribe":"a\\u0041"}`:            "",
		`{"subscribe":1}`:                     "",
		`{"Since":1}`:                         "",
		`{"since":1}x`:                        "",
		`{"since":1`:                          "",
		`{}`:                                  "",
		`[]`:                                  "",
		``:                                    "",
		`hello`:                               "",
	} {
		var c wsCommand
		got := ""
		if parseCommand([]byte(in), &c) {
			got = fmt.Sprintf("%d %d %s", c.op, c.since, c.channel)
		}
		if got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestValidCloseCode(t *testing.T) {
	for _, c := range []ws.StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		if !validCloseCode(c) {
			t.Errorf("%d rejected", c)
		}
	}
	for _, c := range []ws.StatusCode{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		if validCloseCode(c) {
			t.Errorf("%d accepted", c)
		}
	}
}
