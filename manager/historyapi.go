package manager

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/megacomet/megacomet/ipc"
)

// GET /history?channel=C (or ?id=X) [&since=N] [&limit=L]: what history
// keeps of one channel (its presence announcements included) or of the
// messages sent to one id, oldest first, as the very bytes a replay
// carries. With since, only what came after it, and the gap object a
// replay from that cursor would open with when history no longer holds
// all of it. A page is at most limit messages; "more" says another
// follows: ask again with since = the last id.

// historyLimit bounds a page.
const (
	historyLimit    = 100
	historyLimitMax = 10000
	maxCursor       = 1<<53 - 1 // ids are below 2^53 (worker/route.go)
)

// historyPage is one page of history, for the API.
type historyPage struct {
	Gap      *gapObject        `json:"gap,omitempty"`
	Messages []json.RawMessage `json:"messages"`
	More     bool              `json:"more"`
}

type gapObject struct {
	After  uint64 `json:"after"`
	Before uint64 `json:"before"`
}

// historyOf is the hub's side: the page after since (hasSince: a cursor
// was given) of channel's or id's ring.
func (h *hub) historyOf(id, channel string, since uint64, hasSince bool, limit int) historyPage {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hist.expire(h.now())
	var chans []string
	if channel != "" {
		chans = []string{channel}
	}
	msgs, lost := h.hist.read(id, chans, false, since)
	page := historyPage{Messages: make([]json.RawMessage, 0, min(len(msgs), limit))}
	if hasSince && lost {
		g := &gapObject{After: since, Before: h.lastID + 1}
		if len(msgs) > 0 {
			g.Before = msgs[0].id
		}
		page.Gap = g
	}
	if len(msgs) > limit {
		msgs, page.More = msgs[:limit], true
	}
	for _, m := range msgs {
		page.Messages = append(page.Messages, json.RawMessage(m.body))
	}
	return page
}

// handleHistory serves GET /history.
func (m *Manager) handleHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id, ch := q.Get("id"), q.Get("channel")
	switch {
	case (id == "") == (ch == ""):
		writeError(w, http.StatusBadRequest, "give one of ?channel=NAME or ?id=ID")
		return
	case !ipc.ValidName(id + ch):
		writeError(w, http.StatusBadRequest, "bad name: use 1 to 64 of A-Z a-z 0-9 _ -")
		return
	}
	var since uint64
	s, hasSince := q.Get("since"), q.Has("since")
	if hasSince {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n > maxCursor {
			writeError(w, http.StatusBadRequest, "since must be a message id: 0 to 2^53-1")
			return
		}
		since = n
	}
	limit, ok := pageLimit(w, q.Get("limit"), historyLimit, historyLimitMax)
	if !ok {
		return
	}
	m.historyReads.Add(1)
	writeJSON(w, http.StatusOK, m.hub.historyOf(id, ch, since, hasSince, limit))
}

// pageLimit reads a ?limit= (def when empty, 1 to most); it answers the
// error itself.
func pageLimit(w http.ResponseWriter, s string, def, most int) (int, bool) {
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit must be 1 to %d", most))
		return 0, false
	}
	return n, true
}
