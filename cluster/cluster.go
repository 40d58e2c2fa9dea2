package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/megacomet/megacomet/config"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrUnavailable marks a publish that JetStream did not take: NATS is not
// connected, the stream is not known yet, or no ack came in time.
var ErrUnavailable = errors.New("cluster")

// Message kinds, as ipc numbers them.
const (
	KindIDs       byte = 0
	KindChannel   byte = 1
	KindBroadcast byte = 2
)

// headerTo names a multi-id message's targets; headerPresence marks a
// presence announcement ("1"), which history keeps apart.
const (
	headerTo       = "Megacomet-To"
	headerPresence = "Megacomet-Presence"
)

// Item is one message to publish.
type Item struct {
	To        []string
	Channel   string
	Broadcast bool
	Data      []byte // compact JSON
	Presence  bool   // a presence announcement (channel messages only)
}

// Message is one message read from the stream.
type Message struct {
	ID       uint64 // base + stream sequence
	Kind     byte
	To       []string
	Channel  string
	Data     []byte
	Presence bool      // a presence announcement (Item.Presence)
	Time     time.Time // when JetStream stored it
	Pending  uint64    // messages after it in the stream, when it was read
}

// Node is this node's link to the cluster.
type Node struct {
	cfg  config.Cluster
	ttl  time.Duration
	size int
	log  *slog.Logger
	nc   *nats.Conn // publishes and the stream's management
	js   jetstream.JetStream
	rc   *nats.Conn // the reader's
	rjs  jetstream.JetStream

	// minBase: ids this node issued alone go up to it, so a stream it
	// creates starts above.
	minBase uint64
	base    atomic.Uint64 // 0 until the stream is known
	ready   chan struct{} // closed once it is
	closing chan struct{}

	ctl control // control.go

	mu      sync.Mutex
	lastErr string
	// onReconnect restarts the reader after NATS reconnects: pulls in
	// flight on the old connection are lost, and with them messages.
	onReconnect func()

	published     atomic.Uint64
	publishErrors atomic.Uint64
	disconnects   atomic.Uint64
	consumerErrs  atomic.Uint64
	restarts      atomic.Uint64 // readers started again for making no progress
	foreign       atomic.Uint64
	streamLast    atomic.Uint64 // newest id the stream is known to hold
	delivered     atomic.Uint64 // newest id handed to the hub
	pending       atomic.Uint64 // of the newest message read
}

// Connect starts the link: it returns at once, connected or not; the
// connection and the stream come when NATS is reachable. Only options that
// can never work (a credentials file that is not there) are errors.
func Connect(cfg config.Cluster, historyTTL time.Duration, historySize int, minBase uint64, log *slog.Logger) (*Node, error) {
	n := &Node{cfg: cfg, ttl: historyTTL, size: historySize, minBase: minBase,
		log: log.With("node", cfg.Node, "stream", cfg.Stream), ready: make(chan struct{}), closing: make(chan struct{})}
	// Two connections: publishing's acks and the reader's messages each
	// have their own socket and reader goroutine. On one, a node that
	// published 7.7k messages/s read back only 5.4k/s and fell behind
	// without end (make cluster-bench).
	var err error
	if n.nc, n.js, err = n.dial("publish", nil); err != nil {
		return nil, err
	}
	if n.rc, n.rjs, err = n.dial("read", func() {
		n.mu.Lock()
		f := n.onReconnect
		n.mu.Unlock()
		if f != nil {
			f()
		}
	}); err != nil {
		n.nc.Close()
		return nil, err
	}
	go n.findStream()
	return n, nil
}

// dial opens one connection to NATS, in the background if it is not
// reachable yet; reconnected runs after each reconnect.
func (n *Node) dial(role string, reconnected func()) (*nats.Conn, jetstream.JetStream, error) {
	cfg := &n.cfg
	log := n.log.With("connection", role)
	opts := []nats.Option{
		nats.Name("megacomet " + cfg.Node + " " + role),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A publish made while disconnected fails at once rather than
		// waiting in a buffer and landing after the API answered 503.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			n.disconnects.Add(1)
			log.Warn("NATS disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("NATS reconnected", "server", c.ConnectedUrlRedacted())
			if reconnected != nil {
				reconnected()
			}
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			log.Info("NATS connected", "server", c.ConnectedUrlRedacted())
		}),
	}
	auth, err := authOptions(cfg)
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(strings.Join(cfg.NATS, ","), append(opts, auth...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.nats: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("cluster: %w", err)
	}
	return nc, js, nil
}

func authOptions(c *config.Cluster) ([]nats.Option, error) {
	var o []nats.Option
	if c.Creds != "" {
		o = append(o, nats.UserCredentials(c.Creds))
	}
	if c.NKey != "" {
		opt, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("cluster.nkey: %w", err)
		}
		o = append(o, opt)
	}
	if c.User != "" {
		o = append(o, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		o = append(o, nats.Token(c.Token))
	}
	if c.TLSCA != "" {
		o = append(o, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		o = append(o, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return o, nil
}

// Close ends the link.
func (n *Node) Close() {
	select {
	case <-n.closing:
		return
	default:
	}
	close(n.closing)
	n.nc.Close()
	n.rc.Close()
}

// Ready is closed once the stream is known.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// findStream finds or creates the stream, retrying until NATS answers.
func (n *Node) findStream() {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		err := n.ensureStream()
		if err == nil {
			close(n.ready)
			n.log.Info("cluster stream ready", "id_base", n.base.Load(), "last_id", n.streamLast.Load())
			return
		}
		n.setErr(err)
		select {
		case <-n.closing:
			return
		case <-time.After(wait):
		}
	}
}

// descPrefix starts the stream description that carries the id base.
const descPrefix = "megacomet message ids = sequence + "

func (n *Node) streamConfig(base uint64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              n.cfg.Stream,
		Description:       descPrefix + strconv.FormatUint(base, 10),
		Subjects:          []string{n.cfg.Stream + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            n.ttl,
		MaxMsgsPerSubject: int64(n.size),
		Duplicates:        n.ttl,
		Storage:           jetstream.FileStorage,
		Replicas:          n.cfg.Replicas,
	}
}

func (n *Node) ensureStream() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	base := max(uint64(time.Now().UnixMicro()), n.minBase+1)
	s, err := n.js.CreateStream(ctx, n.streamConfig(base))
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, err = n.js.Stream(ctx, n.cfg.Stream)
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", n.cfg.Stream, err)
	}
	info := s.CachedInfo()
	b, ok := strings.CutPrefix(info.Config.Description, descPrefix)
	base, err = strconv.ParseUint(b, 10, 64)
	if !ok || err != nil {
		return fmt.Errorf("stream %s was not made by megacomet: its description does not give the id base (%q)", n.cfg.Stream, info.Config.Description)
	}
	want := n.streamConfig(base)
	if c := info.Config; c.MaxAge != want.MaxAge || c.MaxMsgsPerSubject != want.MaxMsgsPerSubject || c.Duplicates != want.Duplicates {
		// The last node to start sets the limits; they should agree.
		want.Replicas = c.Replicas
		if _, err := n.js.UpdateStream(ctx, want); err != nil {
			n.log.Warn("the stream's limits differ from this node's history_ttl / history_size and could not be updated", "err", err)
		} else {
			n.log.Warn("the stream's limits were updated to this node's history_ttl / history_size", "max_age", c.MaxAge.String(), "max_msgs_per_subject", c.MaxMsgsPerSubject)
		}
	}
	n.base.Store(base)
	n.noteLast(base + info.State.LastSeq)
	if n.minBase > base+info.State.LastSeq {
		n.log.Warn("this node issued ids, alone, above the cluster's: its clients that hold such cursors miss messages until the cluster's ids pass them",
			"node_mark", n.minBase, "cluster_last", base+info.State.LastSeq)
	}
	return nil
}

func (n *Node) noteLast(id uint64) { storeMax(&n.streamLast, id) }

// storeMax raises a to v, never lowers it.
func storeMax(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

func (n *Node) setErr(err error) {
	n.mu.Lock()
	n.lastErr = err.Error()
	n.mu.Unlock()
}

// subject is where it goes in the stream.
func (n *Node) subject(it *Item) string {
	switch {
	case it.Broadcast:
		return n.cfg.Stream + ".all"
	case it.Channel != "":
		return n.cfg.Stream + ".ch." + it.Channel
	case len(it.To) == 1:
		return n.cfg.Stream + ".id." + it.To[0]
	}
	return n.cfg.Stream + ".ids"
}

// unavailable says why nothing can be published now, or nil.
func (n *Node) unavailable() error {
	if st := n.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("%w: NATS is not connected (%s): retry", ErrUnavailable, strings.ToLower(st.String()))
	}
	select {
	case <-n.ready:
		return nil
	default:
		return fmt.Errorf("%w: the JetStream stream %s is not reachable yet: retry", ErrUnavailable, n.cfg.Stream)
	}
}

// publishChunk bounds the acks awaited at once.
const publishChunk = 1024

// Publish puts items into the stream and returns their ids once JetStream
// acked every one. With an idempotency key, JetStream's de-duplication
// (Nats-Msg-Id, for comet.history_ttl) makes a resend on any node answer
// the first ids: replayed is then true.
func (n *Node) Publish(items []Item, key string) (ids []uint64, replayed bool, err error) {
	if err := n.unavailable(); err != nil {
		n.publishErrors.Add(1)
		return nil, false, err
	}
	ids = make([]uint64, len(items))
	replayed = key != ""
	base := n.base.Load()
	futures := make([]jetstream.PubAckFuture, 0, min(len(items), publishChunk))
	for start := 0; start < len(items); start += publishChunk {
		futures = futures[:0]
		for i := start; i < min(start+publishChunk, len(items)); i++ {
			it := &items[i]
			m := nats.NewMsg(n.subject(it))
			m.Data = it.Data
			if !it.Broadcast && it.Channel == "" && len(it.To) > 1 {
				m.Header.Set(headerTo, strings.Join(it.To, ","))
			}
			if it.Presence && it.Channel != "" {
				m.Header.Set(headerPresence, "1")
			}
			var opts []jetstream.PublishOpt
			if key != "" {
				id := key
				if len(items) > 1 {
					id += "#" + strconv.Itoa(i)
				}
				opts = append(opts, jetstream.WithMsgID(id))
			}
			f, err := n.js.PublishMsgAsync(m, opts...)
			if err != nil {
				n.publishErrors.Add(1)
				return nil, false, fmt.Errorf("%w: publishing to JetStream: %v: retry", ErrUnavailable, err)
			}
			futures = append(futures, f)
		}
		timeout := time.NewTimer(n.cfg.PublishTimeout.D())
		for j, f := range futures {
			select {
			case ack := <-f.Ok():
				ids[start+j] = base + ack.Sequence
				n.noteLast(ids[start+j])
				replayed = replayed && ack.Duplicate
			case err := <-f.Err():
				timeout.Stop()
				n.publishErrors.Add(1)
				return nil, false, fmt.Errorf("%w: JetStream did not take the message: %v: retry", ErrUnavailable, err)
			case <-timeout.C:
				n.publishErrors.Add(1)
				return nil, false, fmt.Errorf("%w: no ack from JetStream within cluster.publish_timeout (%s): retry (an Idempotency-Key makes the retry safe)", ErrUnavailable, n.cfg.PublishTimeout.D())
			}
		}
		timeout.Stop()
	}
	n.published.Add(uint64(len(items)))
	return ids, replayed, nil
}
