package manager

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// The operator's actions on a cluster. POST /disconnect, /subscribe,
// /unsubscribe and /revoke act here (act), then tell every other node
// (cluster/control.go), which acts the same way and answers how many of
// its connections it touched; the API's answer adds them up and says how
// many nodes answered ("nodes"), and how many that were up did not
// ("nodes_missing": ask again, every action is idempotent). A node that
// starts asks a peer for the bans and revocations in force (syncCluster).

// action is one operator action, as the nodes tell each other.
type action struct {
	Disconnect *ipc.Disconnect `json:"disconnect,omitempty"`
	Channel    *channelAction  `json:"channel,omitempty"`
	Revoke     *ipc.Revoke     `json:"revoke,omitempty"`
}

type channelAction struct {
	ID        string `json:"id"`
	Channel   string `json:"channel"`
	Subscribe bool   `json:"subscribe"`
}

// actionAnswer is a node's answer to an action.
type actionAnswer struct {
	Connections uint64 `json:"connections"`
	Error       string `json:"error,omitempty"`
}

// inForce is what a starting node is given by a peer.
type inForce struct {
	Bans        []ipc.Disconnect `json:"bans"`
	Revocations []ipc.Revoke     `json:"revocations"`
}

// act applies a here and returns how many of this node's connections it
// concerns.
func (m *Manager) act(a *action) (uint64, error) {
	switch {
	case a.Disconnect != nil:
		d := a.Disconnect
		if !ipc.ValidName([]byte(d.ID)) || !printable(d.Reason, maxReasonLen) {
			return 0, fmt.Errorf("a bad disconnect")
		}
		n := m.hub.disconnect(d)
		m.tellAll(ipc.TypeDisconnect, ipc.AppendDisconnect(nil, d))
		return n, nil
	case a.Channel != nil:
		c := a.Channel
		if !ipc.ValidName([]byte(c.ID)) || !ipc.ValidName([]byte(c.Channel)) {
			return 0, fmt.Errorf("a bad channel change")
		}
		n := m.hub.connectionsOf(c.ID)
		m.tellAll(ipc.TypeChannel, ipc.AppendChannel(nil, c.Subscribe, c.ID, c.Channel))
		return n, nil
	case a.Revoke != nil:
		v := a.Revoke
		if (v.ID == "") == (v.JTI == "") || v.ID != "" && !ipc.ValidName([]byte(v.ID)) || v.JTI != "" && !printable(v.JTI, maxJTILen) {
			return 0, fmt.Errorf("a bad revocation")
		}
		n := m.hub.connectionsOf(v.ID)
		if err := m.keepRevocation(v); err != nil {
			return 0, err
		}
		end := *v
		end.End = true
		m.tellAll(ipc.TypeRevoke, ipc.AppendRevoke(nil, &end))
		return n, nil
	}
	return 0, fmt.Errorf("an empty action")
}

// actEverywhere applies a here and on every other node: the connections
// it concerns in all, and the nodes that answered and did not, for the
// API's answer. An error means it was not done here.
func (m *Manager) actEverywhere(a *action) (out map[string]any, err error) {
	n, err := m.act(a)
	if err != nil {
		return nil, err
	}
	out = map[string]any{"connections": n}
	if m.cluster == nil {
		return out, nil
	}
	body, _ := json.Marshal(a)
	answers, peers, cerr := m.cluster.Control(body)
	nodes := 1
	for _, b := range answers {
		var ans actionAnswer
		if json.Unmarshal(b, &ans) != nil || ans.Error != "" {
			m.log.Warn("a node could not apply an action", "error", ans.Error)
			continue
		}
		n += ans.Connections
		nodes++
	}
	out["connections"], out["nodes"] = n, nodes
	if missing := peers + 1 - nodes; missing > 0 || cerr != nil {
		out["nodes_missing"] = missing
		m.log.Warn("an action did not reach every node: repeat it (it is idempotent)", "nodes", nodes, "missing", missing, "err", cerr)
	}
	return out, nil
}

// answerAction is this node's answer to another node's action.
func (m *Manager) answerAction(body []byte) []byte {
	var a action
	var ans actionAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		ans.Error = "unreadable: " + err.Error()
	} else if n, err := m.act(&a); err != nil {
		ans.Error = err.Error()
	} else {
		ans.Connections = n
	}
	b, _ := json.Marshal(ans)
	return b
}

// answerSync gives a starting peer the bans and revocations in force.
func (m *Manager) answerSync() []byte {
	b, _ := json.Marshal(inForce{Bans: m.hub.bansInForce(), Revocations: m.hub.revocationsInForce()})
	return b
}

// syncWait bounds how long a starting node tries to reach a peer.
const syncWait = 30 * time.Second

// startControl answers the other nodes from now on and asks one of them
// what is in force; called once this manager serves.
func (m *Manager) startControl() {
	if m.cluster == nil {
		return
	}
	if err := m.cluster.StartControl(m.answerAction, m.answerSync); err != nil {
		m.log.Error("this node does not take the other nodes' actions", "err", err)
		return
	}
	go m.syncCluster()
}

// syncCluster takes the bans and revocations a peer has in force.
func (m *Manager) syncCluster() {
	select {
	case <-m.cluster.Ready():
	case <-time.After(syncWait):
	}
	b := m.cluster.Sync()
	var f inForce
	if b == nil || json.Unmarshal(b, &f) != nil {
		m.log.Info("no peer answered with its bans and revocations: going on with this node's")
		return
	}
	for i := range f.Bans {
		if d := &f.Bans[i]; ipc.ValidName([]byte(d.ID)) {
			m.hub.disconnect(d)
			m.tellAll(ipc.TypeDisconnect, ipc.AppendDisconnect(nil, d))
		}
	}
	for i := range f.Revocations {
		if v := &f.Revocations[i]; m.keepRevocation(v) == nil {
			m.tellAll(ipc.TypeRevoke, ipc.AppendRevoke(nil, v))
		}
	}
	m.log.Info("took a peer's bans and revocations", "bans", len(f.Bans), "revocations", len(f.Revocations))
}
