package manager

import (
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/megacomet/megacomet/ipc"
)

// GET /channels[?prefix=P][&after=NAME][&limit=N]: the channels with a
// subscriber on this node, in name order, with their subscriber counts
// (connections), a page at a time: with "more", ask again with after = the
// last name. The hub keeps channel names for it (events.go's channel
// table), apart from the routing table's hashes.

const (
	channelsLimit    = 100
	channelsLimitMax = 10000
)

type channelCount struct {
	Name        string `json:"name"`
	Subscribers uint32 `json:"subscribers"`
}

// channelsPage lists the held channels named prefix… after after.
func (h *hub) channelsPage(prefix, after string, limit int) ([]channelCount, bool) {
	h.mu.Lock()
	var names []channelCount
	for name, c := range h.ev.tables[evChannels] {
		if c.n > 0 && strings.HasPrefix(name, prefix) && name > after {
			names = append(names, channelCount{name, c.n})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(names, func(a, b channelCount) int { return strings.Compare(a.Name, b.Name) })
	if len(names) > limit {
		return names[:limit], true
	}
	return names, false
}

func (m *Manager) handleChannels(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix, after := q.Get("prefix"), q.Get("after")
	switch {
	case prefix != "" && !ipc.ValidName([]byte(prefix)):
		writeError(w, http.StatusBadRequest, "prefix: use 1 to 64 of A-Z a-z 0-9 _ -")
		return
	case after != "" && !ipc.ValidName([]byte(after)):
		writeError(w, http.StatusBadRequest, "after: a channel name, 1 to 64 of A-Z a-z 0-9 _ -")
		return
	}
	limit, ok := pageLimit(w, q.Get("limit"), channelsLimit, channelsLimitMax) // historyapi.go
	if !ok {
		return
	}
	replies, extra := m.askEverywhere(&question{Channels: &channelsQuestion{Prefix: prefix, After: after, Limit: limit}}) // control.go
	page, more := mergeChannels(replies, limit)
	out := map[string]any{"channels": page, "more": more}
	maps.Copy(out, extra)
	m.channelReads.Add(1)
	writeJSON(w, http.StatusOK, out)
}
