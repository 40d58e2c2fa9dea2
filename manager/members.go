package manager

import (
	"cmp"
	"encoding/json"
	"maps"
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

// maxMemberGap is the longest a busy channel's announcements are gathered:
// a channel that had something to say in each of its windows has its
// window doubled, up to this, and back to memberWindow once it has been
// quiet for one. So a room that anonymous clients keep joining and leaving
// costs its members at most one message per maxMemberGap after the first
// second, however fast they come.
const maxMemberGap = 2 * time.Second

// maxAnnouncements bounds the messages one window publishes, over every
// channel (2,000 a second): a flood over many rooms waits its turn and is
// coalesced further meanwhile, the longest waiting first. What is held back
// is never lost: it is said in the channel's next message.
const maxAnnouncements = 200

// maxAnnounced bounds the ids one announcement lists; past it the message
// says how many joined and left.
const maxAnnounced = 100

// members is the announced channels' members. The hub's lock guards it.
type members struct {
	conns map[string]map[string]uint32 // channel → id → connections
	// since is when each member's first connection here joined, by
	// channel + "\x00" + id (unix ns; 0: before this manager), so that on
	// a cluster the node that had a member first is the one to announce it.
	since   map[string]int64
	pending map[string]*change // channel → what changed since its last announcement
	pace    map[string]pace    // channel → when it may speak next, for channels that spoke lately
	swept   time.Time          // when pace was last swept of quiet channels
	// announced and held count the messages published and the windows a
	// due channel waited for maxAnnouncements, for stats.
	announced, held uint64
}

// change is one channel's joins and leaves not yet announced.
type change struct {
	ids   map[string]int8 // id → +1 joined, -1 left
	since time.Time       // when the first of them came
}

// pace is a channel's window: it spoke at last, and may again from next.
type pace struct {
	last, next time.Time
	gap        time.Duration
}

func newMembers() *members {
	return &members{conns: map[string]map[string]uint32{}, since: map[string]int64{}, pending: map[string]*change{}, pace: map[string]pace{}}
}

// note counts a connection of id joining (or leaving) channel at now.
func (ms *members) note(channel, id string, join bool, now time.Time) {
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
			ms.since[channel+"\x00"+id] = now.UnixNano()
			ms.mark(channel, id, 1, now)
		}
	case m[id] > 0:
		if m[id]--; m[id] == 0 {
			delete(ms.since, channel+"\x00"+id)
			delete(m, id)
			if len(m) == 0 {
				delete(ms.conns, channel)
			}
			ms.mark(channel, id, -1, now)
		}
	}
}

func (ms *members) mark(channel, id string, d int8, now time.Time) {
	c := ms.pending[channel]
	if c == nil {
		c = &change{ids: map[string]int8{}, since: now}
		ms.pending[channel] = c
	}
	if c.ids[id] += d; c.ids[id] == 0 {
		delete(c.ids, id) // joined and left within the window: nothing to say
	}
}

// announcement is the presence message for one channel's changes.
type announcement struct {
	channel       string
	data          []byte
	joins, leaves []string // sorted
	joinedAt      []int64  // joins[i]'s since (members.since)
}

func (a announcement) String() string { return a.channel + " " + string(a.data) }

// take returns the announcements due at now: each channel whose window
// is over, the longest waiting first, at most maxAnnouncements.
func (ms *members) take(now time.Time) []announcement {
	// A window ends when the ticker comes round, give or take its jitter.
	due := now.Add(memberWindow / 2)
	var ready []string
	for ch, c := range ms.pending {
		switch {
		case len(c.ids) == 0:
			delete(ms.pending, ch) // every change cancelled out
		case !ms.pace[ch].next.After(due):
			ready = append(ready, ch)
		}
	}
	slices.SortFunc(ready, func(a, b string) int {
		if c := ms.pending[a].since.Compare(ms.pending[b].since); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	if len(ready) > maxAnnouncements {
		ms.held += uint64(len(ready) - maxAnnouncements)
		ready = ready[:maxAnnouncements]
	}
	out := make([]announcement, 0, len(ready))
	for _, ch := range ready {
		var joins, leaves []string
		for id, d := range ms.pending[ch].ids {
			if d > 0 {
				joins = append(joins, id)
			} else {
				leaves = append(leaves, id)
			}
		}
		delete(ms.pending, ch)
		slices.Sort(joins)
		slices.Sort(leaves)
		at := make([]int64, len(joins))
		for i, id := range joins {
			at[i] = ms.since[ch+"\x00"+id]
		}
		out = append(out, announcement{channel: ch, data: presenceData(joins, leaves), joins: joins, leaves: leaves, joinedAt: at})
		p, gap := ms.pace[ch], memberWindow
		if now.Sub(p.last) < 2*p.gap+memberWindow/2 {
			gap = min(2*p.gap, maxMemberGap) // it spoke in its last window too
		}
		ms.pace[ch] = pace{last: now, next: now.Add(gap), gap: gap}
	}
	ms.announced += uint64(len(out))
	if now.Sub(ms.swept) >= maxMemberGap {
		ms.swept = now
		for ch, p := range ms.pace {
			if now.Sub(p.last) > 3*maxMemberGap {
				delete(ms.pace, ch) // quiet: its next message comes at once
			}
		}
	}
	slices.SortFunc(out, func(a, b announcement) int { return cmp.Compare(a.channel, b.channel) })
	return out
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
		ann := m.hub.members.take(m.hub.now())
		m.hub.mu.Unlock()
		ann = m.onceInTheCluster(ann) // control.go
		if len(ann) == 0 {
			return
		}
		items := make([]pubItem, len(ann))
		for i, a := range ann {
			items[i] = pubItem{channel: a.channel, data: a.data, presence: true}
		}
		if _, err := m.publishItems(items); err != nil {
			m.log.Warn("presence announcements not published", "channels", len(items), "err", err)
		}
	})
}

// mergeMembers merges the nodes' member lists (each sorted, each of at
// most limit ids): the first limit ids of their union, and the members in
// all - an id on several nodes counted once, exactly when every node's
// list was whole, else counted once as far as the lists show.
func mergeMembers(replies []reply, limit int) ([]string, int) {
	var ids []string
	listed, members := 0, 0
	for _, r := range replies {
		ids = append(ids, r.IDs...)
		listed += len(r.IDs)
		members += r.Members
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	members -= listed - len(ids)
	return ids[:min(len(ids), limit)], members
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
		replies, extra := m.askEverywhere(&question{Presence: &presenceQuestion{ID: id}}) // control.go
		var n uint64
		for _, r := range replies {
			n += r.Connections
		}
		out := map[string]any{"id": id, "online": n > 0, "connections": n}
		maps.Copy(out, extra)
		writeJSON(w, http.StatusOK, out)
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
	replies, extra := m.askEverywhere(&question{Presence: &presenceQuestion{Channel: ch, Limit: limit}})
	var n uint64
	for _, r := range replies {
		n += r.Connections
	}
	ids, members := mergeMembers(replies, limit)
	out := map[string]any{"channel": ch, "subscribers": n}
	maps.Copy(out, extra)
	if limit > 0 {
		if ids == nil {
			ids = []string{}
		}
		out["members"], out["ids"] = members, ids
	}
	writeJSON(w, http.StatusOK, out)
}
