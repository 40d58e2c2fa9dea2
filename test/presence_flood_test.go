package test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/internal/testutil"
)

// The review's presence flood: with presence_events = ["room*"] and auth
// off, anonymous clients that join and leave many rooms as fast as they
// can (920 of them in 10 s made 28,736 presence messages) pushed a room's
// published history out, and its members got gap notices. Now presence
// messages have a ring of their own and a busy room speaks at most once per
// 2 s: the room's history is whole, its member sees no gap, and what it
// hears of the flood is a handful of messages, not one per 100 ms.
func TestPresenceFlood(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1",
		"comet": "presence_events = [\"room*\"]\nhistory_size = 20"})
	var published []uint64
	for i := range 10 {
		published = append(published, publish(t, s.API, fmt.Sprintf(`{"channel":"room1","data":{"n":%d}}`, i))...)
	}

	member := dialChat(t, s.Listen, "/ws/member?channels=room1")
	var (
		mu       sync.Mutex
		heard    int // presence messages the member got during the flood
		gaps     []string
		flooding = true
	)
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			f, err := member.next(time.Minute)
			if err != nil {
				return // closed at the end of the test
			}
			mu.Lock()
			switch {
			case f.Gap != nil:
				gaps = append(gaps, fmt.Sprintf("%+v", *f.Gap))
			case flooding && bytes.Contains(f.Data, []byte(`"presence"`)):
				heard++
			}
			mu.Unlock()
		}
	}()
	waitIDs(t, s, 1)

	// 200 anonymous clients, each joining room1 and 15 rooms of its own
	// and leaving at once, again and again for 8 s.
	const attackers, flood = 200, 8 * time.Second
	start := time.Now()
	parallel(t, attackers, func(i int) error {
		rooms := []string{"room1"}
		for k := range 15 {
			rooms = append(rooms, fmt.Sprintf("room-%d-%d", i, k))
		}
		for r := 0; time.Since(start) < flood; r++ {
			c, _, _, err := ws.Dial(context.Background(), fmt.Sprintf("ws://%s/ws/f%d-%d?channels=%s", s.Listen, i, r, strings.Join(rooms, ",")))
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	took := time.Since(start)
	mu.Lock()
	flooding = false
	gotHeard, gotGaps := heard, gaps
	mu.Unlock()

	st := s.MustStats()
	t.Logf("%v of flood: %d presence messages published, %d held a window; room1's member heard %d",
		took.Round(time.Millisecond), st.Manager.PresenceAnnounced, st.Manager.PresenceHeld, gotHeard)
	if len(gotGaps) > 0 {
		t.Errorf("the member was told of gaps: %v", gotGaps)
	}
	// Its window doubles from 100 ms to 2 s: 100+200+400+800+1600 ms, then
	// one per 2 s (and its own join, and one more as the flood ends).
	if most := 7 + int(took/(2*time.Second)); gotHeard > most {
		t.Errorf("room1's member heard %d presence messages in %v, want at most %d", gotHeard, took.Round(time.Millisecond), most)
	}
	// A client coming back with a cursor from before the room's published
	// messages gets every one of them, with no gap.
	got := poll(t, http.DefaultClient, s.Listen, fmt.Sprintf("/lp/late?channels=room1&since=%d", published[0]-1))
	var ids []uint64
	for _, m := range got {
		if m.Gap != nil {
			t.Errorf("a replay of room1 after the flood announced a gap: %+v", *m.Gap)
		}
		if !bytes.Contains(m.Data, []byte(`"presence"`)) {
			ids = append(ids, m.ID)
		}
	}
	if fmt.Sprint(ids) != fmt.Sprint(published) {
		t.Errorf("room1's history after the flood: %v, want %v", ids, published)
	}
	member.c.Close()
	<-read
}
