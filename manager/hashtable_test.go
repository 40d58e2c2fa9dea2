package manager

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// FuzzHashTable drives the table and a Go map alike and checks they agree.
func FuzzHashTable(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 2, 3, 0, 0, 1, 7})
	f.Add([]byte("set set del set get del del"))
	f.Fuzz(func(t *testing.T, ops []byte) {
		var tab hashTable
		model := map[uint64]holder{}
		for i := 0; i+1 < len(ops); i += 2 {
			h := uint64(ops[i+1]%9) * 0x9e3779b97f4a7c15 // hashes 0 and 1 included
			if ops[i+1]%9 == 1 {
				h = 1
			}
			switch ops[i] % 3 {
			case 0, 1:
				v := holder{link: linkID(i), count: uint32(ops[i])}
				tab.set(h, v)
				model[h] = v
			case 2:
				tab.del(h)
				delete(model, h)
			}
			if tab.len() != len(model) {
				t.Fatalf("%d entries, want %d", tab.len(), len(model))
			}
		}
		for h, want := range model {
			if got, ok := tab.get(h); !ok || got != want {
				t.Fatalf("get(%x) = %v %v, want %v", h, got, ok, want)
			}
		}
		seen := 0
		tab.each(func(h uint64, v holder) { seen++ })
		if seen != len(model) {
			t.Fatalf("each saw %d of %d", seen, len(model))
		}
	})
}

func TestHashTableSizesToItsContents(t *testing.T) {
	var tab hashTable
	key := func(i int) uint64 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		return (&presence{seed: 1}).hash(b[:])
	}
	const n = 200000
	for i := 0; i < n; i++ {
		tab.set(key(i), holder{link: 1, count: 1})
	}
	if tab.len() != n || len(tab.keys) > n*2 || tab.used*5 > len(tab.keys)*4 {
		t.Fatalf("%d entries in %d slots", tab.len(), len(tab.keys))
	}
	for i := 0; i < n-100; i++ {
		tab.del(key(i))
	}
	if tab.len() != 100 || len(tab.keys) > 1024 {
		t.Errorf("after deleting all but 100: %d entries in %d slots", tab.len(), len(tab.keys))
	}
	for i := n - 100; i < n; i++ {
		if _, ok := tab.get(key(i)); !ok {
			t.Fatalf("lost %d", i)
		}
	}
}

// Names that differ only in their last characters (user-0000001 …) spread
// over the slots: a successful lookup probes about 3 slots on average at
// the table's fullest (linear probing at 4/5), at 1,000 names as at
// 100,000. Without mixing the hash's high bits they crowded into runs.
func TestHashTableSpreadsSequentialNames(t *testing.T) {
	for _, n := range []int{1000, 100000} {
		for _, seed := range []uint64{0, 42} {
			p := newPresence(seed)
			var hs []uint64
			for i := range n {
				h := p.hashString(fmt.Sprintf("user-%07d", i))
				hs = append(hs, h)
				p.one.set(h, holder{1, 1})
			}
			probes := 0
			for _, h := range hs {
				i, want := p.one.slot(stored(h)), p.one.find(h)
				for ; i != want; i = (i + 1) % len(p.one.keys) {
					probes++
				}
				probes++
			}
			if mean := float64(probes) / float64(n); mean > 4 {
				t.Errorf("%d names, seed %d: %.1f probes a lookup on average, want at most 4", n, seed, mean)
			}
		}
	}
}
