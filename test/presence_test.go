package test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// Who is online (issue 16): GET /presence, and join and leave messages on
// the channels comet.presence_events names.

type presenceAnswer struct {
	Online      bool     `json:"online"`
	Connections uint64   `json:"connections"`
	Subscribers uint64   `json:"subscribers"`
	Members     int      `json:"members"`
	IDs         []string `json:"ids"`
}

func presenceOf(t *testing.T, s *testutil.Server, path string) presenceAnswer {
	t.Helper()
	code, body, _ := get(t, "http://"+s.API+path)
	var a presenceAnswer
	if code != 200 || json.Unmarshal([]byte(body), &a) != nil {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	return a
}

// /presence counts what megatest holds, and follows it as clients leave.
func TestPresenceCountsMegatest(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	const n = 300
	load := runMegatest(t, s, "p", "-n", fmt.Sprint(n), "-channels", "3")
	waitHeld(t, s, n, 3*time.Minute)
	if a := presenceOf(t, s, "/presence/p5"); !a.Online || a.Connections != 1 {
		t.Errorf("/presence/p5 while held: %+v", a)
	}
	if a := presenceOf(t, s, "/presence/nobody"); a.Online || a.Connections != 0 {
		t.Errorf("/presence/nobody: %+v", a)
	}
	for c := range 3 {
		if a := presenceOf(t, s, fmt.Sprintf("/presence?channel=p-c%d", c)); a.Subscribers != n/3 {
			t.Errorf("channel p-c%d: %d subscribers, megatest holds %d", c, a.Subscribers, n/3)
		}
	}
	// A second connection of one id counts.
	c := openStream(t, s.Listen, "/sse/p5?channels=p-c0")
	testutil.CheckFor(t, 30*time.Second, func() error {
		if a := presenceOf(t, s, "/presence/p5"); a.Connections != 2 {
			return fmt.Errorf("p5 has %d connections, want 2", a.Connections)
		}
		return nil
	})
	c.close()
	load.stop(t, 2*time.Minute)
	testutil.CheckFor(t, time.Minute, func() error {
		if a, b := presenceOf(t, s, "/presence/p5"), presenceOf(t, s, "/presence?channel=p-c0"); a.Online || b.Subscribers != 0 {
			return fmt.Errorf("after megatest stopped: p5 %+v, p-c0 %+v", a, b)
		}
		return nil
	})
	if code, body, _ := get(t, "http://"+s.API+"/presence?channel=p-c0&ids=1"); code != 400 || !strings.Contains(body, "comet.presence_events") {
		t.Errorf("ids of a channel whose members are not kept: %d %s", code, body)
	}
}

// presenceEvent is a presence message's data.
type presenceEvent struct {
	Presence struct {
		Join  json.RawMessage `json:"join"`
		Leave json.RawMessage `json:"leave"`
	} `json:"presence"`
}

// names reads "ID" or ["ID",…].
func names(raw json.RawMessage) []string {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}
	}
	var many []string
	json.Unmarshal(raw, &many)
	return many
}

// Joins and leaves reach the channel's subscribers in id order with its
// messages; a storm of joins comes coalesced, every name once.
func TestPresenceEvents(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": `presence_events = ["room*"]`})
	watcher := openStream(t, s.Listen, "/sse/watcher?channels=room1")
	waitIDs(t, s, 1)
	// The watcher's own join comes first.
	m := next(t, watcher, 30*time.Second)
	var ev presenceEvent
	if json.Unmarshal(m.Data, &ev) != nil || !slices.Equal(names(ev.Presence.Join), []string{"watcher"}) {
		t.Fatalf("first message: %s, want the watcher's own join", m.Data)
	}
	bob := openStream(t, s.Listen, "/sse/bob?channels=room1")
	m = next(t, watcher, 30*time.Second)
	if json.Unmarshal(m.Data, &ev) != nil || string(ev.Presence.Join) != `"bob"` || m.Channel != "room1" {
		t.Fatalf("after bob joined: %+v %s", m, m.Data)
	}
	joinID := m.ID
	if a := presenceOf(t, s, "/presence?channel=room1&ids=1"); a.Members != 2 || !slices.Equal(a.IDs, []string{"bob", "watcher"}) || a.Subscribers != 2 {
		t.Errorf("room1 with bob and the watcher: %+v", a)
	}
	hello := publish(t, s.API, `{"channel":"room1","data":"hello"}`)[0]
	bob.close()
	if m = next(t, watcher, 30*time.Second); m.ID != hello || m.ID <= joinID {
		t.Fatalf("got %+v, want the message %d after the join %d", m, hello, joinID)
	}
	m = next(t, watcher, 30*time.Second)
	if json.Unmarshal(m.Data, &ev) != nil || string(ev.Presence.Leave) != `"bob"` || m.ID <= hello {
		t.Fatalf("after bob left: %+v %s", m, m.Data)
	}

	// 50 clients join at once: a few messages name them all, once each.
	const n = 50
	for i := range n {
		openStream(t, s.Listen, fmt.Sprintf("/sse/g%d?channels=room1", i))
	}
	seen := map[string]int{}
	messages := 0
	for len(seen) < n {
		m = next(t, watcher, 30*time.Second)
		messages++
		json.Unmarshal(m.Data, &ev)
		for _, id := range names(ev.Presence.Join) {
			seen[id]++
		}
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s announced %d times", id, k)
		}
	}
	if messages > n/2 {
		t.Errorf("%d joins took %d messages: not coalesced", n, messages)
	}
	t.Logf("%d joins announced in %d messages", n, messages)
}
