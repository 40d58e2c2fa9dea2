package manager

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// Presence, as users see it. GET /presence/ID and GET /presence?channel=C
// answer from the routing table's counts (presence.go: connections per id
// and per channel, over every worker), in microseconds at a million. Names
// are kept only for the channels comet.presence_events names: there the
// hub keeps each member id's connections (members below), announces joins
// and leaves to the channel's subscribers, and GET /presence can list the
// ids. On a cluster every count is this node's.

// memberWindow is how long joins and leaves are gathered before they are
// announced. Within it a join and a leave of the same id cancel out, and
// each channel gets one message for all of them: 10,000 clients joining a
// 10,000-member room in a second cost 10 messages to each member - 10^5
// deliveries - not 10^8.
const memberWindow = 100 * time.Millisecond

// maxAnnounced bounds the ids one announcement lists; past it the message
// says how many joined and left.
const maxAnnounced = 100

// members is the announced channels' members. The hub's lock guards it.
type members struct {
	conns   map[string]map[string]uint32 // channel → id → connections
	pending map[string]map[string]int8   // channel → id → +1 joined, -1 left, since the last announcement
}

func newMembers() *members {
	return &members{conns: map[string]map[string]uint32{}, pending: map[string]map[string]int8{}}
}

// note counts a connection of id joining (or leaving) channel.
func (ms *members) note(channel, id string, join bool) {
	m := ms.conns[channel]
	if m == nil {
		if !join {
			return
		}
		m = map[string]uint32{}
		ms.conns[channel] = m
	}
	switch {
	case join:
		if m[id]++; m[id] == 1 {
			ms.mark(channel, id, 1)
		}
	case m[id] > 0:
		if m[id]--; m[id] == 0 {
			delete(m, id)
			if len(m) == 0 {
				delete(ms.conns, channel)
			}
			ms.mark(channel, id, -1)
		}
	}
}

func (ms *members) mark(channel, id string, d int8) {
	p := ms.pending[channel]
	if p == nil {
		p = map[string]int8{}
		ms.pending[channel] = p
	}
	if p[id] += d; p[id] == 0 {
		delete(p, id) // joined and left within the window: nothing to say
	}
}

// announcement is the presence message for one channel's changes.
type announcement struct {
	channel string
	data    []byte
}

// take returns the announcements of the window and starts a new one.
func (ms *members) take() []announcement {
	var out []announcement
	for ch, p := range ms.pending {
		var joins, leaves []string
		for id, d := range p {
			if d > 0 {
				joins = append(joins, id)
			} else {
				leaves = append(leaves, id)
			}
		}
		if len(joins)+len(leaves) > 0 {
			out = append(out, announcement{ch, presenceData(joins, leaves)})
		}
	}
	clear(ms.pending)
	slices.SortFunc(out, func(a, b announcement) int { return compareStrings(a.channel, b.channel) })
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// presenceData is {"presence":{"join":"ID"}} for one change, and for more
// {"presence":{"join":["a","b"],"leave":["c"]}}, with "joined" and "left"
// counts when the lists stop at maxAnnounced.
func presenceData(joins, leaves []string) []byte {
	slices.Sort(joins)
	slices.Sort(leaves)
	p := map[string]any{}
	switch {
	case len(joins) == 1 && len(leaves) == 0:
		p["join"] = joins[0]
	case len(leaves) == 1 && len(joins) == 0:
		p["leave"] = leaves[0]
	default:
		if len(joins) > 0 {
			p["join"] = joins[:min(len(joins), maxAnnounced)]
		}
		if len(leaves) > 0 {
			p["leave"] = leaves[:min(len(leaves), maxAnnounced)]
		}
		if len(joins) > maxAnnounced || len(leaves) > maxAnnounced {
			p["joined"], p["left"] = len(joins), len(leaves)
		}
	}
	b, _ := json.Marshal(map[string]any{"presence": p})
	return b
}

// announceMembers publishes each window's joins and leaves until stop.
func (m *Manager) announceMembers(stop <-chan struct{}) {
	every(memberWindow, stop, func() {
		m.hub.mu.Lock()
		ann := m.hub.members.take()
		m.hub.mu.Unlock()
		if len(ann) == 0 {
			return
		}
		items := make([]pubItem, len(ann))
		for i, a := range ann {
			items[i] = pubItem{channel: a.channel, data: a.data}
		}
		if _, err := m.publishItems(items); err != nil {
			m.log.Warn("presence announcements not published", "channels", len(items), "err", err)
		}
	})
}

// presenceCounts is the hub's side of GET /presence.
func (h *hub) presenceCounts(id, channel string, limit int) (n uint64, ids []string, members int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if id != "" {
		return h.ids.count(h.ids.hashString(id)), nil, 0
	}
	n = h.chans.count(h.chans.hashString(channel))
	if limit > 0 {
		m := h.members.conns[channel]
		members = len(m)
		for id := range m {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		ids = ids[:min(len(ids), limit)]
	}
	return n, ids, members
}

// handlePresence serves GET /presence/ID and GET /presence?channel=C.
func (m *Manager) handlePresence(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != "" {
		if !ipc.ValidName(id) {
			writeError(w, http.StatusBadRequest, "bad id: use 1 to 64 of A-Z a-z 0-9 _ -")
			return
		}
		n, _, _ := m.hub.presenceCounts(id, "", 0)
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "online": n > 0, "connections": n})
		return
	}
	q := r.URL.Query()
	ch := q.Get("channel")
	if !ipc.ValidName(ch) {
		writeError(w, http.StatusBadRequest, "give ?channel=NAME (1 to 64 of A-Z a-z 0-9 _ -), or ask /presence/ID")
		return
	}
	limit := 0
	if q.Get("ids") == "1" {
		limit = 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 10000 {
				writeError(w, http.StatusBadRequest, "limit must be 1 to 10000")
				return
			}
			limit = n
		}
		if !m.opts.Comet.Announced(ch) {
			writeError(w, http.StatusBadRequest, "ids are kept only for the channels comet.presence_events names")
			return
		}
	}
	n, ids, members := m.hub.presenceCounts("", ch, limit)
	out := map[string]any{"channel": ch, "subscribers": n}
	if limit > 0 {
		if ids == nil {
			ids = []string{}
		}
		out["members"], out["ids"] = members, ids
	}
	writeJSON(w, http.StatusOK, out)
}
