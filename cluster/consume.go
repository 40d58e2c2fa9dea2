package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/megacomet/megacomet/internal/names"
	"github.com/megacomet/megacomet/ipc"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// maxBatch bounds the messages handed to the hub at once: one lock hold.
const maxBatch = 1024

// Consume reads the stream in order, from the message after id after (0:
// everything the stream holds), and hands it to deliver in batches, one
// call at a time, until Close. caughtUp is called once, after deliver has
// had every message the stream held when reading began. It returns at
// once; reading starts when the stream is known.
func (n *Node) Consume(after uint64, deliver func([]Message), caughtUp func()) {
	go n.consume(after, deliver, caughtUp)
}

// The reader is an ephemeral pull consumer (memory, no acks) that this
// loop alone starts and restarts from the last id delivered, as nats.go's
// ordered consumer does; that one holds its lock through a reset, so a
// stats call could wait on it for as long as the reset took (75 s seen
// here after a NATS server was killed). Restarts come from the reader's
// own errors (a missed heartbeat: its server is gone), a consumer
// sequence that skipped (messages lost on a reconnect), a NATS reconnect,
// or no progress while the stream holds more.
type reader struct {
	n      *Node
	base   uint64
	ch     chan Message
	gen    atomic.Uint64 // of the consumer whose messages count
	reset  chan struct{} // a restart is wanted (1 slot)
	cc     jetstream.ConsumeContext
	seq    int
	prefix string
}

func (n *Node) consume(after uint64, deliver func([]Message), caughtUp func()) {
	select {
	case <-n.ready:
	case <-n.closing:
		return
	}
	r := &reader{n: n, base: n.base.Load(), ch: make(chan Message, 4*maxBatch), reset: make(chan struct{}, 1),
		prefix: n.cfg.Node + "-" + nuid.Next()}
	n.mu.Lock()
	n.onReconnect = r.restart
	n.mu.Unlock()
	defer r.stop()
	if !r.open(after) {
		return
	}
	n.log.Info("reading the cluster stream", "after", after)
	// What the stream held at the start is delivered once the newest
	// message read had nothing after it, or once the stream holds nothing
	// past what was delivered (messages may expire before they are read).
	caught := false
	done := func() {
		if !caught {
			caught = true
			caughtUp()
		}
	}
	if n.streamLast.Load() <= max(after, r.base) {
		done()
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	seen, movedAt := max(after, n.delivered.Load()), time.Now()
	batch := make([]Message, 0, maxBatch)
	for {
		select {
		case m := <-r.ch:
			batch = append(batch[:0], m)
		more:
			for len(batch) < maxBatch {
				select {
				case m := <-r.ch:
					batch = append(batch, m)
				default:
					break more
				}
			}
			deliver(batch)
			last := &batch[len(batch)-1]
			storeMax(&n.delivered, last.ID)
			n.noteLast(last.ID)
			n.pending.Store(last.Pending)
			if last.Pending == 0 {
				done()
			}
			clear(batch) // let the bodies go
		case <-r.reset:
			if !r.open(max(after, n.delivered.Load())) {
				return
			}
			movedAt = time.Now()
		case now := <-tick.C:
			if d := max(after, n.delivered.Load()); d != seen {
				seen, movedAt = d, now
			}
			if len(r.ch) > 0 || caught && now.Sub(movedAt) < stallAfter {
				break
			}
			held, last, err := n.streamState()
			switch {
			case err != nil:
			case held == 0 || last <= seen:
				done()
				movedAt = now // idle, not stalled: look again in stallAfter
			case now.Sub(movedAt) >= stallAfter && n.rc.IsConnected():
				n.log.Warn("the cluster stream reader made no progress: reading again from the last id delivered", "for", stallAfter.String(), "after", seen, "stream_last", last)
				n.restarts.Add(1)
				if !r.open(seen) {
					return
				}
				movedAt = now
			}
		case <-n.closing:
			return
		}
	}
}

// stallAfter is how long reading may make no progress, with messages
// in the stream past what was delivered, before it is started again.
const stallAfter = 5 * time.Second

// restart asks for the reader to be started again (from any goroutine).
func (r *reader) restart() {
	select {
	case r.reset <- struct{}{}:
	default:
	}
}

func (r *reader) stop() {
	if r.cc != nil {
		r.cc.Stop()
		r.cc = nil
	}
}

// open starts a consumer for the messages after id from, retrying until
// JetStream takes it; false once the node is closing.
func (r *reader) open(from uint64) bool {
	r.stop()
	r.gen.Add(1) // what the old one still sends is dropped
	select {
	case <-r.reset: // this is the restart asked for
	default:
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		err := r.start(from)
		if err == nil {
			return true
		}
		r.n.setErr(err)
		r.n.log.Warn("cannot read the cluster stream yet", "err", err)
		select {
		case <-r.n.closing:
			return false
		case <-time.After(wait):
		}
	}
}

func (r *reader) start(from uint64) error {
	n := r.n
	cfg := jetstream.ConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckNonePolicy,
		MemoryStorage: true,
		Replicas:      1,
		// One this loop let go of, or whose node died, goes by itself.
		InactiveThreshold: 30 * time.Second,
	}
	if from > r.base {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from-r.base+1
	}
	r.seq++
	cfg.Name = r.prefix + "-" + strconv.Itoa(r.seq)
	// Short: while a JetStream cluster elects a new meta leader (after
	// losing one: up to 20 s seen with nats-server 2.9) creates time out,
	// and the first one after it should not wait long.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cons, err := n.rjs.CreateOrUpdateConsumer(ctx, n.cfg.Stream, cfg)
	if err != nil {
		return err
	}
	if old := r.seq - 1; old > 0 {
		name := r.prefix + "-" + strconv.Itoa(old)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			n.rjs.DeleteConsumer(ctx, n.cfg.Stream, name)
			cancel()
		}()
	}
	gen := r.gen.Load()
	var cseq uint64 // the consumer sequence of the last message taken
	var logged time.Time
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if r.gen.Load() != gen {
			return
		}
		md, err := m.Metadata()
		if err != nil || md.Sequence.Consumer != cseq+1 {
			r.restart() // a message went missing on the way
			return
		}
		cseq = md.Sequence.Consumer
		msg, ok := n.decode(m, md, r.base)
		if !ok {
			return
		}
		select {
		case r.ch <- msg:
		case <-n.closing:
		}
	}, jetstream.PullMaxMessages(maxBatch),
		// A missed heartbeat is how a consumer whose server is gone is
		// noticed: after 2 s, not the default 10.
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			n.consumerErrs.Add(1)
			n.setErr(err)
			if time.Since(logged) >= 10*time.Second {
				logged = time.Now()
				n.log.Warn("reading the cluster stream: reading again from the last message delivered", "err", err)
			}
			if r.gen.Load() == gen {
				r.restart()
			}
		}))
	if err != nil {
		return err
	}
	r.cc = cc
	return nil
}

// decode reads one stream message; false for one megacomet did not write
// (a subject or data it cannot deliver), which is skipped and counted.
func (n *Node) decode(m jetstream.Msg, md *jetstream.MsgMetadata, base uint64) (Message, bool) {
	msg := Message{ID: base + md.Sequence.Stream, Time: md.Timestamp, Pending: md.NumPending, Data: m.Data()}
	rest, _ := strings.CutPrefix(m.Subject(), n.cfg.Stream+".")
	switch {
	case rest == "all":
		msg.Kind = KindBroadcast
	case strings.HasPrefix(rest, "ch."):
		msg.Kind, msg.Channel = KindChannel, rest[3:]
		if !names.Valid(msg.Channel) {
			return n.skip(msg)
		}
		msg.Presence = m.Headers().Get(headerPresence) == "1"
	case strings.HasPrefix(rest, "id."):
		msg.Kind, msg.To = KindIDs, []string{rest[3:]}
	case rest == "ids":
		msg.Kind, msg.To = KindIDs, strings.Split(m.Headers().Get(headerTo), ",")
	default:
		return n.skip(msg)
	}
	for _, id := range msg.To {
		if !names.Valid(id) {
			return n.skip(msg)
		}
	}
	if len(msg.Data) > ipc.MaxData || !json.Valid(msg.Data) {
		return n.skip(msg)
	}
	if bytes.ContainsAny(msg.Data, "\r\n") {
		// Valid JSON has line breaks only between tokens, where nobody
		// must see them: SSE and NDJSON end a message at one.
		var b bytes.Buffer
		json.Compact(&b, msg.Data)
		msg.Data = b.Bytes()
	}
	return msg, true
}

// skip counts a message that is not megacomet's; its id still counts as
// delivered, so catching up does not wait for it.
func (n *Node) skip(m Message) (Message, bool) {
	n.foreign.Add(1)
	storeMax(&n.delivered, m.ID)
	return Message{}, false
}

// Refresh asks JetStream for the stream's newest sequence (for the lag in
// stats); the manager's sampler calls it once a second.
func (n *Node) Refresh() {
	select {
	case <-n.ready:
		n.streamState()
	default:
	}
}

// streamState is how many messages the stream holds and its newest id.
func (n *Node) streamState() (held, last uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := n.js.Stream(ctx, n.cfg.Stream)
	if err != nil {
		n.setErr(err)
		return 0, 0, err
	}
	st := s.CachedInfo().State
	last = n.base.Load() + st.LastSeq
	n.noteLast(last)
	return st.Msgs, last, nil
}

// Stats is what stats and /metrics show of the link.
type Stats struct {
	Node   string `json:"node"`
	Stream string `json:"stream"`
	// State is NATS's connection state: connected, reconnecting,
	// connecting or closed; StreamReady says the stream was found.
	State       string `json:"state"`
	Server      string `json:"server,omitempty"`
	StreamReady bool   `json:"stream_ready"`
	IDBase      uint64 `json:"id_base"`
	// LastID is the newest id the stream is known to hold, DeliveredID
	// the newest this node has handed its workers; Lag the messages
	// between.
	LastID         uint64 `json:"last_id"`
	DeliveredID    uint64 `json:"delivered_id"`
	Lag            uint64 `json:"lag"`
	Published      uint64 `json:"published"`
	PublishErrors  uint64 `json:"publish_errors"`
	Disconnects    uint64 `json:"disconnects"`
	ConsumerErrors uint64 `json:"consumer_errors"`
	ReaderRestarts uint64 `json:"reader_restarts"` // readers started again for making no progress
	Foreign        uint64 `json:"foreign"`         // stream messages megacomet did not write, skipped
	LastError      string `json:"last_error,omitempty"`
	// Peers: the other megacomet processes heard from (control.go), the
	// answers an operator's action waits for; Nodes what each said of
	// itself in its last heartbeat.
	Peers int    `json:"peers"`
	Nodes []Peer `json:"nodes,omitempty"`
}

// Stats reads the link's state without I/O.
func (n *Node) Stats() Stats {
	state := n.nc.Status()
	if state == nats.CONNECTED {
		state = n.rc.Status() // the worse of the two
	}
	st := Stats{Node: n.cfg.Node, Stream: n.cfg.Stream, State: strings.ToLower(state.String()),
		IDBase: n.base.Load(), LastID: n.streamLast.Load(), DeliveredID: n.delivered.Load(),
		Published: n.published.Load(), PublishErrors: n.publishErrors.Load(), Disconnects: n.disconnects.Load(),
		ConsumerErrors: n.consumerErrs.Load(), ReaderRestarts: n.restarts.Load(), Foreign: n.foreign.Load()}
	if n.nc.IsConnected() {
		st.Server = n.nc.ConnectedUrlRedacted()
	}
	select {
	case <-n.ready:
		st.StreamReady = true
	default:
	}
	if st.LastID > st.DeliveredID && st.DeliveredID > 0 {
		st.Lag = st.LastID - st.DeliveredID
	} else if st.DeliveredID == 0 {
		st.Lag = n.pending.Load()
	}
	n.mu.Lock()
	st.LastError = n.lastErr
	n.mu.Unlock()
	st.Nodes = n.Peers()
	st.Peers = len(st.Nodes)
	return st
}
