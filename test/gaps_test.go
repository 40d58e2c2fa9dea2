package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
)

// firstItems connects to id with cursor since on one transport and
// returns the first n things it gets - messages and gap announcements -
// as a client of that transport sees them.
func firstItems(t *testing.T, s *testutil.Server, tr, id string, since uint64, n int) []msg {
	t.Helper()
	path := fmt.Sprintf("/%s/%s?since=%d", tr, id, since)
	var got []msg
	switch tr {
	case "sse", "stream":
		c := openStream(t, s.Listen, path)
		defer c.close()
		for len(got) < n {
			m := next(t, c, 30*time.Second)
			got = append(got, *m)
		}
	case "lp":
		cl := &http.Client{Timeout: time.Minute}
		for len(got) < n {
			ms := poll(t, cl, s.Listen, path)
			got = append(got, ms...)
			if len(ms) > 0 && ms[len(ms)-1].ID > 0 {
				path = fmt.Sprintf("/lp/%s?since=%d", id, ms[len(ms)-1].ID)
			}
		}
	case "ws":
		c, br, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Frames that came with the handshake's answer are in br.
		var rw io.ReadWriter = c
		if br != nil {
			rw = struct {
				io.Reader
				io.Writer
			}{io.MultiReader(br, c), c}
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for len(got) < n {
			b, err := wsutil.ReadServerText(rw)
			if err != nil {
				t.Fatal(err)
			}
			var m msg
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("frame %q: %v", b, err)
			}
			got = append(got, m)
		}
	}
	return got
}

// A cursor older than what history still holds gets exactly one gap
// object with the right bounds, then what is retained, on every transport;
// a cursor inside the retained range gets no gap.
func TestGapForACursorOlderThanHistory(t *testing.T) {
	s := testutil.Start(t, map[string]string{"comet": "history_size = 5"})
	var ids []uint64
	for i := range 10 {
		ids = append(ids, publish(t, s.API, fmt.Sprintf(`{"to":"g","data":%d}`, i))[0])
	}
	for _, tr := range []string{"sse", "stream", "lp", "ws"} {
		t.Run(tr, func(t *testing.T) {
			got := firstItems(t, s, tr, "g", ids[0], 6)
			if g := got[0].Gap; g == nil || g.After != ids[0] || g.Before != ids[5] {
				t.Errorf("first: %+v, want the gap {after %d, before %d}", got[0], ids[0], ids[5])
			}
			for i, m := range got[1:] {
				if m.Gap != nil || m.ID != ids[5+i] {
					t.Errorf("then %d: %+v, want message %d", i, m, ids[5+i])
				}
			}
			// Inside the retained range: the messages, no gap.
			got = firstItems(t, s, tr, "g", ids[6], 3)
			for i, m := range got {
				if m.Gap != nil || m.ID != ids[7+i] {
					t.Errorf("from %d, item %d: %+v, want message %d", ids[6], i, m, ids[7+i])
				}
			}
		})
	}
}
