package manager

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
)

// Client publish: a WebSocket client's {"publish":"CHANNEL","data":…},
// checked by its worker (the token's publish claim or
// comet.client_publish, the rate limit, the size) and sent as a
// TypePublish frame. It takes the API's path - ids, history, routing, the
// cluster stream - and is answered with a RecAck for the connection. One
// goroutine per worker link publishes them in the order they came, so a
// client's messages keep their order, and the link's reader never waits
// on JetStream.

// clientPubQueue bounds the client publishes waiting for one link's
// publisher; past it they are refused as busy.
const clientPubQueue = 4096

type clientPub struct {
	token   uint32
	channel string
	data    []byte
	id      string // the publishing client's
}

// takeClientPublish queues a TypePublish frame.
func (m *Manager) takeClientPublish(p *proc, payload []byte) {
	token, ch, data, id, err := ipc.ParsePublish(payload)
	if err != nil || !ipc.ValidName(ch) {
		m.log.Error("bad publish frame from worker", "slot", p.slot.idx, "pid", p.pid, "err", err)
		return
	}
	var buf bytes.Buffer
	if json.Compact(&buf, data) != nil {
		m.ack(p, token, 0, "data is not JSON")
		return
	}
	select {
	case p.pubs <- clientPub{token, string(ch), buf.Bytes(), string(id)}:
	default:
		m.clientPubRefused.Add(1)
		m.ack(p, token, 0, "the server is busy: retry")
	}
}

// runClientPublishes publishes link p's client messages until it is gone.
func (m *Manager) runClientPublishes(p *proc) {
	for {
		select {
		case cp := <-p.pubs:
			ids, err := m.publishItems([]pubItem{{channel: cp.channel, data: cp.data}})
			if err != nil {
				m.clientPubRefused.Add(1)
				m.ack(p, cp.token, 0, "the server could not publish it: retry")
				continue
			}
			m.clientPublished.Add(1)
			m.ack(p, cp.token, ids[0], "")
			if m.events != nil && m.opts.Hooks.EventsPublish {
				m.events.Add(hooks.Event{Type: "publish", Time: time.Now().UnixMilli(), ID: cp.id, Channel: cp.channel, Message: ids[0], Data: cp.data})
			}
		case <-p.readDone:
			return
		}
	}
}

// errWorkerBehind: a worker has not taken what it was sent.
var errWorkerBehind = errors.New("a worker is behind")

// publishItems publishes as the API does, without an idempotency key.
func (m *Manager) publishItems(items []pubItem) ([]uint64, error) {
	if m.cluster != nil {
		ids, _, err := m.publishCluster(items, "", 0)
		return ids, err
	}
	if p, _ := m.behind(); p != nil {
		return nil, errWorkerBehind
	}
	ids, _, err := m.hub.publish(items, "", 0)
	return ids, err
}

// ack answers a client publish on its worker's link.
func (m *Manager) ack(p *proc, token uint32, id uint64, reason string) {
	m.tell(p, func(dst []byte) []byte {
		f, start := ipc.Begin(dst, ipc.TypeDeliver)
		return ipc.End(ipc.AppendAck(f, token, id, reason), start)
	})
}
