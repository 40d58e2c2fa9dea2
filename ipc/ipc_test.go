package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
)

func TestHelloAndCountsRoundTrip(t *testing.T) {
	h := Hello{PID: 123, Slot: 52, Generation: 7, MaxConns: 19936, FDLimit: 20000, Listen: "127.0.0.1:8000"}
	c := Counts{Conns: 1, Accepted: 2, Refused: 3, MessagesOut: 1 << 40, SlowConsumers: 5, Heartbeats: 6, Requests: 7, BadRequests: 8,
		HeapBytes: 9, GoBytes: 10, SilentClosed: 11, LoopLagMs: 12}
	b := AppendCounts(AppendHello(nil, &h), &c)

	typ, p, n, err := Parse(b)
	if err != nil || typ != TypeHello {
		t.Fatalf("first frame: %v %v", typ, err)
	}
	if got, err := DecodeHello(p); err != nil || got != h {
		t.Errorf("hello: %+v %v", got, err)
	}
	typ, p, _, err = Parse(b[n:])
	if err != nil || typ != TypeCounts {
		t.Fatalf("second frame: %v %v", typ, err)
	}
	if got, err := DecodeCounts(p); err != nil || got != c {
		t.Errorf("counts: %+v %v", got, err)
	}
}

// An older worker sends fewer counters; the rest decode as zero.
func TestCountsFromOlderWorker(t *testing.T) {
	p := AppendUvarint(AppendUvarint(nil, 10), 20)
	c, err := DecodeCounts(p)
	if err != nil || c.Conns != 10 || c.Accepted != 20 || c.MessagesOut != 0 {
		t.Errorf("%+v %v", c, err)
	}
}

func TestPresenceRecords(t *testing.T) {
	dst, start := Begin(nil, TypePresence)
	dst = AppendJoin(dst, 7, 99, []byte("a1"), [][]byte{[]byte("news"), []byte("sport")})
	dst = AppendName(dst, OpUnsub, []byte("news"))
	dst = AppendName(dst, OpLeave, []byte("a1"))
	dst = End(dst, start)
	_, p, _, err := Parse(dst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := presenceAll(p)
	want := []string{"join 7 99 a1 news sport", "3 news", "2 a1"}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	if _, err := presenceAll([]byte{byte(OpLeave), 5, 'a'}); !errors.Is(err, ErrFrame) {
		t.Errorf("truncated record: %v", err)
	}
	if _, err := presenceAll([]byte{99}); !errors.Is(err, ErrFrame) {
		t.Errorf("unknown record: %v", err)
	}
}

func TestDeliverRecords(t *testing.T) {
	var b []byte
	b = AppendMsgHead(b, 10, KindIDs, "")
	b = AppendUvarint(b, 2)
	b = AppendString(AppendString(b, "a1"), "b2")
	b = AppendBytes(b, []byte(`{"id":10,"data":1}`))
	b = AppendReplayHead(b, 42, ReplayMore, 3, 2)
	b = AppendBytes(AppendUvarint(b, 3), []byte("three"))
	b = AppendBytes(AppendUvarint(b, 4), []byte("four"))
	b = AppendBytes(AppendMsgHead(b, 11, KindChannel, "news"), []byte("chan"))
	b = AppendBytes(AppendMsgHead(b, 12, KindBroadcast, ""), []byte("all"))
	b = AppendReplayHead(b, 43, 0, 0, 0)
	b = AppendBytes(AppendUvarint(AppendReplayHead(b, 44, ReplayPartial, 0, 1), 5), []byte("five"))
	b = AppendReplayHead(b, 45, ReplayDeferred, 0, 0)
	got, err := deliverAll(b)
	want := []string{`msg 10 k0  {"id":10,"data":1} ->a1 ->b2`, "replay 42 more gap 3: 3=three 4=four", "msg 11 k1 news chan", "msg 12 k2  all", "replay 43:",
		"replay 44 partial: 5=five", "replay 45 deferred:"}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, %v\nwant %q", got, err, want)
	}
	// Every truncation decodes to an error or a shorter valid payload.
	for cut := 1; cut < len(b); cut++ {
		if _, err := deliverAll(b[:cut]); err != nil && !errors.Is(err, ErrFrame) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
}

func TestParseRejectsCorruptLength(t *testing.T) {
	for _, b := range [][]byte{{0, 0, 0, 0, 1}, {0xff, 0xff, 0xff, 0xff, 1}} {
		if _, _, _, err := Parse(b); !errors.Is(err, ErrFrame) {
			t.Errorf("%v: %v", b, err)
		}
	}
}

var deliverSample = AppendBytes(AppendString(AppendUvarint(AppendMsgHead(nil, 1, KindIDs, ""), 1), "a"), []byte("{}"))

func TestEncodersAllocateNothing(t *testing.T) {
	buf := make([]byte, 0, 1024)
	c := Counts{Conns: 19000, MessagesOut: 1 << 33}
	n := testing.AllocsPerRun(1000, func() {
		b := AppendCounts(buf[:0], &c)
		b, start := Begin(b, TypePresence)
		b = AppendJoin[string](b, 1, 2, []byte("someone"), nil)
		b = End(b, start)
		_, p, _, _ := Parse(b)
		DecodeCounts(p)
		pr := NewPresenceReader(b[start+HeaderLen:])
		for pr.Next() != 0 {
		}
		d := NewDeliverReader(deliverSample)
		for d.Next() != 0 {
			for _, ok := d.Msg.NextID(); ok; _, ok = d.Msg.NextID() {
			}
		}
	})
	if n != 0 {
		t.Errorf("%.1f allocations", n)
	}
}

// FuzzParseSplit feeds a stream of frames to Parse in two pieces split
// anywhere, as reads deliver them, and checks the frames come out the same.
func FuzzParseSplit(f *testing.F) {
	stream := AppendCounts(AppendHello(nil, &Hello{PID: 1, Listen: "x"}), &Counts{Conns: 3})
	stream = AppendFrame(stream, TypeDeliver, bytes.Repeat([]byte("m"), 300))
	f.Add(stream, 3)
	f.Add(stream, 17)
	f.Add([]byte{1, 0, 0, 0, 1, 2, 0, 0, 0, 65, 9}, 6)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if split < 0 || split > len(data) {
			return
		}
		want := parseAll(data)
		var got [][]byte
		var buf []byte
		for _, piece := range [][]byte{data[:split], data[split:]} {
			buf = append(buf, piece...)
			for {
				typ, p, n, err := Parse(buf)
				if err != nil {
					break
				}
				got = append(got, append([]byte{byte(typ)}, p...))
				buf = buf[n:]
			}
		}
		if len(got) != len(want) {
			t.Fatalf("split at %d: %d frames, whole: %d", split, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
	})
}

func parseAll(b []byte) [][]byte {
	var out [][]byte
	for {
		typ, p, n, err := Parse(b)
		if err != nil {
			return out
		}
		out = append(out, append([]byte{byte(typ)}, p...))
		b = b[n:]
	}
}

func TestOutboxWritesEverythingInOrder(t *testing.T) {
	o := NewOutbox(1 << 20)
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- o.Run(w); w.Close() }()
	var want []byte
	go func() {
		for i := 0; i < 1000; i++ {
			o.Append(func(dst []byte) []byte { return AppendCounts(dst, &Counts{Conns: uint64(i)}) })
		}
		o.Close()
	}()
	for i := 0; i < 1000; i++ {
		want = AppendCounts(want, &Counts{Conns: uint64(i)})
	}
	got, _ := io.ReadAll(r)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

func TestOutboxFailsWhenPeerStopsReading(t *testing.T) {
	o := NewOutbox(100)
	err := o.Append(func(dst []byte) []byte { return append(dst, make([]byte, 101)...) })
	if !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("err = %v", err)
	}
	// Said once: the caller acts once (the manager kills the worker once,
	// and counts it once).
	if err := o.Append(func(dst []byte) []byte { return dst }); err == nil || errors.Is(err, ErrOutboxFull) {
		t.Fatalf("later append: %v, want an error other than ErrOutboxFull", err)
	}
}

// Len counts what is being written as well as what waits, and Written
// moves as the peer reads a large batch, a chunk at a time.
func TestOutboxLenAndProgress(t *testing.T) {
	o := NewOutbox(64 << 20)
	r, w := io.Pipe()
	go o.Run(w)
	o.Append(func(dst []byte) []byte { return append(dst, make([]byte, 3*writeChunk)...) })
	buf := make([]byte, writeChunk)
	io.ReadFull(r, buf) // the first chunk; Run is writing the second
	for o.Written() != writeChunk {
		runtime.Gosched()
	}
	if n := o.Len(); n != 2*writeChunk {
		t.Errorf("Len %d with two chunks unwritten, want %d", n, 2*writeChunk)
	}
	io.ReadFull(r, buf)
	io.ReadFull(r, buf)
	for o.Written() != 3*writeChunk {
		runtime.Gosched()
	}
	if n := o.Len(); n != 0 {
		t.Errorf("Len %d with everything written", n)
	}
	o.Close()
}

func deliverAll(p []byte) ([]string, error) {
	var got []string
	d := NewDeliverReader(p)
	for {
		switch d.Next() {
		case RecMsg:
			m := &d.Msg
			s := fmt.Sprintf("msg %d k%d %s %s", m.ID, m.Kind, m.Channel, m.Body)
			for id, ok := m.NextID(); ok; id, ok = m.NextID() {
				s += " ->" + string(id)
			}
			got = append(got, s)
		case RecReplay:
			rp := &d.Replay
			s := fmt.Sprintf("replay %d", rp.Token)
			if rp.More {
				s += " more"
			}
			if rp.Partial {
				s += " partial"
			}
			if rp.Deferred {
				s += " deferred"
			}
			if rp.Gap != 0 {
				s += fmt.Sprintf(" gap %d", rp.Gap)
			}
			s += ":"
			for i := 0; i < rp.N; i++ {
				id, body := rp.Next()
				s += fmt.Sprintf(" %d=%s", id, body)
			}
			got = append(got, s)
		default:
			return got, d.Err()
		}
	}
}

func presenceAll(p []byte) ([]string, error) {
	var got []string
	pr := NewPresenceReader(p)
	for {
		switch op := pr.Next(); op {
		case OpJoin:
			j := &pr.Join
			s := fmt.Sprintf("join %d %d %s", j.Token, j.Since, j.ID)
			for ch, ok := j.NextChannel(); ok; ch, ok = j.NextChannel() {
				s += " " + string(ch)
			}
			got = append(got, s)
		case 0:
			return got, pr.Err()
		default:
			got = append(got, fmt.Sprintf("%d %s", op, pr.Name))
		}
	}
}

// FuzzDecoders: no payload makes a decoder panic or loop.
func FuzzDecoders(f *testing.F) {
	f.Add(AppendBytes(AppendMsgHead(nil, 1, KindChannel, "c"), []byte("x")))
	f.Add(AppendJoin(nil, 1, 2, []byte("id"), [][]byte{[]byte("c")}))
	f.Fuzz(func(t *testing.T, p []byte) {
		deliverAll(p)
		presenceAll(p)
		DecodeCounts(p)
		DecodeHello(p)
	})
}
