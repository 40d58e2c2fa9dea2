package manager

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
)

// Events (hooks.events): the manager tells the application what changed,
// as the workers' presence records tell it (ipc.OpHas/OpBye, OpSub/OpUnsub,
// OpMemberJoin/OpMemberLeave). The routing table keeps hashes, not names
// (presence.go), so the hub also counts connections by name, per link, in
// three tables: ids (connect, disconnect; kept only with events on),
// channels (occupied, vacated; always kept, for GET /channels) and the
// members of comet.presence_events channels (join, leave). A name's first connection is told at once; its last one
// going is told after hooks.events_linger, and only if none came back
// meanwhile: a reload's hand-over or a long-poll's next request is not a
// disconnect. So the application never sees a vacated without the occupied
// before it, nor two connects of one id in a row.
//
// A worker that dies takes its connections with it: the hub knows by name
// what its link held, so those go as if closed, with reason "worker_lost".
// A reload hands the tables, the lingering and the sender's queue to the
// next manager, which goes on numbering where this one stopped. A fresh
// start opens with a "snapshot" event of what is held (nothing yet): the
// application forgets what it knew.

// evKind is one of the three tables.
type evKind uint8

const (
	evIDs evKind = iota
	evChannels
	evMembers
)

// up and down are the events of a name's first connection and last going.
var evUp, evDown = [3]string{"connect", "occupied", "join"}, [3]string{"disconnect", "vacated", "leave"}

// evCount is one name's connections, per link; gone is when the last
// went, while it lingers (unix ns; 0 = held).
type evCount struct {
	n     uint32
	links []holder
	gone  int64
	why   ipc.Reason
	lost  bool // it went with its worker
}

type evLinger struct {
	kind evKind
	name string
	at   int64
}

// eventSink takes events: a hooks.Sender.
type eventSink interface{ Add(...hooks.Event) }

// events is the hub's side of hooks.events; the hub's lock guards it.
type events struct {
	s         eventSink // nil: no events, only the channel names (GET /channels)
	ids       bool      // the ids table is kept (events on)
	linger    time.Duration
	publish   bool
	tables    [3]map[string]*evCount
	lingering []evLinger // oldest first
	lhead     int
}

func newEvents(s eventSink, linger time.Duration, publish bool) *events {
	e := &events{s: s, ids: s != nil, linger: linger, publish: publish}
	for i := range e.tables {
		e.tables[i] = map[string]*evCount{}
	}
	return e
}

// event makes the event of kind's name.
func (e *events) event(k evKind, typ, name string, at int64) hooks.Event {
	ev := hooks.Event{Type: typ, Time: at / int64(time.Millisecond)}
	switch k {
	case evIDs:
		ev.ID = name
	case evChannels:
		ev.Channel = name
	default:
		ev.Channel, ev.ID, _ = strings.Cut(name, "\x00")
	}
	return ev
}

// member is a members table's name.
func member(channel, id []byte) []byte {
	return append(append(append(make([]byte, 0, len(channel)+1+len(id)), channel...), 0), id...)
}

// add counts a connection of link on name.
func (e *events) add(k evKind, name []byte, l linkID, now time.Time) {
	t := e.tables[k]
	c := t[string(name)]
	if c == nil {
		c = &evCount{}
		t[string(name)] = c
	}
	c.n++
	if i := slices.IndexFunc(c.links, func(h holder) bool { return h.link == l }); i >= 0 {
		c.links[i].count++
	} else {
		c.links = append(c.links, holder{l, 1})
	}
	if c.n > 1 {
		return
	}
	if c.gone != 0 {
		c.gone, c.lost = 0, false // back within the linger: it never left
		return
	}
	if e.s != nil {
		e.s.Add(e.event(k, evUp[k], string(name), now.UnixNano()))
	}
}

// remove counts a connection of link on name gone, for why.
func (e *events) remove(k evKind, name []byte, l linkID, why ipc.Reason, now time.Time) {
	c := e.tables[k][string(name)]
	if c == nil {
		return
	}
	i := slices.IndexFunc(c.links, func(h holder) bool { return h.link == l })
	if i < 0 || c.n == 0 {
		return
	}
	if c.links[i].count--; c.links[i].count == 0 {
		c.links = slices.Delete(c.links, i, i+1)
	}
	if c.n--; c.n == 0 {
		e.lingerOn(k, string(name), c, why, false, now.UnixNano())
	}
}

func (e *events) lingerOn(k evKind, name string, c *evCount, why ipc.Reason, lost bool, at int64) {
	if e.s == nil {
		delete(e.tables[k], name) // nobody to tell
		return
	}
	c.gone, c.why, c.lost = at, why, lost
	e.lingering = append(e.lingering, evLinger{k, name, at})
}

// dropLink takes away what link held: its worker is gone.
func (e *events) dropLink(l linkID, now time.Time) {
	at := now.UnixNano()
	for k := len(e.tables) - 1; k >= 0; k-- { // as a connection goes: member, channel, id
		for name, c := range e.tables[k] {
			i := slices.IndexFunc(c.links, func(h holder) bool { return h.link == l })
			if i < 0 {
				continue
			}
			c.n -= c.links[i].count
			c.links = slices.Delete(c.links, i, i+1)
			if c.n == 0 {
				e.lingerOn(evKind(k), name, c, ipc.ByeClosed, true, at)
			}
		}
	}
	slices.SortStableFunc(e.lingering[e.lhead:], func(a, b evLinger) int { return cmp.Compare(a.at, b.at) })
}

// tick tells the departures whose linger is over at now (all of them
// with all set: the manager stops).
func (e *events) tick(now time.Time, all bool) {
	due := now.Add(-e.linger).UnixNano()
	var out []hooks.Event
	for e.lhead < len(e.lingering) {
		g := e.lingering[e.lhead]
		if g.at > due && !all {
			break
		}
		e.lingering[e.lhead] = evLinger{}
		e.lhead++
		c := e.tables[g.kind][g.name]
		if c == nil || c.n != 0 || c.gone != g.at {
			continue // back since, or gone again later (a later entry tells it)
		}
		delete(e.tables[g.kind], g.name)
		ev := e.event(g.kind, evDown[g.kind], g.name, g.at)
		if g.kind == evIDs {
			ev.Reason = c.why.String()
			if c.lost {
				ev.Reason = "worker_lost"
			}
		}
		out = append(out, ev)
	}
	if e.lhead > 1024 && e.lhead > len(e.lingering)/2 {
		e.lingering = append(e.lingering[:0], e.lingering[e.lhead:]...)
		e.lhead = 0
	}
	if len(out) > 0 {
		e.s.Add(out...)
	}
}

// snapshotEvent is what is held, as a "snapshot" event.
func (e *events) snapshotEvent(now time.Time) hooks.Event {
	ev := hooks.Event{Type: "snapshot", Time: now.UnixMilli(), Held: &hooks.Held{IDs: []string{}, Channels: []string{}, Members: map[string][]string{}}}
	for name := range e.tables[evIDs] {
		ev.IDs = append(ev.IDs, name)
	}
	for name := range e.tables[evChannels] {
		ev.Channels = append(ev.Channels, name)
	}
	for name := range e.tables[evMembers] {
		ch, id, _ := strings.Cut(name, "\x00")
		ev.Members[ch] = append(ev.Members[ch], id)
	}
	slices.Sort(ev.IDs)
	slices.Sort(ev.Channels)
	return ev
}

// eventsState is what a reload hands over: every name held or lingering,
// with its connections per worker (an index into handoverState.Workers).
type eventsState struct {
	On     bool              `json:"on,omitempty"` // hooks.events was on: Sender is its state
	Sender hooks.SenderState `json:"sender"`
	Tables [3][]evEntry      `json:"tables"`
}

type evEntry struct {
	Name string     `json:"name"`
	Held [][2]int   `json:"held,omitempty"` // worker index, connections
	Gone int64      `json:"gone,omitempty"`
	Why  ipc.Reason `json:"why,omitempty"`
	Lost bool       `json:"lost,omitempty"`
}

// export is the tables for a hand-over of links (in that order); what
// other links held goes with them.
func (e *events) export(links []linkID, now time.Time) [3][]evEntry {
	idx := make(map[linkID]int, len(links))
	for i, l := range links {
		idx[l] = i
	}
	var other []linkID
	for _, t := range e.tables {
		for _, c := range t {
			for _, h := range c.links {
				if _, ok := idx[h.link]; !ok && !slices.Contains(other, h.link) {
					other = append(other, h.link)
				}
			}
		}
	}
	for _, l := range other {
		e.dropLink(l, now)
	}
	var out [3][]evEntry
	for k, t := range e.tables {
		for name, c := range t {
			en := evEntry{Name: name, Gone: c.gone, Why: c.why, Lost: c.lost}
			for _, h := range c.links {
				en.Held = append(en.Held, [2]int{idx[h.link], int(h.count)})
			}
			out[k] = append(out[k], en)
		}
	}
	return out
}

// restore takes over a predecessor's tables; links maps its worker
// indexes to ours (a worker not adopted: its connections are lost).
func (e *events) restore(tables [3][]evEntry, links map[int]linkID, now time.Time) {
	at := now.UnixNano()
	for k := len(tables) - 1; k >= 0; k-- { // as a connection goes: member, channel, id
		if k == int(evIDs) && !e.ids {
			continue
		}
		entries := slices.Clone(tables[k])
		slices.SortFunc(entries, func(a, b evEntry) int { return strings.Compare(a.Name, b.Name) })
		for _, en := range entries {
			c := &evCount{gone: en.Gone, why: en.Why, lost: en.Lost}
			for _, h := range en.Held {
				if l, ok := links[h[0]]; ok {
					c.links = append(c.links, holder{l, uint32(h[1])})
					c.n += uint32(h[1])
				}
			}
			if c.n > 0 {
				c.gone, c.lost = 0, false
			} else if c.gone == 0 {
				c.gone, c.lost = at, true
			}
			if c.gone != 0 && e.s == nil {
				continue // nobody to tell
			}
			e.tables[k][en.Name] = c
			if c.gone != 0 {
				e.lingering = append(e.lingering, evLinger{evKind(k), en.Name, c.gone})
			}
		}
	}
	slices.SortStableFunc(e.lingering[e.lhead:], func(a, b evLinger) int { return cmp.Compare(a.at, b.at) })
}

// eventsEvery is how often lingering departures are looked at.
const eventsEvery = 50 * time.Millisecond

// startEvents starts posting events: a fresh start (or one whose
// predecessor handed over no events) opens with a snapshot.
func (m *Manager) startEvents(stop <-chan struct{}) {
	if !m.eventsRestored {
		m.hub.mu.Lock()
		ev := m.hub.ev.snapshotEvent(m.hub.now())
		m.hub.mu.Unlock()
		m.events.AddFirst(ev)
	}
	go m.events.Run()
	go every(eventsEvery, stop, func() { m.hub.eventsTick(false) })
}

// flushEvents, once the workers are gone, tells every departure now and
// gives the application up to eventsFlush to take what is queued.
func (m *Manager) flushEvents() {
	if m.events == nil {
		return
	}
	m.hub.eventsTick(true)
	deadline := time.Now().Add(eventsFlush)
	for !m.events.Idle() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !m.events.Idle() {
		m.log.Warn("stopping with events the application did not take", "queued", m.events.Stats().Queued)
	}
}

// eventsFlush bounds how long a stopping manager waits for the
// application to take its last events.
const eventsFlush = 5 * time.Second

func (m *Manager) stopEvents() { m.events.Stop() }
