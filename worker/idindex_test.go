package worker

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzIDIndex drives the index and a Go map with the same operations and
// checks they agree.
func FuzzIDIndex(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0, 1, 1, 3, 2, 2})
	f.Add([]byte("putputputdeldeldelput"))
	f.Fuzz(func(t *testing.T, ops []byte) {
		var x idIndex
		model := map[string]*conn{}
		for i, op := range ops {
			id := strconv.Itoa(int(op) % 37)
			switch op % 3 {
			case 0, 1:
				c := &conn{id: id}
				x.put(c)
				model[id] = c
			case 2:
				x.del(id)
				delete(model, id)
			}
			if x.len() != len(model) {
				t.Fatalf("op %d: %d entries, want %d", i, x.len(), len(model))
			}
		}
		for n := 0; n < 37; n++ {
			id := strconv.Itoa(n)
			if got, want := x.get([]byte(id)), model[id]; got != want {
				t.Fatalf("get(%s) = %p, want %p", id, got, want)
			}
		}
	})
}

func TestIDIndexGrowsAndShrinks(t *testing.T) {
	var x idIndex
	conns := make([]*conn, 100000)
	for i := range conns {
		conns[i] = &conn{id: "c" + strconv.Itoa(i)}
		x.put(conns[i])
	}
	if x.len() != len(conns) || len(x.slots) > 8*len(conns)/3 || x.used*4 > len(x.slots)*3 {
		t.Fatalf("%d entries in %d slots (%d used)", x.len(), len(x.slots), x.used)
	}
	for i, c := range conns {
		if x.get([]byte(c.id)) != c {
			t.Fatalf("lost %d", i)
		}
	}
	for _, c := range conns[10:] {
		x.del(c.id)
	}
	if x.len() != 10 || len(x.slots) > 1024 {
		t.Errorf("after deleting all but 10: %d entries in %d slots", x.len(), len(x.slots))
	}
	for _, c := range conns[:10] {
		if x.get([]byte(c.id)) != c {
			t.Fatalf("lost %s after shrinking", c.id)
		}
	}
	long := &conn{id: strings.Repeat("x", 64)}
	x.put(long)
	key := []byte(long.id)
	if n := testing.AllocsPerRun(1000, func() { x.get(key); x.getString(long.id) }); n != 0 {
		t.Errorf("lookups allocate %.1f", n)
	}
}

// BenchmarkKickLookup: a worker finds an id's connections for a
// disconnect in the same time among 1,000 and 1,000,000 held.
func BenchmarkKickLookup(b *testing.B) {
	for _, n := range []int{1000, 1000000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			var x idIndex
			for i := range n {
				x.put(&conn{id: fmt.Sprintf("user-%07d", i)})
			}
			b.ResetTimer()
			for range b.N {
				if x.getString("user-0000500") == nil {
					b.Fatal("not found")
				}
			}
		})
	}
}
