package megatest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// Every parser is fed the way the engine feeds it: bytes arrive in pieces,
// whole units are consumed, the rest waits for more. unitParser is one
// parser reduced to that shape, rendering each unit as text so runs can be
// compared.
type unitParser func(b []byte) (n int, unit string, err error)

var parsers = map[string]unitParser{
	"head": func(b []byte) (int, string, error) {
		var h respHead
		n, err := parseHead(b, &h)
		return n, fmt.Sprintf("%d cl=%d chunked=%v close=%v up=%v ct=%q acc=%q to=%q cursor=%d/%v", h.status, h.contentLength, h.chunked, h.close, h.upgrade, h.contentType, h.wsAccept, h.upgradeTo, h.cursor, h.hasCursor), err
	},
	"sse": func() unitParser {
		var scratch []byte
		return func(b []byte) (int, string, error) {
			var ev sseEvent
			n, err := parseSSE(b, &ev, &scratch)
			return n, fmt.Sprintf("id=%q/%v data=%q/%d retry=%d comments=%d fields=%d reconnect=%v", ev.id, ev.hasID, ev.data, ev.dataLines, ev.retry, ev.comments, ev.fields, ev.reconnect), err
		}
	}(),
	"chunk": func(b []byte) (int, string, error) {
		n, p, last, err := parseChunk(b)
		return n, fmt.Sprintf("%q last=%v", p, last), err
	},
	"ws": func() unitParser {
		var scratch []byte
		return func(b []byte) (int, string, error) {
			n, m, err := parseWSMessage(b, &scratch)
			return n, fmt.Sprintf("op=%d %q", m.op, m.payload), err
		}
	}(),
	"lp": func(b []byte) (int, string, error) {
		var h respHead
		hn, err := parseHead(b, &h)
		if err != nil {
			return 0, "", err
		}
		end := hn + int(max(h.contentLength, 0))
		if len(b) < end {
			return 0, "", errNeedMore
		}
		var ids []uint64
		_, err = lpBody(b[hn:end], func(b []byte, i int) (int, error) {
			var m msgInfo
			j, err := scanMessageAt(b, i, nil, &m)
			ids = append(ids, m.id)
			return j, err
		})
		return end, fmt.Sprintf("%d %v", h.status, ids), err
	},
}

// feed runs p over input delivered in the given pieces and returns the
// units and the first error other than errNeedMore. left is what was
// still unparsed at the end.
func feed(p unitParser, pieces [][]byte) (units []string, left int, err error) {
	var buf []byte
	for _, piece := range pieces {
		buf = append(buf, piece...)
		for len(buf) > 0 {
			n, u, err := p(buf)
			if errors.Is(err, errNeedMore) {
				break
			}
			if err != nil {
				return units, len(buf), err
			}
			if n <= 0 {
				return units, len(buf), fmt.Errorf("parser consumed %d bytes", n)
			}
			units = append(units, u)
			buf = buf[n:]
		}
	}
	return units, len(buf), nil
}

// checkSplits feeds input whole, then split at every point, then in random
// pieces, and requires the same units and error every time.
func checkSplits(t *testing.T, p unitParser, input []byte) (units []string, err error) {
	t.Helper()
	units, left, err := feed(p, [][]byte{input})
	same := func(how string, u []string, l int, e error) {
		t.Helper()
		// After an error, where it was noticed may differ: a split input
		// can show the fault before the unit is complete.
		if fmt.Sprint(u) != fmt.Sprint(units) || (err == nil && l != left) || fmt.Sprint(e) != fmt.Sprint(err) {
			t.Fatalf("%s:\n got %q left %d err %v\nwant %q left %d err %v", how, u, l, e, units, left, err)
		}
	}
	for i := 0; i <= len(input); i++ {
		u, l, e := feed(p, [][]byte{input[:i], input[i:]})
		same(fmt.Sprintf("split at %d", i), u, l, e)
	}
	rng := rand.New(rand.NewPCG(uint64(len(input)), 7))
	for range 20 {
		var pieces [][]byte
		for rest := input; len(rest) > 0; {
			k := min(len(rest), 1+rng.IntN(7))
			pieces, rest = append(pieces, rest[:k]), rest[k:]
		}
		u, l, e := feed(p, pieces)
		same("random pieces", u, l, e)
	}
	return units, err
}

// Recorded from megacomet (curl -N) and from the RFCs' examples.
var recordings = []struct {
	name, parser, input string
	units               int    // units parsed
	err                 error  // nil: all parsed, no error
	contains            string // a unit must contain this
}{
	{"sse head", "head", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n\r\n", 1, nil, `ct="text/event-stream"`},
	{"stream head", "head", "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n", 1, nil, "chunked=true"},
	{"cursor head", "head", "HTTP/1.1 200 OK\r\nX-Megacomet-Cursor: 1764000000000009\r\n\r\n", 1, nil, "cursor=1764000000000009/true"},
	{"bad cursor head", "head", "HTTP/1.1 200 OK\r\nX-Megacomet-Cursor: 12x\r\n\r\n", 0, errHead, ""},
	{"lf head", "head", "HTTP/1.1 404 Not Found\nConnection: close\nContent-Length: 10\n\n", 1, nil, "404 cl=10 chunked=false close=true"},
	{"http/1.0 head", "head", "HTTP/1.0 200 OK\r\n\r\n", 1, nil, "close=true"},
	{"ws head", "head", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", 1, nil, `acc="s3pPLMBiTxaQ9kYGzzhZRbK+xOo="`},
	{"bad status line", "head", "HTTP/2 200 OK\r\n\r\n", 0, errHead, ""},
	{"header without colon", "head", "HTTP/1.1 200 OK\r\nbroken\r\n\r\n", 0, errHead, ""},
	{"bad content-length", "head", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 0, errHead, ""},

	{"sse opening cursor", "sse", "retry: 2000\nid: 1764000000000000\n\n", 1, nil, `id="1764000000000000"/true data=""/0 retry=2000`},
	{"sse stream", "sse", "retry: 2000\n\nid: 1764000000000001\ndata: {\"id\":1764000000000001,\"data\":{\"any\":\"json\"}}\n\n:\n\nid: 1764000000000002\ndata: {\"id\":1764000000000002,\"channel\":\"news\",\"data\":\"hello\"}\n\nretry: 500\n: reconnect\n\n", 5, nil, "reconnect=true"},
	{"sse crlf and multi-line data", "sse", "data: a\r\ndata: b\r\ndata: c\r\n\r\nevent: x\r\n\r\n", 2, nil, `data="a\nb\nc"/3`},
	{"sse field without colon", "sse", "data\n\n:comment\n\n", 2, nil, `data=""/1`},
	{"sse bare cr", "sse", "data: a\rb\n\n", 0, errFraming, ""},

	{"ndjson chunks", "chunk", "26\r\n{\"id\":1,\"data\":{\"t\":1,\"k\":2,\"r\":\"x\"}}\n\r\n1\r\n\n\r\n0\r\n\r\n", 3, nil, "last=true"},
	{"chunk ext and trailer", "chunk", "5;name=v\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", 2, nil, `"hello" last=false`},
	{"chunk lf only", "chunk", "3\nabc\n0\n\n", 2, nil, `"abc"`},
	{"chunk bad size", "chunk", "zz\r\n", 0, errFraming, ""},
	{"chunk bad end", "chunk", "3\r\nabcX\r\n", 0, errFraming, ""},

	{"ws text and ping", "ws", "\x81\x05hello\x89\x00\x88\x02\x03\xf4", 3, nil, "op=8"},
	{"ws fragmented", "ws", "\x01\x03Hel\x80\x02lo", 1, nil, `op=1 "Hello"`},
	{"ws 16-bit length", "ws", "\x81\x7e\x00\x7e" + strings.Repeat("a", 126), 1, nil, "op=1"},
	{"ws masked from server", "ws", "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 0, errWSMasked, ""},
	{"ws long ping", "ws", "\x89\x7e\x00\x7e" + strings.Repeat("a", 126), 0, errWSFrame, ""},
	{"ws control inside fragments", "ws", "\x01\x03Hel\x89\x00\x80\x02lo", 0, errWSFrag, ""},
	{"ws rsv bit", "ws", "\xc1\x00", 0, errWSFrame, ""},

	{"lp answers", "lp", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]" +
		"HTTP/1.1 200 OK\r\nContent-Length: 58\r\n\r\n[{\"id\":7,\"data\":{\"a\":[1,2]}},{\"id\":8,\"data\":null,\"x\":\"y\"}]", 2, nil, "200 [7 8]"},
	{"lp jsonp", "lp", "HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\nContent-Length: 29\r\n\r\ncb.x([{\"id\":3,\"data\":true}]);", 1, nil, "200 [3]"},
	{"lp jsonp /**/", "lp", "HTTP/1.1 200 OK\r\nContent-Type: application/javascript\r\nContent-Length: 33\r\n\r\n/**/cb.x([{\"id\":3,\"data\":true}]);", 1, nil, "200 [3]"},
	{"lp broken json", "lp", "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n[{\"id\":3,]  ", 0, errJSON, ""},
}

func TestParsersRecorded(t *testing.T) {
	for _, rc := range recordings {
		t.Run(rc.name, func(t *testing.T) {
			units, err := checkSplits(t, parsers[rc.parser], []byte(rc.input))
			if !errors.Is(err, rc.err) {
				t.Fatalf("err = %v, want %v (units %q)", err, rc.err, units)
			}
			if len(units) != rc.units {
				t.Fatalf("%d units, want %d: %q", len(units), rc.units, units)
			}
			if rc.contains != "" && !strings.Contains(strings.Join(units, "\n"), rc.contains) {
				t.Fatalf("no unit contains %q: %q", rc.contains, units)
			}
		})
	}
}

func TestWSFrameRoundTrip(t *testing.T) {
	// A client frame is masked; unmask it and it is the server's form.
	for _, size := range []int{0, 5, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte{'x'}, size)
		op := wsPong
		if size > 125 {
			op = wsText
		}
		f := appendWSFrame(nil, op, payload, 0x37fa213d)
		if f[1]&0x80 == 0 {
			t.Fatal("client frame not masked")
		}
		// strip the mask bit and key, unmask
		h := 2
		switch f[1] & 0x7f {
		case 126:
			h = 4
		case 127:
			h = 10
		}
		key := f[h : h+4]
		plain := append([]byte{f[0], f[1] & 0x7f}, f[2:h]...)
		for i, c := range f[h+4:] {
			plain = append(plain, c^key[i&3])
		}
		n, fin, op, p, err := parseWSFrame(plain)
		if err != nil || n != len(plain) || !fin || op != wsOp(f[0]&0xf) || !bytes.Equal(p, payload) {
			t.Fatalf("size %d: n=%d fin=%v op=%d err=%v", size, n, fin, op, err)
		}
	}
	// RFC 6455 §1.3's example key.
	if got := string(wsAccept([]byte("dGhlIHNhbXBsZSBub25jZQ=="))); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("accept = %s", got)
	}
}

// The fuzz targets: any input, split anywhere, parses the same as whole,
// and never panics.
func fuzzSplit(f *testing.F, parser string) {
	for _, rc := range recordings {
		if rc.parser == parser {
			f.Add([]byte(rc.input), uint16(len(rc.input)/2), uint16(3))
		}
	}
	f.Fuzz(func(t *testing.T, input []byte, at, step uint16) {
		p := parsers[parser]
		whole, wl, werr := feed(p, [][]byte{input})
		i := min(int(at), len(input))
		pieces := [][]byte{input[:i]}
		for rest, k := input[i:], max(int(step%64), 1); len(rest) > 0; {
			k = min(k, len(rest))
			pieces, rest = append(pieces, rest[:k]), rest[k:]
		}
		split, sl, serr := feed(p, pieces)
		if fmt.Sprint(whole) != fmt.Sprint(split) || (werr == nil && wl != sl) || fmt.Sprint(werr) != fmt.Sprint(serr) {
			t.Fatalf("whole: %q %d %v\nsplit: %q %d %v", whole, wl, werr, split, sl, serr)
		}
	})
}

func FuzzSSESplit(f *testing.F)   { fuzzSplit(f, "sse") }
func FuzzChunkSplit(f *testing.F) { fuzzSplit(f, "chunk") }
func FuzzHeadSplit(f *testing.F)  { fuzzSplit(f, "head") }
func FuzzWSSplit(f *testing.F)    { fuzzSplit(f, "ws") }
func FuzzLPSplit(f *testing.F)    { fuzzSplit(f, "lp") }

// The per-message path allocates nothing.
func TestParsersDoNotAllocate(t *testing.T) {
	sse := []byte("id: 17\ndata: {\"id\":17,\"data\":{\"t\":1764000000000000000,\"k\":3,\"r\":\"run1\"}}\n\n")
	chunk := []byte("3b\r\n{\"id\":17,\"data\":{\"t\":1764000000000000000,\"k\":3,\"r\":\"run1\"}}\n\r\n")
	ws := []byte("\x81\x3a{\"id\":17,\"data\":{\"t\":1764000000000000000,\"k\":3,\"r\":\"run1\"}}")
	head := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n")
	run := []byte("run1")
	var scratch []byte
	var ev sseEvent
	var m msgInfo
	var h respHead
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := parseSSE(sse, &ev, &scratch); err != nil {
			t.Fatal(err)
		}
		if err := scanMessage(ev.data, run, &m); err != nil || m.kind != kindPub || m.id != 17 {
			t.Fatal(err, m)
		}
		if _, p, _, err := parseChunk(chunk); err != nil || len(p) != 0x3b {
			t.Fatal(err)
		}
		if _, f, err := parseWSMessage(ws, &scratch); err != nil || f.op != wsText {
			t.Fatal(err)
		}
		if _, err := parseHead(head, &h); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per message", allocs)
	}
}

func BenchmarkParseSSEMessage(b *testing.B) {
	sse := []byte("id: 1764000000000017\ndata: {\"id\":1764000000000017,\"data\":{\"t\":1764000000000000000,\"k\":3,\"r\":\"run1\"}}\n\n")
	run := []byte("run1")
	var scratch []byte
	var ev sseEvent
	var m msgInfo
	b.ReportAllocs()
	b.SetBytes(int64(len(sse)))
	for b.Loop() {
		parseSSE(sse, &ev, &scratch)
		scanMessage(ev.data, run, &m)
	}
}
