package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/megacomet/megacomet/internal/names"
	"github.com/nats-io/nats.go/jetstream"
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

func (n *Node) consume(after uint64, deliver func([]Message), caughtUp func()) {
	select {
	case <-n.ready:
	case <-n.closing:
		return
	}
	base := n.base.Load()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if after > base {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after-base+1
	}
	ch := make(chan Message, 4*maxBatch)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		err := n.startConsumer(cfg, base, ch)
		if err == nil {
			break
		}
		n.setErr(err)
		n.log.Warn("cannot read the cluster stream yet", "err", err)
		select {
		case <-n.closing:
			return
		case <-time.After(wait):
		}
	}
	n.log.Info("reading the cluster stream", "after", after)
	// What the stream held at the start is delivered once the newest
	// message read had nothing after it, or once the stream holds nothing
	// past what was delivered (messages may expire before they are read).
	caught := false
	catchUp := func(last uint64) {
		if !caught && n.streamLast.Load() <= last {
			caught = true
			caughtUp()
		}
	}
	catchUp(after)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	batch := make([]Message, 0, maxBatch)
	for {
		select {
		case m := <-ch:
			batch = append(batch[:0], m)
		more:
			for len(batch) < maxBatch {
				select {
				case m := <-ch:
					batch = append(batch, m)
				default:
					break more
				}
			}
			deliver(batch)
			last := &batch[len(batch)-1]
			n.delivered.Store(last.ID)
			n.pending.Store(last.Pending)
			if last.Pending == 0 && !caught {
				caught = true
				caughtUp()
			}
			clear(batch) // let the bodies go
		case <-tick.C:
			if !caught && len(ch) == 0 {
				n.Refresh()
				catchUp(max(after, n.delivered.Load()))
			}
		case <-n.closing:
			return
		}
	}
}

func (n *Node) startConsumer(cfg jetstream.OrderedConsumerConfig, base uint64, ch chan<- Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := n.js.OrderedConsumer(ctx, n.cfg.Stream, cfg)
	if err != nil {
		return err
	}
	var logged time.Time
	cc, err := cons.Consume(func(m jetstream.Msg) {
		msg, ok := n.decode(m, base)
		if !ok {
			return
		}
		select {
		case ch <- msg:
		case <-n.closing:
		}
	}, jetstream.PullMaxMessages(maxBatch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		n.consumerErrs.Add(1)
		n.setErr(err)
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			n.log.Warn("reading the cluster stream: the consumer recovers by itself from the last message delivered", "err", err)
		}
	}))
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.consumer = cc
	n.mu.Unlock()
	return nil
}

// decode reads one stream message; false for one megacomet did not write
// (a subject or data it cannot deliver), which is skipped and counted.
func (n *Node) decode(m jetstream.Msg, base uint64) (Message, bool) {
	md, err := m.Metadata()
	if err != nil {
		n.foreign.Add(1)
		return Message{}, false
	}
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
	if !json.Valid(msg.Data) {
		return n.skip(msg)
	}
	return msg, true
}

// skip counts a message that is not megacomet's; its id still counts as
// delivered, so catching up does not wait for it.
func (n *Node) skip(m Message) (Message, bool) {
	n.foreign.Add(1)
	n.delivered.Store(m.ID)
	return Message{}, false
}

// Refresh asks JetStream for the stream's newest sequence (for the lag in
// stats); the manager's sampler calls it once a second.
func (n *Node) Refresh() {
	select {
	case <-n.ready:
	default:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := n.js.Stream(ctx, n.cfg.Stream)
	if err != nil {
		n.setErr(err)
		return
	}
	n.noteLast(n.base.Load() + s.CachedInfo().State.LastSeq)
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
	Foreign        uint64 `json:"foreign"` // stream messages megacomet did not write, skipped
	LastError      string `json:"last_error,omitempty"`
}

// Stats reads the link's state without I/O.
func (n *Node) Stats() Stats {
	st := Stats{Node: n.cfg.Node, Stream: n.cfg.Stream, State: strings.ToLower(n.nc.Status().String()),
		IDBase: n.base.Load(), LastID: n.streamLast.Load(), DeliveredID: n.delivered.Load(),
		Published: n.published.Load(), PublishErrors: n.publishErrors.Load(), Disconnects: n.disconnects.Load(),
		ConsumerErrors: n.consumerErrs.Load(), Foreign: n.foreign.Load()}
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
	return st
}
