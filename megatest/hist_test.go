package megatest

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestHistQuantiles(t *testing.T) {
	var h hist
	rng := rand.New(rand.NewPCG(1, 2))
	var vals []uint64
	for range 100000 {
		v := uint64(rng.ExpFloat64() * 5000) // µs, mean 5 ms
		vals = append(vals, v)
		h.add(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)))-1]
		got := h.quantile(q)
		if diff := float64(got) - float64(exact); diff > 0.02*float64(exact)+1 || -diff > 0.02*float64(exact)+1 {
			t.Errorf("q%v = %d, exact %d", q, got, exact)
		}
	}
	if h.quantile(1) != vals[len(vals)-1] || h.max != vals[len(vals)-1] {
		t.Errorf("max %d, want %d", h.max, vals[len(vals)-1])
	}
}

func TestHistIndexCoversRange(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1 << 20, 1<<40 + 12345, 1<<63 - 1, 1<<64 - 1} {
		i := histIndex(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("index(%d) = %d", v, i)
		}
		prev = i
		if mid := histValue(i); v >= 128 && (float64(mid) < float64(v)*0.98 || float64(mid) > float64(v)*1.02) {
			t.Errorf("value(index(%d)) = %d", v, mid)
		}
	}
}

func TestHistSparseMergeSub(t *testing.T) {
	var a, b, m hist
	for i := range uint64(1000) {
		a.add(i * 10)
		b.add(i * 1000)
	}
	var back hist
	back.fromSparse(a.sparse())
	if back != a {
		t.Fatal("sparse round trip differs")
	}
	m.merge(&a)
	m.merge(&b)
	if m.n != 2000 || m.max != b.max {
		t.Fatalf("merged n=%d max=%d", m.n, m.max)
	}
	var d hist
	d.sub(&m, &a)
	if d.n != b.n || d.quantile(0.5) != b.quantile(0.5) {
		t.Fatalf("m-a: n=%d p50=%d; b: n=%d p50=%d", d.n, d.quantile(0.5), b.n, b.quantile(0.5))
	}
	var empty hist
	if empty.quantile(0.5) != 0 || empty.sparse() != nil {
		t.Fatal("empty histogram")
	}
}

func TestLedgerEitherOrder(t *testing.T) {
	l := newLedger()
	l.acked(1, 10)     // answer first
	l.delivered(2, 20) // delivery first
	l.acked(2, 20)
	l.delivered(1, 10)
	l.acked(3, 30) // never delivered: lost
	l.delivered(4, 40)
	pending, early, matched := l.counts()
	if pending != 1 || early != 1 || matched != 2 {
		t.Fatalf("pending %d early %d matched %d; want 1 1 2", pending, early, matched)
	}
}
