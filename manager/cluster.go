package manager

import (
	"errors"
	"time"

	"github.com/megacomet/megacomet/cluster"
	"github.com/megacomet/megacomet/ipc"
)

// With [cluster] nats set, publishes go to the shared JetStream stream
// (cluster/) instead of straight to the hub, and the hub takes its
// messages, ids already assigned, from the node's reading of the stream:
// deliverStream below. Everything after that - history, routing, replays,
// gaps - is the single-node path.

// startCluster connects this node; reading starts in readCluster, once the
// hub holds what it serves from.
func (m *Manager) startCluster() error {
	if !m.opts.Cluster.On() {
		return nil
	}
	// Ids this node issued alone go up to its mark: a stream it creates
	// starts above them.
	n, err := cluster.Connect(m.opts.Cluster, m.opts.Comet.HistoryTTL.D(), m.opts.Comet.HistorySize, m.idMark, m.log)
	if err != nil {
		return err
	}
	m.cluster = n
	m.hub.seqIDs = true
	return nil
}

// clusterWait is how long a starting node waits for the cluster stream
// before it starts its workers anyway.
const clusterWait = 5 * time.Second

// awaitCluster waits, a little, for the stream, so the workers start
// knowing the newest id: a connection without a cursor starts there. A
// node whose NATS is down still starts; its first clients then start from
// the oldest id it knows, and get what the stream still holds for them.
func (m *Manager) awaitCluster() {
	if m.cluster == nil {
		return
	}
	select {
	case <-m.cluster.Ready():
	case <-time.After(clusterWait):
		m.log.Warn("the cluster stream is not reachable yet: starting the workers anyway; publishes are refused until it is", "waited", clusterWait.String())
	}
}

// clusterLast is the newest id the stream is known to hold, 0 when alone.
func (m *Manager) clusterLast() uint64 {
	if m.cluster == nil {
		return 0
	}
	return m.cluster.Stats().LastID
}

// readCluster starts reading the stream. After a hand-over the hub holds
// the predecessor's history and goes on from its last id; on a fresh start
// it reads everything the stream holds, and is primed once it has.
func (m *Manager) readCluster(restored bool) {
	if restored {
		m.cluster.Consume(m.hub.last(), m.deliverStream, func() {})
		return
	}
	m.hub.priming(true)
	m.cluster.Consume(0, m.deliverStream, func() {
		m.hub.priming(false)
		m.log.Info("caught up with the cluster stream", "last_id", m.hub.last(), "retained", m.hub.counters().Retained)
		close(m.hub.primed)
	})
}

// deliverStream hands a batch read from the stream to the hub, once no
// worker is behind: reading waits (JetStream keeps the rest) where a
// single node would answer publishes 503, and a worker that does not catch
// up is killed after manager.worker_stall_timeout as there.
func (m *Manager) deliverStream(msgs []cluster.Message) {
	for p, _ := m.behind(); p != nil; p, _ = m.behind() {
		time.Sleep(10 * time.Millisecond)
	}
	m.hub.deliverStream(msgs)
}

// publishCluster publishes through the stream: ids come with JetStream's
// acks, the messages reach this node's clients when it reads them back.
func (m *Manager) publishCluster(items []pubItem, key string, sum uint64) ([]uint64, bool, error) {
	if key != "" {
		if ids, ok, err := m.hub.idemLookup(key, sum); ok || err != nil {
			return ids, ok, err
		}
	}
	cis := make([]cluster.Item, len(items))
	for i, it := range items {
		cis[i] = cluster.Item{To: it.to, Channel: it.channel, Broadcast: it.broadcast, Data: it.data, Presence: it.presence}
	}
	ids, replayed, err := m.cluster.Publish(cis, key)
	if err != nil {
		return nil, false, err
	}
	if key != "" {
		m.hub.idemPut(key, sum, ids)
	}
	return ids, replayed, nil
}

func isUnavailable(err error) bool { return errors.Is(err, cluster.ErrUnavailable) }

// deliverStream takes a batch read from the stream: kept for replay and
// routed as a local publish is. Ids at or below the last one taken are
// skipped (the stream is read once; this guards a re-read). After the
// snapshot of a hand-over nothing is taken: the successor reads on from
// the snapshot's last id.
func (h *hub) deliverStream(msgs []cluster.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	now := h.now()
	h.hist.expire(now)
	took := false
	for i := range msgs {
		cm := &msgs[i]
		if cm.ID <= h.lastID {
			continue
		}
		if h.prime != nil {
			h.prime.note(cm)
		}
		h.lastID, took = cm.ID, true
		m := &message{id: cm.ID, kind: cm.Kind, to: cm.To, channel: cm.Channel, body: renderMessage(cm.ID, cm.Channel, cm.Data), presence: cm.Presence}
		h.hist.addUntil(m, cm.Time.Add(h.hist.ttl))
		h.route(m)
		h.published++
	}
	if !took || now.Sub(h.tickedAt) < tickEvery {
		h.flush()
		return
	}
	// Every worker learns the newest id, even one that held none of its
	// targets: a connection without a cursor starts there (ids are no
	// clock here). A message record for no ids is that, to any worker.
	h.tickedAt = now
	for l, p := range h.links {
		if p != nil {
			f := ipc.AppendMsgHead(h.frame(linkID(l)), h.lastID, kindIDs, "")
			h.frames[l] = ipc.AppendBytes(ipc.AppendUvarint(f, 0), nil)
		}
	}
	h.flush()
}

// tickEvery bounds how often every worker is told the newest id: a frame
// per worker per batch read was most of a reading node's system calls
// (make cluster-bench profile). A connection without a cursor may then
// start up to this long back, and get those messages for it again from
// history - never fewer.
const tickEvery = 5 * time.Millisecond

// priming marks the start and the end of reading the whole stream on a
// fresh start: what the stream let go before it is announced as a gap
// (primer).
func (h *hub) priming(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on {
		h.prime = &primer{}
		return
	}
	if h.prime != nil {
		h.prime.done(h)
		h.prime = nil
	}
}

// primer notes what a fresh start reads, so that a cursor from before what
// the stream still holds gets a gap: older than the first message read
// (the rest aged out), or older than a subject's oldest when the stream
// held as many as comet.history_size of it (older ones were let go).
type primer struct {
	first      uint64
	multi      int    // messages to several ids: one subject for them all
	multiFirst uint64 // the oldest of them
}

func (p *primer) note(m *cluster.Message) {
	if p.first == 0 {
		p.first = m.ID
	}
	if m.Kind == kindIDs && len(m.To) > 1 {
		if p.multi++; p.multiFirst == 0 {
			p.multiFirst = m.ID
		}
	}
}

func (p *primer) done(h *hub) {
	hs := h.hist
	switch {
	case p.first > 0:
		hs.horizon = max(hs.horizon, p.first-1)
	default:
		hs.horizon = max(hs.horizon, h.lastID) // nothing was left
	}
	if p.multi >= hs.size {
		hs.horizon = max(hs.horizon, p.multiFirst-1)
	}
	full := func(r *ring) {
		if r.n >= hs.size {
			r.dropped = max(r.dropped, r.front().id-1)
		}
	}
	for _, r := range hs.byID {
		full(r)
	}
	for _, r := range hs.byChan {
		full(r)
	}
	full(&hs.bcast)
}

// idemLookup answers a publish's Idempotency-Key from this node's memory
// of it: ok with the first answer's ids, or errIdemMismatch.
func (h *hub) idemLookup(key string, sum uint64) (ids []uint64, ok bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	h.idem.expire(now)
	return h.idemFind(key, sum, now)
}

func (h *hub) idemPut(key string, sum uint64, ids []uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.idem.put(key, &idemEntry{ids: ids, sum: sum, expires: h.now().Add(h.idem.ttl)})
}

// clusterStats is the link's state for stats, nil when alone.
func (m *Manager) clusterStats() *cluster.Stats {
	if m.cluster == nil {
		return nil
	}
	st := m.cluster.Stats()
	return &st
}

// refreshCluster is the sampler's once-a-second look at the stream.
func (m *Manager) refreshCluster() {
	if m.cluster != nil {
		m.cluster.Refresh()
	}
}
