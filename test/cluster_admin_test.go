package test

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// waitPeers waits until a node hears n other megacomet processes: an
// operator's action waits for their answers.
func waitPeers(t *testing.T, s *testutil.Server, n int) {
	t.Helper()
	s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		if st.Cluster == nil || st.Cluster.Peers != n {
			return fmt.Errorf("cluster %+v: want %d peers", st.Cluster, n)
		}
		return nil
	})
}

// The operator's actions on a two-node cluster (real nats-server): POST
// /revoke, /disconnect and /subscribe on one node reach the id's clients
// on both, the answers count both nodes' connections, and a node that
// starts later takes the revocations and bans in force. megatest holds
// 2,000 neighbours over both nodes, publishing all along: none of them is
// disturbed.
func TestClusterOperatorActions(t *testing.T) {
	nats := testutil.StartNATS(t)
	stream := streamName()
	auth := map[string]string{"auth": fmt.Sprintf("secret = %q", clientSecret)}
	a := startCometNode(t, nats.URL, "a", stream, auth)
	b := startCometNode(t, nats.URL, "b", stream, auth)
	waitPeers(t, a, 1)
	waitPeers(t, b, 1)

	const n = 2000
	t.Setenv("MEGATEST_TOKEN_SECRET", clientSecret)
	load := runMegatestOn(t, a.Listen+","+b.Listen, a.API, "q", "-n", fmt.Sprint(n), "-pub", "100")
	waitSpread(t, n, a, b)
	load.waitMessages(t, 100)

	now := time.Now().Unix()
	old := signedToken(t, jwt.MapClaims{"sub": "alice", "iat": now - 100})
	fresh := signedToken(t, jwt.MapClaims{"sub": "alice", "iat": now})
	carol := signedToken(t, jwt.MapClaims{"sub": "carol", "iat": now})
	aliceA, _ := cometGET(t, a.Listen, "/sse/alice?token="+old)
	aliceB, _, _, err := ws.Dial(context.Background(), "ws://"+b.Listen+"/ws/alice?token="+old)
	if err != nil {
		t.Fatal(err)
	}
	defer aliceB.Close()
	carolA, _ := cometGET(t, a.Listen, "/sse/carol?token="+carol)
	carolB, _ := cometGET(t, b.Listen, "/stream/carol?token="+carol)
	onA, onB := &tail{r: carolA.Body}, &tail{r: carolB.Body}
	for _, s := range []*testutil.Server{a, b} {
		waitOnline(t, s, "alice")
		waitOnline(t, s, "carol")
	}
	wsUntil := func(what string) error {
		aliceB.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			h, err := ws.ReadHeader(aliceB)
			if err != nil {
				return fmt.Errorf("alice's WebSocket on b, waiting for %s: %v", what, err)
			}
			body := make([]byte, h.Length)
			if _, err := aliceB.Read(body); err != nil {
				return err
			}
			if h.OpCode == ws.OpClose {
				if code, reason := ws.ParseCloseFrameData(body); strings.Contains(fmt.Sprint(code, " ", reason), what) {
					return nil
				}
				return fmt.Errorf("closed (%q) before %s", body, what)
			}
			if strings.Contains(string(body), what) {
				return nil
			}
		}
	}

	// Subscribe on b: carol's connection on a joins too.
	code, body := adminPost(t, b.API, "/subscribe", `{"id":"carol","channel":"ops"}`)
	if code != 200 || body != "{\"connections\":2,\"nodes\":2}\n" {
		t.Fatalf("POST /subscribe on b: %d %q, want both of carol's connections, both nodes", code, body)
	}
	for node, tl := range map[string]*tail{"a": onA, "b": onB} {
		if err := tl.until(`{"channels":["ops"]}`); err != nil {
			t.Errorf("carol on %s: %v", node, err)
		}
	}
	id := publish(t, a.API, `{"channel":"ops","data":"to ops"}`)[0]
	for node, tl := range map[string]*tail{"a": onA, "b": onB} {
		if err := tl.until(fmt.Sprintf(`{"id":%d,"channel":"ops"`, id)); err != nil {
			t.Errorf("carol on %s: %v", node, err)
		}
	}

	// Revoke on a: alice's WebSocket on b ends as an expired token's does,
	// and b refuses the old token from then on.
	code, body = adminPost(t, a.API, "/revoke", fmt.Sprintf(`{"id":"alice","before":%d}`, now-50))
	if code != 200 || !strings.Contains(body, `"connections":2`) || !strings.Contains(body, `"nodes":2`) {
		t.Fatalf("POST /revoke on a: %d %s", code, body)
	}
	if err := readUntil(aliceA.Body, "event: expired"); err != nil {
		t.Errorf("alice on a: %v", err)
	}
	if err := wsUntil("expired"); err != nil {
		t.Error(err)
	}
	for _, s := range []*testutil.Server{a, b} {
		if got := sseStatus(t, s, "alice", old); got != "401 token revoked" {
			t.Errorf("the old token on %s: %q", s.API, got)
		}
		if got := sseStatus(t, s, "alice", fresh); got != "200" {
			t.Errorf("a newer token on %s: %q", s.API, got)
		}
	}

	// Disconnect on a with a ban: carol's stream on b ends with its last
	// line, and b refuses her.
	code, body = adminPost(t, a.API, "/disconnect", `{"id":"carol","reason":"banned","reconnect":false,"ban":600}`)
	if code != 200 || body != "{\"disconnected\":2,\"nodes\":2}\n" {
		t.Fatalf("POST /disconnect on a: %d %q", code, body)
	}
	for node, tl := range map[string]*tail{"a": onA, "b": onB} {
		if err := tl.until(`"reason":"banned","reconnect":false`); err != nil {
			t.Errorf("carol on %s: %v", node, err)
		}
	}
	if got := sseStatus(t, b, "carol", carol); got != "403 banned" {
		t.Errorf("carol coming back to b: %q", got)
	}

	// A node that starts now takes what is in force from a peer.
	c := startCometNode(t, nats.URL, "c", stream, auth)
	testutil.CheckFor(t, time.Minute, func() error {
		_, body, _ := get(t, "http://"+c.API+"/revoke")
		if !strings.Contains(body, `"id":"alice"`) {
			return fmt.Errorf("GET /revoke on the new node: %s", body)
		}
		// Its workers are told just after.
		if got := sseStatus(t, c, "alice", old); got != "401 token revoked" {
			return fmt.Errorf("the old token on the new node: %q", got)
		}
		if got := sseStatus(t, c, "carol", carol); got != "403 banned" {
			return fmt.Errorf("carol on the new node: %q", got)
		}
		return nil
	})

	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest's neighbours over two nodes: %+v", sum)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 || sum.Disconnected != 0 || sum.ConnectFailed != 0 || sum.Published == 0 {
		t.Errorf("neighbours disturbed: lost %d, duplicates %d, unexpected %d, disconnected %d, connect_failed %d (published %d)",
			sum.Lost, sum.Duplicates, sum.ClosedUnexpected, sum.Disconnected, sum.ConnectFailed, sum.Published)
	}
	for _, s := range []*testutil.Server{a, b} {
		s.WaitStats(t, time.Minute, func(st manager.Stats) error {
			if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.Revoked }); n != 1 {
				return fmt.Errorf("%s: workers ended %d revoked connections, want alice's 1", st.Cluster.Node, n)
			}
			return nil
		})
	}
}

// twoRoomNodes starts two nodes of one cluster that announce the presence
// of room* channels, each hearing the other.
func twoRoomNodes(t *testing.T) (a, b *testutil.Server) {
	t.Helper()
	nats := testutil.StartNATS(t)
	stream := streamName()
	room := map[string]string{"comet": `presence_events = ["room*"]`}
	a = startCometNode(t, nats.URL, "a", stream, room)
	b = startCometNode(t, nats.URL, "b", stream, room)
	waitPeers(t, a, 1)
	waitPeers(t, b, 1)
	return a, b
}

// On a two-node cluster every node answers for both: GET /presence of an
// id and of a channel (with its member ids), GET /channels paged across
// the nodes' names, and stats name the other node. A node killed drops out
// of the answers once its heartbeat is missed, leaving no ghost.
func TestClusterAnswersForEveryNode(t *testing.T) {
	a, b := twoRoomNodes(t)
	for _, c := range []struct {
		s    *testutil.Server
		path string
	}{
		{a, "/sse/alice?channels=c1,c3,room1"}, {b, "/sse/alice?channels=c2"},
		{b, "/sse/bob?channels=c4,room1"}, {a, "/sse/carol?channels=room1"},
	} {
		cometGET(t, c.s.Listen, c.path)
	}
	waitIDs(t, a, 2)
	waitIDs(t, b, 2)

	for _, s := range []*testutil.Server{a, b} {
		if p := presenceOf(t, s, "/presence/alice"); !p.Online || p.Connections != 2 {
			t.Errorf("%s: alice %+v, want her 2 connections, one on each node", s.API, p)
		}
		if p := presenceOf(t, s, "/presence/bob"); !p.Online || p.Connections != 1 {
			t.Errorf("%s: bob %+v, want online", s.API, p)
		}
		p := presenceOf(t, s, "/presence?channel=room1&ids=1")
		if p.Subscribers != 3 || p.Members != 3 || strings.Join(p.IDs, ",") != "alice,bob,carol" {
			t.Errorf("%s: room1 %+v, want 3 subscribers, members alice, bob and carol", s.API, p)
		}
	}
	first, got := channelsOf(t, a, "prefix=c&limit=2")
	if got != "c1:1 c2:1" || !first.More {
		t.Errorf("GET /channels?prefix=c&limit=2 on a: %q more %v, want c1:1 c2:1 and more", got, first.More)
	}
	rest, got := channelsOf(t, b, "prefix=c&limit=2&after=c2")
	if got != "c3:1 c4:1" || rest.More {
		t.Errorf("the next page, from b: %q more %v, want c3:1 c4:1 and no more", got, rest.More)
	}
	if _, got := channelsOf(t, b, "prefix=room"); got != "room1:3" {
		t.Errorf("room1 from b: %q, want its 3 subscribers over both nodes", got)
	}
	code, body, _ := get(t, "http://"+a.API+"/presence/alice")
	if code != 200 || !strings.Contains(body, `"nodes":2`) {
		t.Errorf("GET /presence/alice: %d %s, want the nodes that answered", code, body)
	}
	// What b says of itself comes with its next heartbeats.
	a.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := st.Cluster.Nodes; len(n) != 1 || n[0].Node != "b" || n[0].Connections != 2 || n[0].IDs != 2 {
			return fmt.Errorf("a's stats name its peers %+v, want b with its 2 connections of 2 ids", n)
		}
		return nil
	})

	b.Cmd.Process.Kill()
	testutil.CheckFor(t, time.Minute, func() error {
		code, body, _ := get(t, "http://"+a.API+"/presence/bob")
		if code != 200 || !strings.Contains(body, `"nodes":1,"online":false`) {
			return fmt.Errorf("bob after his node was killed: %d %s", code, body)
		}
		return nil
	})
	if p := presenceOf(t, a, "/presence/alice"); p.Connections != 1 {
		t.Errorf("alice after b was killed: %+v, want her 1 connection on a", p)
	}
}

// Presence on a cluster is announced once: alice joining on two nodes is
// one join (by the node that had her first), leaving one of them is no
// leave, and leaving the last is one leave. Each step ends with a join
// announced by the node that would have said too much, so what it did
// not say is seen.
func TestClusterPresenceOnce(t *testing.T) {
	a, b := twoRoomNodes(t)
	watch, wc := cometGET(t, a.Listen, "/sse/w?channels=room1")
	wc.SetReadDeadline(time.Now().Add(5 * time.Minute))
	events := bufio.NewReader(watch.Body)
	// upTo reads the presence messages until one says want, and returns
	// them all.
	upTo := func(want string) string {
		t.Helper()
		var seen strings.Builder
		for {
			line, err := events.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %s: %v; got %s", want, err, seen.String())
			}
			if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"presence"`) {
				seen.WriteString(line)
				if strings.Contains(line, want) {
					return seen.String()
				}
			}
		}
	}
	connections := func(id string, n uint64) {
		t.Helper()
		testutil.CheckFor(t, 30*time.Second, func() error {
			if p := presenceOf(t, a, "/presence/"+id); p.Connections != n {
				return fmt.Errorf("%s has %d connections, want %d", id, p.Connections, n)
			}
			return nil
		})
	}
	upTo(`"join":"w"`)

	_, onA := cometGET(t, a.Listen, "/sse/alice?channels=room1")
	if got := upTo(`"alice"`); !strings.Contains(got, `{"presence":{"join":"alice"}}`) {
		t.Fatalf("alice joining on a: %s", got)
	}
	_, onB := cometGET(t, b.Listen, "/sse/alice?channels=room1")
	connections("alice", 2)
	cometGET(t, b.Listen, "/sse/bob?channels=room1")
	if got := upTo(`"bob"`); strings.Contains(got, "alice") {
		t.Errorf("alice joining on b too was announced again: %s", got)
	}

	onA.Close()
	connections("alice", 1)
	cometGET(t, a.Listen, "/sse/carol?channels=room1")
	if got := upTo(`"carol"`); strings.Contains(got, "alice") {
		t.Errorf("alice leaving a while on b was announced: %s", got)
	}

	onB.Close()
	if got := upTo(`"alice"`); !strings.Contains(got, `{"presence":{"leave":"alice"}}`) {
		t.Errorf("alice leaving her last node: %s", got)
	}
	cometGET(t, b.Listen, "/sse/dave?channels=room1")
	if got := upTo(`"dave"`); strings.Contains(got, "alice") {
		t.Errorf("alice's leave was announced twice: %s", got)
	}
}
