package manager

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

func testHub() *hub {
	return newHub(100, time.Minute, func(*proc, func([]byte) []byte) {})
}

func TestIdempotencyKey(t *testing.T) {
	h := testHub()
	now := time.Unix(1800000000, 0)
	h.now = func() time.Time { return now }
	items := []pubItem{{to: []string{"a"}, data: []byte("1")}, {broadcast: true, data: []byte("2")}}
	first, replayed, err := h.publish(items, "k1", 7)
	if err != nil || replayed || len(first) != 2 {
		t.Fatalf("first: %v %v %v", first, replayed, err)
	}
	again, replayed, err := h.publish(items, "k1", 7)
	if err != nil || !replayed || again[0] != first[0] || again[1] != first[1] {
		t.Fatalf("repeat: %v %v %v, want %v replayed", again, replayed, err, first)
	}
	if h.published != 2 {
		t.Errorf("published %d, want 2: a repeat publishes nothing", h.published)
	}
	if _, _, err := h.publish(items, "k1", 8); err != errIdemMismatch {
		t.Errorf("same key, other body: %v", err)
	}
	if ids, replayed, _ := h.publish(items, "", 7); replayed || ids[0] == first[0] {
		t.Errorf("no key: %v replayed %v", ids, replayed)
	}
	now = now.Add(2 * time.Minute) // past the TTL
	if ids, replayed, _ := h.publish(items, "k1", 7); replayed || ids[0] == first[0] {
		t.Errorf("expired key: %v replayed %v", ids, replayed)
	}
}

// Ids keep increasing across a hand-over, and keys and history come along.
func TestHubStateRoundTrip(t *testing.T) {
	h := testHub()
	ids, _, _ := h.publish([]pubItem{{to: []string{"a"}, data: []byte(`"x"`)}, {channel: "c", data: []byte(`"y"`)}}, "key", 1)
	st, _ := h.snapshot(nil)

	next := testHub()
	next.now = func() time.Time { return time.Unix(0, 0) } // a clock far behind
	next.restore(&st)
	if got, _ := next.hist.replay("a", []string{"c"}, 0); len(got) != 2 || got[0].id != ids[0] || string(got[1].body) != string(renderMessage(ids[1], "c", []byte(`"y"`))) {
		t.Errorf("history after restore: %v", got)
	}
	again, replayed, _ := next.publish(nil, "key", 1)
	if !replayed || again[0] != ids[0] {
		t.Errorf("key after restore: %v %v", again, replayed)
	}
	fresh, _, _ := next.publish([]pubItem{{broadcast: true, data: []byte("1")}}, "", 0)
	if fresh[0] <= ids[1] {
		t.Errorf("id %d after restore is not above %d", fresh[0], ids[1])
	}
}

// History is bounded in bytes as a whole: past comet.history_max_bytes the
// oldest messages go first, whichever ring holds them, and are counted;
// what is left replays in order.
func TestHistoryMaxBytes(t *testing.T) {
	h := testHub()
	h.hist.maxBytes = 10 << 10
	data := []byte(`"` + strings.Repeat("x", 1000) + `"`)
	var ids []uint64
	for i := range 30 {
		it := pubItem{to: []string{"a"}, data: data}
		switch i % 3 {
		case 1:
			it = pubItem{channel: "c", data: data}
		case 2:
			it = pubItem{broadcast: true, data: data}
		}
		got, _, _ := h.publish([]pubItem{it}, "", 0)
		ids = append(ids, got...)
	}
	c := h.counters()
	if c.HistoryBytes > 10<<10 || c.HistoryEvicted < 19 || c.Retained+c.HistoryEvicted != 30 {
		t.Errorf("history holds %d bytes in %d messages, %d evicted; want at most 10 KiB, the rest evicted", c.HistoryBytes, c.Retained, c.HistoryEvicted)
	}
	got, _ := h.hist.replay("a", []string{"c"}, 0)
	if len(got) != int(c.Retained) || got[len(got)-1].id != ids[29] || got[0].id != ids[30-len(got)] {
		t.Errorf("replay after eviction: %d messages, want the newest %d", len(got), c.Retained)
	}
	// Expiry gives the bytes back too.
	h.hist.expire(time.Now().Add(time.Hour))
	if c := h.counters(); c.HistoryBytes != 0 || c.Retained != 0 {
		t.Errorf("after expiry: %d bytes in %d messages", c.HistoryBytes, c.Retained)
	}
}

// A batch over api.max_batch is refused whole, naming the limit.
func TestMaxBatch(t *testing.T) {
	body := "[" + strings.Repeat(`{"broadcast":true,"data":1},`, 10) + `{"broadcast":true,"data":1}]`
	_, _, err := parsePublish([]byte(body), 10)
	if ae, ok := err.(*apiError); !ok || ae.status != 413 || ae.msg != "batch of 11 messages; api.max_batch is 10" {
		t.Errorf("11 messages with max_batch 10: %v", err)
	}
	if items, _, err := parsePublish([]byte(body), 11); err != nil || len(items) != 11 {
		t.Errorf("11 messages with max_batch 11: %d, %v", len(items), err)
	}
}

// FuzzParsePublish: whatever the body, parsePublish answers with valid
// items or one 4xx error, never a panic; every item it accepts names
// exactly one kind of target, with valid ids, and valid JSON data within
// the limits; a batch is within api.max_batch.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{
		`{"to":"a","data":1}`, `{"to":["a","b"],"data":{"x":[1,2]}}`, `{"channel":"news","data":"s"}`,
		`{"broadcast":true,"data":null}`, `[{"to":"a","data":1},{"broadcast":true,"data":2}]`,
		`{"to":"a","channel":"c","data":1}`, `{"to":"bad id","data":1}`, `[]`, `[`, `{"data":1,"x":2}`,
		`{"to":"a","data":1}{"to":"b","data":2}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		items, batch, err := parsePublish(body, 8)
		if err != nil {
			if ae, ok := err.(*apiError); !ok || ae.status < 400 || ae.status > 499 || strings.Contains(ae.msg, "\n") {
				t.Fatalf("error %v: want one line with a 4xx status", err)
			}
			return
		}
		if len(items) == 0 || len(items) > 8 || (!batch && len(items) != 1) {
			t.Fatalf("%d items (batch %v)", len(items), batch)
		}
		for _, it := range items {
			kinds := 0
			if len(it.to) > 0 {
				kinds++
				for _, id := range it.to {
					if !ipc.ValidName(id) {
						t.Fatalf("accepted id %q", id)
					}
				}
			}
			if it.channel != "" {
				kinds++
				if !ipc.ValidName(it.channel) {
					t.Fatalf("accepted channel %q", it.channel)
				}
			}
			if it.broadcast {
				kinds++
			}
			if kinds != 1 || !json.Valid(it.data) || len(it.data) > maxMessageData {
				t.Fatalf("accepted item %+v", it)
			}
		}
	})
}

// Once the hand-over snapshot is taken nothing more is published here: a
// publish that comes after it is told to retry (at the new manager), so no
// message is lost after the snapshot or its id issued twice.
func TestNoPublishAfterTheSnapshot(t *testing.T) {
	h := testHub()
	if _, _, err := h.publish([]pubItem{{broadcast: true, data: []byte("1")}}, "", 0); err != nil {
		t.Fatal(err)
	}
	st, _ := h.snapshot(nil)
	if _, _, err := h.publish([]pubItem{{broadcast: true, data: []byte("2")}}, "", 0); err != errHandingOver {
		t.Errorf("publish after the snapshot: %v, want errHandingOver", err)
	}
	if len(st.Messages) != 1 || h.published != 1 {
		t.Errorf("snapshot holds %d messages, %d published", len(st.Messages), h.published)
	}
}

// Presence announcements have a ring of their own per channel: a flood of
// them neither pushes a channel's published messages out (by count or by
// comet.history_max_bytes) nor makes a replay announce a gap, and a
// replay still carries the newest of them in order with the rest. They
// survive a hand-over as presence.
func TestPresenceApartFromHistory(t *testing.T) {
	h := testHub() // history_size 100
	h.hist.maxBytes = 64 << 10
	real, _, _ := h.publish([]pubItem{{channel: "room", data: []byte(`"hello"`)}}, "", 0)
	flood := make([]pubItem, 1000)
	for i := range flood {
		flood[i] = pubItem{channel: "room", presence: true, data: []byte(`{"presence":{"join":"` + strings.Repeat("x", 200) + `"}}`)}
	}
	ids, _, _ := h.publish(flood, "", 0)
	got, lost := h.hist.replay("me", []string{"room"}, real[0]-1)
	if lost || len(got) != 1+presenceRing || got[0].id != real[0] || got[len(got)-1].id != ids[len(ids)-1] {
		t.Fatalf("replay after a presence flood: %d messages (lost %v), want the published one and the newest %d announcements", len(got), lost, presenceRing)
	}
	if c := h.counters(); c.HistoryEvicted != 0 || c.HistoryBytes != uint64(len(renderMessage(real[0], "room", []byte(`"hello"`)))) {
		t.Errorf("evicted %d, history bytes %d: presence counted against history", c.HistoryEvicted, c.HistoryBytes)
	}
	st, _ := h.snapshot(nil)
	next := testHub()
	next.restore(&st)
	if got, lost := next.hist.replay("me", []string{"room"}, real[0]-1); lost || len(got) != 1+presenceRing || !got[1].presence {
		t.Errorf("after a hand-over: %d messages (lost %v)", len(got), lost)
	}
	// Without them, the flood would have pushed "hello" out of its ring.
	for i := range flood {
		flood[i].presence = false
	}
	if _, _, err := next.publish(flood, "", 0); err != nil {
		t.Fatal(err)
	}
	if got, lost := next.hist.replay("me", []string{"room"}, real[0]-1); !lost || got[0].id == real[0] {
		t.Errorf("published messages did not push each other out: the test shows nothing")
	}
}
