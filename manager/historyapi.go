package manager

import (
	"encoding/json"
	"net/http"
	"slices"
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
	hist := h.hist
	var msgs []*message
	lost := since < hist.horizon
	read := func(r *ring) {
		if r == nil {
			lost = lost || since < hist.forgotten
			return
		}
		lost = lost || since < r.dropped
		msgs = r.after(msgs, since)
	}
	if channel != "" {
		read(hist.byChan[channel])
		if r := hist.byPres[channel]; r != nil {
			msgs = r.after(msgs, since)
		}
	} else {
		read(hist.byID[id])
	}
	slices.SortFunc(msgs, func(a, b *message) int { return compareUint64(a.id, b.id) })
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

func compareUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
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
	limit := historyLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > historyLimitMax {
			writeError(w, http.StatusBadRequest, "limit must be 1 to 10000")
			return
		}
		limit = n
	}
	m.historyReads.Add(1)
	writeJSON(w, http.StatusOK, m.hub.historyOf(id, ch, since, hasSince, limit))
}
