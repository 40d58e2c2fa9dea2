package ipc

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestHelloAndCountsRoundTrip(t *testing.T) {
	h := Hello{PID: 123, Slot: 52, Generation: 7, MaxConns: 19936, FDLimit: 20000, Listen: "127.0.0.1:8000"}
	c := Counts{Conns: 1, Accepted: 2, Refused: 3, MessagesOut: 1 << 40, SlowConsumers: 5, Heartbeats: 6, Requests: 7, BadRequests: 8}
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

func TestPresenceOps(t *testing.T) {
	dst, start := Begin(nil, TypePresence)
	dst = AppendOp(dst, OpJoin, "a1")
	dst = AppendOp(dst, OpSub, "news")
	dst = AppendOp(dst, OpLeave, "a1")
	dst = End(dst, start)
	_, p, _, err := Parse(dst)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = EachOp(p, func(op Op, name []byte) { got = append(got, string(rune('0'+op))+string(name)) })
	if err != nil || len(got) != 3 || got[0] != "1a1" || got[1] != "3news" || got[2] != "2a1" {
		t.Errorf("%v %v", got, err)
	}
	if err := EachOp([]byte{byte(OpJoin), 5, 'a'}, func(Op, []byte) {}); !errors.Is(err, ErrFrame) {
		t.Errorf("truncated op: %v", err)
	}
}

func TestParseRejectsCorruptLength(t *testing.T) {
	for _, b := range [][]byte{{0, 0, 0, 0, 1}, {0xff, 0xff, 0xff, 0xff, 1}} {
		if _, _, _, err := Parse(b); !errors.Is(err, ErrFrame) {
			t.Errorf("%v: %v", b, err)
		}
	}
}

func TestEncodersAllocateNothing(t *testing.T) {
	buf := make([]byte, 0, 1024)
	c := Counts{Conns: 19000, MessagesOut: 1 << 33}
	n := testing.AllocsPerRun(1000, func() {
		b := AppendCounts(buf[:0], &c)
		b, start := Begin(b, TypePresence)
		b = AppendOp(b, OpJoin, "someone")
		b = End(b, start)
		_, p, _, _ := Parse(b)
		DecodeCounts(p)
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
	if err := o.Append(func(dst []byte) []byte { return dst }); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("later append: %v", err)
	}
}
