package manager

import (
	"encoding/binary"
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
