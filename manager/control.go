package manager

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/megacomet/megacomet/cluster"
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

// controlMessage is what one node sends the others: an action or a
// question.
type controlMessage struct {
	Action   *action   `json:"action,omitempty"`
	Question *question `json:"question,omitempty"`
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
	body, _ := json.Marshal(controlMessage{Action: a})
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
	out["connections"] = n
	m.countNodes(out, nodes, peers, cerr, "an action did not reach every node: repeat it (it is idempotent)")
	return out, nil
}

// countNodes puts into an answer how many nodes did their part ("nodes")
// and, when some that were up did not or NATS failed, how many did not
// ("nodes_missing"), logged in one line as warn says.
func (m *Manager) countNodes(out map[string]any, nodes, peers int, err error, warn string) {
	out["nodes"] = nodes
	if missing := peers + 1 - nodes; missing > 0 || err != nil {
		out["nodes_missing"] = missing
		m.log.Warn(warn, "nodes", nodes, "missing", missing, "err", err)
	}
}

// answerControl is this node's answer to another node's action or
// question.
func (m *Manager) answerControl(body []byte) []byte {
	var c controlMessage
	var out any
	switch err := json.Unmarshal(body, &c); {
	case err != nil:
		out = actionAnswer{Error: "unreadable: " + err.Error()}
	case c.Question != nil:
		out = m.answer(c.Question)
	case c.Action != nil:
		ans := actionAnswer{}
		if n, err := m.act(c.Action); err != nil {
			ans.Error = err.Error()
		} else {
			ans.Connections = n
		}
		out = ans
	default:
		out = actionAnswer{Error: "neither an action nor a question"}
	}
	b, _ := json.Marshal(out)
	return b
}

// answerSync gives a starting peer the bans and revocations in force.
func (m *Manager) answerSync() []byte {
	b, _ := json.Marshal(inForce{Bans: m.hub.bansInForce(), Revocations: m.hub.revocationsInForce()})
	return b
}

// hello is what this node says of itself in its heartbeat.
func (m *Manager) hello() cluster.Peer {
	st := m.Snapshot()
	p := cluster.Peer{Node: m.opts.Cluster.Node, Connections: st.Connections, IDs: st.IDs}
	if st.Cluster != nil {
		p.Lag = st.Cluster.Lag
	}
	return p
}

// syncWait bounds how long a starting node tries to reach a peer.
const syncWait = 30 * time.Second

// startControl answers the other nodes from now on and asks one of them
// what is in force; called once this manager serves.
func (m *Manager) startControl() {
	if m.cluster == nil {
		return
	}
	if err := m.cluster.StartControl(m.answerControl, m.answerSync, m.hello); err != nil {
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

// Questions every node answers for its own clients: GET /presence and GET
// /channels add the other nodes' answers to this one's, so "is alice
// online?" is right whichever node she is on.

// question is a query, as the nodes ask each other.
type question struct {
	Presence *presenceQuestion `json:"presence,omitempty"`
	Channels *channelsQuestion `json:"channels,omitempty"`
	// Members asks which of these (channel, id) a node holds, and since
	// when (onceInTheCluster).
	Members []memberKey `json:"members,omitempty"`
}

type memberKey struct {
	Channel string `json:"c"`
	ID      string `json:"i"`
}

type presenceQuestion struct {
	ID      string `json:"id,omitempty"`
	Channel string `json:"channel,omitempty"`
	Limit   int    `json:"limit,omitempty"`
}

type channelsQuestion struct {
	Prefix string `json:"prefix,omitempty"`
	After  string `json:"after,omitempty"`
	Limit  int    `json:"limit"`
}

// reply is one node's answer to a question.
type reply struct {
	Node        string         `json:"node,omitempty"`
	Held        []int64        `json:"held,omitempty"` // Members: since when (unix ns), -1 not held
	Connections uint64         `json:"connections,omitempty"`
	IDs         []string       `json:"ids,omitempty"`
	Members     int            `json:"members,omitempty"`
	Channels    []channelCount `json:"channels,omitempty"`
	More        bool           `json:"more,omitempty"`
	Error       string         `json:"error,omitempty"`
}

// answer answers q for this node.
func (m *Manager) answer(q *question) (r reply) {
	switch {
	case q.Presence != nil:
		p := q.Presence
		if p.ID != "" && !ipc.ValidName(p.ID) || p.ID == "" && !ipc.ValidName(p.Channel) || p.Limit < 0 || p.Limit > channelsLimitMax {
			r.Error = "a bad presence question"
			return r
		}
		r.Connections, r.IDs, r.Members = m.hub.presenceCounts(p.ID, p.Channel, p.Limit)
	case q.Channels != nil:
		c := q.Channels
		if c.Limit < 1 || c.Limit > channelsLimitMax {
			r.Error = "a bad channels question"
			return r
		}
		r.Channels, r.More = m.hub.channelsPage(c.Prefix, c.After, c.Limit)
	case q.Members != nil:
		if len(q.Members) > maxMembersAsked {
			r.Error = "too many members asked"
			return r
		}
		r.Node, r.Held = m.opts.Cluster.Node, m.hub.memberSince(q.Members)
	default:
		r.Error = "an empty question"
	}
	return r
}

// askEverywhere answers q here and on every other node: the replies (this
// node's first) and, for the answer, how many nodes replied and how many
// that were up did not.
func (m *Manager) askEverywhere(q *question) (replies []reply, extra map[string]any) {
	replies = []reply{m.answer(q)}
	if m.cluster == nil {
		return replies, nil
	}
	body, _ := json.Marshal(controlMessage{Question: q})
	answers, peers, err := m.cluster.Control(body)
	for _, b := range answers {
		var r reply
		if json.Unmarshal(b, &r) != nil || r.Error != "" {
			continue
		}
		replies = append(replies, r)
	}
	extra = map[string]any{}
	m.countNodes(extra, len(replies), peers, err, "a question was not answered by every node: the answer counts the others")
	return replies, extra
}

// mergeChannels merges the nodes' pages (each in name order) into one of
// at most limit names, adding the counts of a name held on several nodes.
func mergeChannels(replies []reply, limit int) ([]channelCount, bool) {
	sum := make(map[string]uint32)
	more := false
	// A node that had more stops being complete past its last name: the
	// merged page may not go beyond the smallest such name.
	bound := ""
	for _, r := range replies {
		for _, c := range r.Channels {
			sum[c.Name] += c.Subscribers
		}
		if r.More && len(r.Channels) > 0 {
			if last := r.Channels[len(r.Channels)-1].Name; bound == "" || last < bound {
				bound = last
			}
		}
	}
	out := make([]channelCount, 0, len(sum))
	for name, n := range sum {
		if bound != "" && name > bound {
			more = true
			continue
		}
		out = append(out, channelCount{name, n})
	}
	slices.SortFunc(out, func(a, b channelCount) int { return strings.Compare(a.Name, b.Name) })
	if len(out) > limit {
		return out[:limit], true
	}
	return out, more || bound != ""
}

// maxMembersAsked bounds the (channel, id) pairs one window asks the other
// nodes about; past it (a flood of joins) each node announces its own.
const maxMembersAsked = 10000

// onceInTheCluster keeps, of this window's presence announcements, what
// no other node says: a join is announced by the node that has had the
// member longest (ties by node name), a leave only when no other node
// still holds the member. Alone, it changes nothing.
func (m *Manager) onceInTheCluster(ann []announcement) []announcement {
	if m.cluster == nil || len(ann) == 0 || m.cluster.Peers() == nil {
		return ann
	}
	var keys []memberKey
	for _, a := range ann {
		for _, id := range a.joins {
			keys = append(keys, memberKey{a.channel, id})
		}
		for _, id := range a.leaves {
			keys = append(keys, memberKey{a.channel, id})
		}
	}
	if len(keys) > maxMembersAsked {
		return ann
	}
	replies, _ := m.askEverywhere(&question{Members: keys})
	var others []reply
	for _, r := range replies[1:] { // replies[0] is this node's
		if len(r.Held) == len(keys) {
			others = append(others, r)
		}
	}
	self := m.opts.Cluster.Node
	elsewhere := func(k int, at int64) bool { // held by another node, from before at (at < 0: at all)
		for _, r := range others {
			h := r.Held[k]
			if h >= 0 && (at < 0 || h < at || h == at && r.Node < self) {
				return true
			}
		}
		return false
	}
	k := 0
	out := ann[:0]
	for _, a := range ann {
		var joins, leaves []string
		for j, id := range a.joins {
			if !elsewhere(k, a.joinedAt[j]) {
				joins = append(joins, id)
			}
			k++
		}
		for _, id := range a.leaves {
			if !elsewhere(k, -1) {
				leaves = append(leaves, id)
			}
			k++
		}
		if len(joins)+len(leaves) == 0 {
			continue
		}
		if len(joins) != len(a.joins) || len(leaves) != len(a.leaves) {
			a.joins, a.leaves, a.data = joins, leaves, presenceData(joins, leaves)
		}
		out = append(out, a)
	}
	return out
}

// memberSince answers a Members question: since when this node holds each
// (channel, id), -1 for those it does not.
func (h *hub) memberSince(keys []memberKey) []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]int64, len(keys))
	for i, k := range keys {
		out[i] = -1
		if h.members.conns[k.Channel][k.ID] > 0 {
			out[i] = h.members.since[k.Channel+"\x00"+k.ID]
		}
	}
	return out
}
