package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Operator actions (POST /disconnect, /subscribe, /unsubscribe, /revoke)
// must reach every node, but they are not messages: they take no id and
// nothing replays them. They travel over core NATS, outside the stream,
// on subjects beside it:
//
//	STREAM-ctl.hello   each node's heartbeat, every helloEvery
//	STREAM-ctl.act     one action, answered by every other node
//	STREAM-ctl.sync    a starting node asks one peer what is in force
//
// The heartbeats tell a node how many peers are up, so Control waits for
// that many answers (or cluster.publish_timeout), not for a guess. A
// process is one peer: its name is the node's plus a random suffix, so
// the two managers of a reload are two peers until the old one says bye.

const (
	helloEvery = time.Second
	// peerGone: a peer not heard from for this long is no longer waited
	// for.
	peerGone = 3 * helloEvery
	// headerOrigin names the sending process; a node ignores its own.
	headerOrigin = "Megacomet-Origin"
	headerBye    = "Megacomet-Bye"
)

// control is the state of the control subjects.
type control struct {
	self  string // this process: node name and a random suffix
	hello func() Peer
	mu    sync.Mutex
	peers map[string]peer // by origin
	subs  []*nats.Subscription
	stop  chan struct{}
}

// Peer is what a node says of itself in its heartbeat, for stats.
type Peer struct {
	Node        string `json:"node"`
	Connections uint64 `json:"connections"`
	IDs         int    `json:"ids"`
	Lag         uint64 `json:"lag"`
	// HeardMs: how long ago this node last heard it (filled by Peers).
	HeardMs int64 `json:"heard_ms"`
}

type peer struct {
	seen time.Time
	Peer
}

func (n *Node) ctlSubject(what string) string { return n.cfg.Stream + "-ctl." + what }

// StartControl answers the other nodes' actions with act(body) and their
// sync requests with sync(), and starts the heartbeat, which says hello().
// It is called once this process serves (after a reload's hand-over).
func (n *Node) StartControl(act func(body []byte) []byte, sync func() []byte, hello func() Peer) error {
	var rnd [6]byte
	rand.Read(rnd[:])
	c := &n.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop != nil {
		return nil
	}
	c.self = n.cfg.Node + "-" + hex.EncodeToString(rnd[:])
	c.peers = make(map[string]peer)
	c.hello = hello
	c.stop = make(chan struct{})
	answer := func(f func(*nats.Msg) []byte) nats.MsgHandler {
		return func(m *nats.Msg) {
			if m.Header.Get(headerOrigin) == c.self || m.Reply == "" {
				return
			}
			if err := m.Respond(f(m)); err != nil {
				n.log.Warn("a cluster action was not answered", "err", err)
			}
		}
	}
	for _, s := range []struct {
		what string
		h    nats.MsgHandler
	}{
		{"hello", n.heard},
		{"act", answer(func(m *nats.Msg) []byte { return act(m.Data) })},
		{"sync", answer(func(*nats.Msg) []byte { return sync() })},
	} {
		sub, err := n.nc.Subscribe(n.ctlSubject(s.what), s.h)
		if err != nil {
			return fmt.Errorf("cluster: subscribing to %s: %w", n.ctlSubject(s.what), err)
		}
		c.subs = append(c.subs, sub)
	}
	go n.sayHello(c.stop)
	return nil
}

// StopControl says bye to the peers and stops answering: a reload's old
// manager, once the new one serves.
func (n *Node) StopControl() {
	c := &n.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop == nil {
		return
	}
	close(c.stop)
	for _, s := range c.subs {
		s.Unsubscribe()
	}
	c.subs = nil
	m := nats.NewMsg(n.ctlSubject("hello"))
	m.Header.Set(headerOrigin, c.self)
	m.Header.Set(headerBye, "1")
	n.nc.PublishMsg(m)
	n.nc.Flush()
}

func (n *Node) sayHello(stop chan struct{}) {
	m := nats.NewMsg(n.ctlSubject("hello"))
	m.Header.Set(headerOrigin, n.ctl.self)
	t := time.NewTicker(helloEvery)
	defer t.Stop()
	for {
		m.Data, _ = json.Marshal(n.ctl.hello())
		n.nc.PublishMsg(m) // fails while disconnected; the next tick tries again
		select {
		case <-stop:
			return
		case <-n.closing:
			return
		case <-t.C:
		}
	}
}

// heard notes a peer's heartbeat, or forgets it when it says bye.
func (n *Node) heard(m *nats.Msg) {
	c := &n.ctl
	origin := m.Header.Get(headerOrigin)
	if origin == "" || origin == c.self {
		return
	}
	p := peer{seen: time.Now()}
	json.Unmarshal(m.Data, &p.Peer) // what it says of itself, for stats only
	c.mu.Lock()
	if m.Header.Get(headerBye) != "" {
		delete(c.peers, origin)
	} else {
		c.peers[origin] = p
	}
	c.mu.Unlock()
}

// Peers lists the other processes heard from within peerGone, by node
// name; the others are forgotten.
func (n *Node) Peers() []Peer {
	c := &n.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Peer
	for origin, p := range c.peers {
		age := time.Since(p.seen)
		if age > peerGone {
			delete(c.peers, origin)
			continue
		}
		p.HeardMs = age.Milliseconds()
		out = append(out, p.Peer)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// Control tells every other node of an action and returns their answers,
// with how many peers were up: fewer answers than peers means some did not
// answer within cluster.publish_timeout (or NATS is down: err).
func (n *Node) Control(body []byte) (answers [][]byte, peers int, err error) {
	peers = len(n.Peers())
	if peers == 0 {
		return nil, 0, nil
	}
	inbox := nats.NewInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, peers, fmt.Errorf("cluster: %w", err)
	}
	defer sub.Unsubscribe()
	m := nats.NewMsg(n.ctlSubject("act"))
	m.Reply, m.Data = inbox, body
	m.Header.Set(headerOrigin, n.ctl.self)
	if err := n.nc.PublishMsg(m); err != nil {
		return nil, peers, fmt.Errorf("cluster: telling the other nodes: %w", err)
	}
	deadline := time.Now().Add(n.cfg.PublishTimeout.D())
	for len(answers) < peers {
		r, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		answers = append(answers, r.Data)
	}
	return answers, peers, nil
}

// Sync asks one peer for what is in force (sync's answer there), waiting
// up to cluster.publish_timeout; nil when no peer answers.
func (n *Node) Sync() []byte {
	m := nats.NewMsg(n.ctlSubject("sync"))
	m.Header.Set(headerOrigin, n.ctl.self)
	r, err := n.nc.RequestMsg(m, n.cfg.PublishTimeout.D())
	if err != nil {
		return nil
	}
	return r.Data
}
