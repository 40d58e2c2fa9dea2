package manager

import (
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

const (
	kindIDs       = ipc.KindIDs
	kindChannel   = ipc.KindChannel
	kindBroadcast = ipc.KindBroadcast
)

// hub assigns message ids, keeps history and routes messages to the worker
// links that need them. One lock serialises publishing and subscribing, so:
//   - ids are strictly increasing in the order messages reach every link;
//   - a subscription's replay is computed and queued to its link in the same
//     critical section that makes the link receive live messages for it, so
//     a message is either in the replay or after it on the link, never lost
//     in between and never both (the worker drops live messages for a
//     connection until its replay arrives).
//
// Lock order: hub.mu, then an Outbox's lock (appending frames).
type hub struct {
	mu        sync.Mutex
	lastID    uint64
	links     []*proc // by linkID; nil = free
	ids       presence
	chans     presence
	hist      *history
	idem      *idemKeys
	published uint64
	// joins counts joins answered; replaysCut, those that asked for more
	// than maxReplay messages; replaysPartial, those whose replay stopped
	// at replayBytes; joinsDeferred, those answered "later" (joinBacklog).
	joins, replaysCut, replaysPartial, joinsDeferred uint64
	frames                                           [][]byte // per link: the Deliver frame being built
	starts                                           []int
	dirty                                            []linkID
	targets                                          map[linkID][]string // scratch: per link, a message's ids there
	tell                                             func(*proc, func([]byte) []byte)
	now                                              func() time.Time
	maxReplay                                        int // comet.max_replay: the most messages one join replays
	// replayBytes: the most message bytes one join replays (half of
	// comet.max_pending: what the worker may hold unsent for the client,
	// with room for each transport's framing). The rest is the client's
	// when it comes back from its cursor.
	replayBytes int
	closed      bool // snapshot taken: no more publishing here
	// mark is the id high-water mark reserved in manager.state_dir (ids up
	// to it may be used); store writes a new one, markErr hears why it
	// could not (idmark.go).
	mark    uint64
	store   func(uint64) error
	markErr func(error)
	// primed is closed once the hub holds the state it will serve from:
	// at once on a fresh start, after the hand-over on an upgrade. Replays
	// wait for it.
	primed chan struct{}
	// seqIDs: ids come from the cluster stream, not nextID (cluster.go);
	// prime notes what a fresh start reads of it.
	seqIDs   bool
	prime    *primer
	tickedAt time.Time // the newest id last went to every worker
	// ev counts channels (and members) by name, for GET /channels, and
	// with hooks.events on ids too, and tells the events (events.go).
	ev *events
	// bans are POST /disconnect's bans in force, by id (disconnect.go);
	// revs, POST /revoke's revocations (revoke.go).
	bans    map[string]ipc.Disconnect
	revs    map[string]ipc.Revoke
	members *members // of the comet.presence_events channels (members.go)
}

func newHub(historySize int, historyTTL time.Duration, tell func(*proc, func([]byte) []byte)) *hub {
	seed := uint64(time.Now().UnixNano())
	return &hub{
		ids: newPresence(seed), chans: newPresence(seed),
		hist:    newHistory(historySize, historyTTL),
		idem:    newIdemKeys(historyTTL),
		targets: make(map[linkID][]string),
		tell:    tell, now: time.Now, maxReplay: historySize, replayBytes: defaultReplayBytes, members: newMembers(),
		primed: make(chan struct{}), ev: newEvents(nil, 0, false),
	}
}

// addLink gives p a link id and starts routing to it.
func (h *hub) addLink(p *proc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, l := range h.links {
		if l == nil {
			h.links[i], p.link = p, linkID(i)
			return
		}
	}
	h.links = append(h.links, p)
	h.frames = append(h.frames, nil)
	h.starts = append(h.starts, 0)
	p.link = linkID(len(h.links) - 1)
}

// dropLink forgets a link whose process is gone, with everything it held.
func (h *hub) dropLink(p *proc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if int(p.link) >= len(h.links) || h.links[p.link] != p {
		return
	}
	h.ids.dropLink(p.link)
	h.chans.dropLink(p.link)
	h.ev.dropLink(p.link, h.now())
	h.links[p.link] = nil
	h.frames[p.link] = h.frames[p.link][:0]
}

// last is the newest id issued.
func (h *hub) last() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastID
}

// nextID is time-based (microseconds since the epoch: exact in JavaScript
// until the year 2255) and strictly increasing even when publishing
// outruns the clock or the clock steps back.
func (h *hub) nextID(now time.Time) uint64 {
	id := uint64(now.UnixMicro())
	if id <= h.lastID {
		id = h.lastID + 1
	}
	if h.store != nil && id > h.mark {
		// Reserve the next block before its first id goes out.
		if err := h.store(id + idBlock); err != nil {
			h.markErr(err)
		} else {
			h.mark = id + idBlock
		}
	}
	h.lastID = id
	return id
}

// pubItem is one validated message to publish.
type pubItem struct {
	to        []string
	channel   string
	broadcast bool
	data      []byte // compact JSON
	presence  bool   // a presence announcement (members.go): history keeps it apart
}

// errHandingOver: the hub's state went to the manager taking over.
var errHandingOver = errors.New("this manager is handing over to its successor: retry")

// errIdemMismatch: an Idempotency-Key came back with a different body.
var errIdemMismatch = errors.New("Idempotency-Key reused with a different request body")

// idemFind looks an Idempotency-Key up: ok with the first answer's ids,
// or errIdemMismatch when its body was another. Call with h.mu held.
func (h *hub) idemFind(key string, sum uint64, now time.Time) (ids []uint64, ok bool, err error) {
	e := h.idem.lookup(key, now)
	switch {
	case e == nil:
		return nil, false, nil
	case e.sum != sum:
		return nil, false, errIdemMismatch
	}
	return e.ids, true, nil
}

// publish assigns ids, records history and queues the messages to the links
// that hold their targets: one Deliver frame per link for the whole batch.
// With an idempotency key (sum is the body's hash) a repeat returns the
// first answer's ids and publishes nothing (replayed = true).
func (h *hub) publish(items []pubItem, key string, sum uint64) (ids []uint64, replayed bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false, errHandingOver
	}
	now := h.now()
	h.hist.expire(now)
	h.idem.expire(now)
	if key != "" {
		if ids, ok, err := h.idemFind(key, sum, now); ok || err != nil {
			return ids, ok, err
		}
	}
	ids = make([]uint64, len(items))
	for i := range items {
		it := &items[i]
		m := &message{id: h.nextID(now), to: it.to, channel: it.channel, presence: it.presence}
		switch {
		case it.broadcast:
			m.kind = kindBroadcast
		case it.channel != "":
			m.kind = kindChannel
		default:
			m.kind = kindIDs
		}
		m.body = renderMessage(m.id, it.channel, it.data)
		h.hist.add(m, now)
		h.route(m)
		ids[i] = m.id
		h.published++
	}
	h.flush()
	if key != "" {
		h.idem.put(key, &idemEntry{ids: ids, sum: sum, expires: now.Add(h.idem.ttl)})
	}
	return ids, false, nil
}

// renderMessage is the JSON a client receives.
func renderMessage(id uint64, channel string, data []byte) []byte {
	b := make([]byte, 0, len(data)+len(channel)+48)
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, id, 10)
	if channel != "" {
		b = append(b, `,"channel":"`...)
		b = append(b, channel...) // channel names need no escaping
		b = append(b, '"')
	}
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

func (h *hub) route(m *message) {
	switch m.kind {
	case kindBroadcast:
		for l, p := range h.links {
			if p != nil {
				h.msgTo(linkID(l), m, nil)
			}
		}
	case kindChannel:
		h.chans.each(h.chans.hashString(m.channel), func(l linkID) { h.msgTo(l, m, nil) })
	default:
		for _, id := range m.to {
			h.ids.each(h.ids.hashString(id), func(l linkID) { h.targets[l] = append(h.targets[l], id) })
		}
		for l, ids := range h.targets {
			h.msgTo(l, m, ids)
		}
		clear(h.targets)
	}
}

func (h *hub) msgTo(l linkID, m *message, ids []string) {
	f := h.frame(l)
	f = ipc.AppendMsgHead(f, m.id, m.kind, m.channel)
	if m.kind == kindIDs {
		f = ipc.AppendUvarint(f, uint64(len(ids)))
		for _, id := range ids {
			f = ipc.AppendString(f, id)
		}
	}
	h.frames[l] = ipc.AppendBytes(f, m.body)
}

// frame returns link l's Deliver frame under construction, starting it.
func (h *hub) frame(l linkID) []byte {
	f := h.frames[l]
	if len(f) == 0 {
		f, h.starts[l] = ipc.Begin(f[:0], ipc.TypeDeliver)
		h.dirty = append(h.dirty, l)
	}
	return f
}

// flush hands every frame built under this lock hold to its link.
func (h *hub) flush() {
	for _, l := range h.dirty {
		h.flushLink(l)
	}
	h.dirty = h.dirty[:0]
}

// flushLink hands link l's frame under construction to it, if it has one;
// the next h.frame(l) starts another.
func (h *hub) flushLink(l linkID) {
	f := h.frames[l]
	if len(f) == 0 {
		return // already handed over
	}
	f = ipc.End(f, h.starts[l])
	if p := h.links[l]; p != nil {
		h.tell(p, func(dst []byte) []byte { return append(dst, f...) })
	}
	if cap(f) > 1<<20 {
		f = nil // do not keep a huge batch's buffer
	}
	h.frames[l] = f[:0]
}

// replayPiece bounds the Deliver frame a replay is built in: a join's
// replay longer than that travels in several frames, so none nears
// ipc.MaxFrame and the worker serves its other clients between them.
const replayPiece = 1 << 20

// defaultReplayBytes is replayBytes for comet.max_pending's default, 1 MiB.
const defaultReplayBytes = 512 << 10

// joinBacklog bounds what joins queue for one worker. Every join costs the
// manager a copy of its replay, up to replayBytes, queued to the worker's
// IPC until it reads it; a client that joins again and again (reconnects,
// or WebSocket {"since":N}) with a long history to replay would otherwise
// make the manager copy it again each time. Once a worker's queue holds
// more than joinBacklog, a join is answered ReplayDeferred at no cost, and
// the worker asks again later. So replays hold at most joinBacklog plus
// one join's replayBytes per worker here, whatever the clients do.
const joinBacklog = 16 << 20

// joinsFull reports whether link l's queue (what its outbox holds and
// writes, and the frame being built under this lock) is past joinBacklog.
func (h *hub) joinsFull(l linkID) bool {
	p := h.links[l]
	return p != nil && p.out != nil && p.out.Len()+len(h.frames[l]) > joinBacklog
}

// appendReplay queues join j's replay to link l: at most h.maxReplay of
// the newest messages after its cursor and, of those, the oldest that fit
// in h.replayBytes (ReplayPartial on the last piece when some are left
// for the client's next join), in pieces of about replayPiece bytes. When
// some may be missing (lost: history let them go) or are left out (past
// maxReplay), the first piece names the gap's end: the oldest id sent, or
// the next id to be issued when there is none.
func (h *hub) appendReplay(l linkID, j *ipc.Join, msgs []*message, lost bool) {
	var gap uint64
	if len(msgs) > h.maxReplay {
		msgs = msgs[len(msgs)-h.maxReplay:]
		lost = true
		h.replaysCut++
	}
	if lost {
		gap = h.lastID + 1
		if len(msgs) > 0 {
			gap = msgs[0].id
		}
	}
	var last byte // the last piece's flags
	size := 0
	for i, m := range msgs {
		if size += len(m.body); i > 0 && size > h.replayBytes {
			msgs, last = msgs[:i], ipc.ReplayPartial
			h.replaysPartial++
			break
		}
	}
	for {
		n, size := 0, 0
		for n < len(msgs) && (n == 0 || size+len(msgs[n].body) <= replayPiece) {
			size += len(msgs[n].body) + 16
			n++
		}
		flags := last
		if n < len(msgs) {
			flags = ipc.ReplayMore
		}
		f := ipc.AppendReplayHead(h.frame(l), j.Token, flags, gap, n)
		for _, m := range msgs[:n] {
			f = ipc.AppendBytes(ipc.AppendUvarint(f, m.id), m.body)
		}
		h.frames[l] = f
		if flags&ipc.ReplayMore != 0 || len(f) > replayPiece {
			h.flushLink(l)
		}
		if flags&ipc.ReplayMore == 0 {
			return
		}
		msgs, gap = msgs[n:], 0
	}
}

// presence applies a worker's Presence frame and answers its joins with
// replays, in one lock hold.
func (h *hub) presence(p *proc, payload []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if int(p.link) >= len(h.links) || h.links[p.link] != p {
		return nil // the link is gone
	}
	now := h.now()
	h.hist.expire(now)
	var chans []string
	pr := ipc.NewPresenceReader(payload)
	for {
		switch op := pr.Next(); op {
		case ipc.OpJoin:
			j := &pr.Join
			h.joins++
			if h.joinsFull(p.link) {
				h.frames[p.link] = ipc.AppendReplayHead(h.frame(p.link), j.Token, ipc.ReplayDeferred, 0, 0)
				h.joinsDeferred++
				continue
			}
			chans = chans[:0]
			for ch, ok := j.NextChannel(); ok; ch, ok = j.NextChannel() {
				chans = append(chans, string(ch))
			}
			msgs, lost := h.hist.replay(string(j.ID), chans, j.Since)
			h.appendReplay(p.link, j, msgs, lost)
		case ipc.OpHas:
			h.ids.add(h.ids.hash(pr.Name), p.link)
			if h.ev.ids {
				h.ev.add(evIDs, pr.Name, p.link, now)
			}
		case ipc.OpSub:
			h.chans.add(h.chans.hash(pr.Name), p.link)
			h.ev.add(evChannels, pr.Name, p.link, now)
		case ipc.OpLeave:
			h.ids.remove(h.ids.hash(pr.Name), p.link)
			if h.ev.ids {
				h.ev.remove(evIDs, pr.Name, p.link, pr.Reason, now)
			}
		case ipc.OpUnsub:
			h.chans.remove(h.chans.hash(pr.Name), p.link)
			h.ev.remove(evChannels, pr.Name, p.link, 0, now)
		case ipc.OpMemberJoin, ipc.OpMemberLeave:
			h.members.note(string(pr.Channel), string(pr.Name), op == ipc.OpMemberJoin, now)
			if op == ipc.OpMemberJoin {
				h.ev.add(evMembers, member(pr.Channel, pr.Name), p.link, now)
			} else {
				h.ev.remove(evMembers, member(pr.Channel, pr.Name), p.link, 0, now)
			}
		default:
			h.flush()
			return pr.Err()
		}
	}
}

// expire drops messages past their TTL; the manager calls it every second
// so history shrinks even when nobody publishes.
func (h *hub) expire() {
	h.mu.Lock()
	h.hist.expire(h.now())
	h.mu.Unlock()
}

// counters for stats.
func (h *hub) counters() hubCounts {
	h.mu.Lock()
	defer h.mu.Unlock()
	return hubCounts{
		Published: h.published, Retained: uint64(h.hist.retained()),
		IDs: h.ids.len(), Channels: h.chans.len(), ReplaysCut: h.replaysCut,
		Joins: h.joins, ReplaysPartial: h.replaysPartial, JoinsDeferred: h.joinsDeferred,
		HistoryBytes: uint64(h.hist.bytes), HistoryEvicted: h.hist.evicted,
		PresenceAnnounced: h.members.announced, PresenceHeld: h.members.held,
	}
}

// hubCounts is what the hub counts, for stats.
type hubCounts struct {
	Published, Retained, ReplaysCut      uint64
	Joins, ReplaysPartial, JoinsDeferred uint64
	HistoryBytes, HistoryEvicted         uint64
	PresenceAnnounced, PresenceHeld      uint64
	IDs, Channels                        int
}

// hubState is what a manager hands the one that upgrades it: the id
// sequence and every retained message, in id order.
type hubState struct {
	Seed      uint64         `json:"seed"` // of the presence hashes
	LastID    uint64         `json:"last_id"`
	Published uint64         `json:"published"`
	Messages  []stateMessage `json:"messages,omitempty"`
	Keys      []stateKey     `json:"idempotency_keys,omitempty"`
	// What history let go of, so gaps are still announced after it:
	// the newest id each ring dropped ("i:ID", "c:CHANNEL", "b"), the
	// forgotten rings' and where the history begins (history.go).
	Dropped   map[string]uint64 `json:"dropped,omitempty"`
	Forgotten uint64            `json:"forgotten,omitempty"`
	Horizon   uint64            `json:"horizon,omitempty"`
	// The announced channels' members, so a reload announces no one
	// again (members.go).
	Members map[string]map[string]uint32 `json:"members,omitempty"`
	// Events: the names held and lingering, and the events not yet
	// delivered (events.go); the workers are handoverState.Workers.
	Events *eventsState `json:"events,omitempty"`
	// Bans: POST /disconnect's bans (they outlive a reload and a
	// restart; each ends by itself).
	Bans []ipc.Disconnect `json:"bans,omitempty"`
	// Revocations: POST /revoke's (also in manager.state_dir).
	Revocations []ipc.Revoke `json:"revocations,omitempty"`
}

type stateKey struct {
	Key     string   `json:"key"`
	IDs     []uint64 `json:"ids"`
	Sum     uint64   `json:"sum"`
	Expires int64    `json:"expires"`
}

type stateMessage struct {
	ID      uint64          `json:"id"`
	Kind    byte            `json:"kind"`
	Channel string          `json:"channel,omitempty"`
	To      []string        `json:"to,omitempty"`
	Body    json.RawMessage `json:"body"`
	Expires int64           `json:"expires"` // Unix nanoseconds
	// Presence: a presence announcement, kept in its channel's presence
	// ring (history.go).
	Presence bool `json:"presence,omitempty"`
}

// snapshot captures the id sequence and the retained history, and each
// given link's ids and channels.
func (h *hub) snapshot(links []linkID) (hubState, map[linkID][2][]hashCount) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true // nothing is published after the snapshot (errHandingOver)
	st := hubState{Seed: h.ids.seed, LastID: h.lastID, Published: h.published,
		Forgotten: h.hist.forgotten, Horizon: h.hist.horizon, Dropped: h.hist.droppedMarks(), Members: h.members.conns}
	for _, d := range h.bans {
		st.Bans = append(st.Bans, d)
	}
	for _, v := range h.revs {
		st.Revocations = append(st.Revocations, v)
	}
	for _, m := range h.hist.fifo[h.hist.fifoOff:] {
		if m.body == nil {
			continue // evicted from every ring
		}
		st.Messages = append(st.Messages, stateMessage{ID: m.id, Kind: m.kind, Channel: m.channel, To: m.to, Body: m.body,
			Expires: m.expires.UnixNano(), Presence: m.presence})
	}
	for _, key := range h.idem.fifo[h.idem.off:] {
		if e := h.idem.keys[key]; e != nil {
			st.Keys = append(st.Keys, stateKey{Key: key, IDs: e.ids, Sum: e.sum, Expires: e.expires.UnixNano()})
		}
	}
	names := make(map[linkID][2][]hashCount, len(links))
	for _, l := range links {
		names[l] = [2][]hashCount{h.ids.heldBy(l), h.chans.heldBy(l)}
	}
	st.Events = &eventsState{Tables: h.ev.export(links, h.now())}
	return st, names
}

// restore takes over a predecessor's id sequence and history.
func (h *hub) restore(st *hubState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Only workers of the previous manager hold anything yet (ours wait for
	// the hub to be primed), so taking its seed keeps every hash valid.
	h.ids.seed, h.chans.seed = st.Seed, st.Seed
	h.lastID = max(h.lastID, st.LastID)
	h.published += st.Published
	for _, sm := range st.Messages {
		m := &message{id: sm.ID, kind: sm.Kind, channel: sm.Channel, to: sm.To, body: sm.Body, presence: sm.Presence && sm.Kind == kindChannel}
		h.hist.addUntil(m, time.Unix(0, sm.Expires))
	}
	for _, k := range st.Keys {
		h.idem.put(k.Key, &idemEntry{ids: k.IDs, sum: k.Sum, expires: time.Unix(0, k.Expires)})
	}
	h.hist.horizon, h.hist.forgotten = st.Horizon, max(h.hist.forgotten, st.Forgotten)
	if st.Members != nil {
		h.members.conns = st.Members
	}
	for _, d := range st.Bans {
		if h.bans == nil {
			h.bans = make(map[string]ipc.Disconnect)
		}
		h.bans[d.ID] = d
	}
	for _, v := range st.Revocations {
		if h.revs == nil {
			h.revs = make(map[string]ipc.Revoke)
		}
		h.revs[revocationKey(&v)] = v
	}
	h.hist.setDropped(st.Dropped, h.now())
}

// eventsTick tells the departures whose linger is over (all: the manager
// stops), until the state is handed over.
func (h *hub) eventsTick(all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.ev.tick(h.now(), all)
	}
}

// restoreEvents takes over a predecessor's event tables; links maps its
// workers' indexes to the links that adopted them.
func (h *hub) restoreEvents(st *eventsState, links map[int]linkID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if st != nil {
		h.ev.restore(st.Tables, links, h.now())
	}
}

// setPresence records that link holds these ids and channels.
func (h *hub) setPresence(l linkID, ids, chans []hashCount) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hc := range ids {
		h.ids.addN(hc.Hash, l, hc.Count)
	}
	for _, hc := range chans {
		h.chans.addN(hc.Hash, l, hc.Count)
	}
}
