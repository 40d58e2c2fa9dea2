package megatest

import (
	"math/bits"
	"strconv"
)

// A hist is a log-linear latency histogram in microseconds: exact below
// 128 µs, then 64 buckets per power of two (≤ 1.6 % error). Histograms from
// several processes merge by adding counts, which is how the parent gets
// percentiles over every child.
type hist struct {
	counts [histBuckets]uint64
	n      uint64
	max    uint64 // exact, µs
}

const (
	histExact   = 128
	histSub     = 64
	histBuckets = histExact + 57*histSub
)

func histIndex(us uint64) int {
	if us < histExact {
		return int(us)
	}
	s := bits.Len64(us) - 7 // us>>s is in [64, 127]
	return histExact + (s-1)*histSub + int(us>>uint(s)) - histSub
}

// histValue is the middle of bucket i, in µs.
func histValue(i int) uint64 {
	if i < histExact {
		return uint64(i)
	}
	s := uint((i-histExact)/histSub + 1)
	m := uint64((i-histExact)%histSub + histSub)
	return m<<s + (uint64(1)<<s)/2
}

func (h *hist) add(us uint64) {
	h.counts[histIndex(us)]++
	h.n++
	if us > h.max {
		h.max = us
	}
}

func (h *hist) merge(o *hist) {
	if o == nil || o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q ≤ 1) in µs; 0 when empty. The
// top of the range is the exact maximum.
func (h *hist) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(histValue(i), h.max)
		}
	}
	return h.max
}

// sparse is a histogram on the wire: [max, n, idx, count, idx, count, ...].
type sparse []uint64

func (h *hist) sparse() sparse {
	if h.n == 0 {
		return nil
	}
	s := sparse{h.max, h.n}
	for i, c := range h.counts {
		if c != 0 {
			s = append(s, uint64(i), c)
		}
	}
	return s
}

// fromSparse resets h to s; a malformed s leaves h empty.
func (h *hist) fromSparse(s sparse) {
	*h = hist{}
	if len(s) < 2 || len(s)%2 != 0 {
		return
	}
	h.max, h.n = s[0], s[1]
	for j := 2; j < len(s); j += 2 {
		if s[j] < histBuckets {
			h.counts[s[j]] = s[j+1]
		}
	}
}

// sub sets h to a minus b (a is a later cumulative copy of b).
func (h *hist) sub(a, b *hist) {
	*h = hist{}
	for i := range a.counts {
		if a.counts[i] > b.counts[i] {
			h.counts[i] = a.counts[i] - b.counts[i]
			h.n += h.counts[i]
			h.max = max(h.max, histValue(i))
		}
	}
	h.max = min(h.max, a.max)
}

// ms formats µs as milliseconds for the progress line.
func fmtMs(us uint64) string {
	return strconv.FormatFloat(float64(us)/1000, 'f', msPrecision(us), 64) + "ms"
}

func msPrecision(us uint64) int {
	switch {
	case us < 10_000:
		return 2
	case us < 100_000:
		return 1
	}
	return 0
}

func usToMs(us uint64) float64 { return float64(us) / 1000 }
