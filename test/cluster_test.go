package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Nodes over NATS JetStream (issue 15): real Debian nats-server processes
// on loopback, real megacomet nodes sharing one stream, clients and
// megatest that see only HTTP.

// startCometNode starts a megacomet node of the cluster that urls reach.
func startCometNode(t *testing.T, urls, name, stream string, extra map[string]string) *testutil.Server {
	t.Helper()
	cfg := map[string]string{"server": "workers = 2", "cluster": fmt.Sprintf("nats = %q\nnode = %q\nstream = %q", urls, name, stream)}
	for k, v := range extra {
		if k == "cluster" {
			v = cfg[k] + "\n" + v
		}
		cfg[k] = v
	}
	s := testutil.Start(t, cfg)
	waitCluster(t, s)
	return s
}

// waitCluster waits until a node is connected to NATS and has read the
// whole stream.
func waitCluster(t *testing.T, s *testutil.Server) manager.Stats {
	t.Helper()
	return s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		c := st.Cluster
		if c == nil {
			return fmt.Errorf("no cluster in stats")
		}
		if c.State != "connected" || !c.StreamReady || c.Lag != 0 {
			return fmt.Errorf("cluster %s, stream ready %v, lag %d", c.State, c.StreamReady, c.Lag)
		}
		return nil
	})
}

// waitSpread waits until the nodes hold n connections between them, each
// some: megatest spread them and every one is answered.
func waitSpread(t *testing.T, n uint64, nodes ...*testutil.Server) {
	t.Helper()
	testutil.CheckFor(t, 3*time.Minute, func() error {
		var sum uint64
		var each []uint64
		for _, s := range nodes {
			c := s.MustStats().Connections
			sum, each = sum+c, append(each, c)
			if c == 0 {
				return fmt.Errorf("a node holds none: %v of %d", each, n)
			}
		}
		if sum != n {
			return fmt.Errorf("the nodes hold %v of %d", each, n)
		}
		return nil
	})
}

func streamName() string { return fmt.Sprintf("t%d", rand.Uint32()) }

// The first case: a message published on node A reaches a client on node
// B, whatever its target, with the id A answered.
func TestClusterPublishOnAReachesB(t *testing.T) {
	nats := testutil.StartNATS(t)
	stream := streamName()
	a := startCometNode(t, nats.URL, "a", stream, nil)
	b := startCometNode(t, nats.URL, "b", stream, nil)
	onB := openStream(t, b.Listen, "/sse/x?channels=news")
	onA := openStream(t, a.Listen, "/sse/y")
	waitIDs(t, b, 1)
	waitIDs(t, a, 1)

	var want []uint64
	want = append(want, publish(t, a.API, `{"to":"x","data":"to x"}`)...)
	want = append(want, publish(t, a.API, `{"channel":"news","data":"news"}`)...)
	want = append(want, publish(t, b.API, `{"broadcast":true,"data":"all"}`)...)
	want = append(want, publish(t, a.API, `{"to":["x","y"],"data":"x and y"}`)...)
	for i, id := range want {
		if m := next(t, onB, 30*time.Second); m.ID != id {
			t.Fatalf("client on B: message %d has id %d, want %d (%s)", i, m.ID, id, m.Data)
		}
	}
	for _, id := range want[2:] {
		if m := next(t, onA, 30*time.Second); m.ID != id {
			t.Fatalf("client on A: id %d, want %d (%s)", m.ID, id, m.Data)
		}
	}
	for _, s := range []*testutil.Server{a, b} {
		st := s.MustStats()
		if st.Cluster.DeliveredID != want[3] || st.Cluster.LastID < want[3] {
			t.Errorf("%s: delivered_id %d, last_id %d; want %d", st.Cluster.Node, st.Cluster.DeliveredID, st.Cluster.LastID, want[3])
		}
		code, body, _ := get(t, "http://"+s.API+"/metrics")
		if code != 200 || !strings.Contains(body, "megacomet_cluster_connected 1") || !strings.Contains(body, "megacomet_cluster_lag_messages 0") {
			t.Errorf("/metrics: %d, no cluster state:\n%s", code, body)
		}
	}
	if st := a.MustStats(); st.Cluster.Published != 3 {
		t.Errorf("node a published %d into the stream, want 3", st.Cluster.Published)
	}
}

// waitIDs waits until a node's manager knows n ids: its clients are
// subscribed.
func waitIDs(t *testing.T, s *testutil.Server, n int) {
	t.Helper()
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if st.IDs != n {
			return fmt.Errorf("%d ids subscribed, want %d", st.IDs, n)
		}
		return nil
	})
}

// A client that moves from A to B with its cursor receives exactly what
// it missed, on every transport; one whose cursor is older than the stream
// holds is told of a gap, on a node that read it live and on one that
// started after.
func TestClusterCursorMovesToB(t *testing.T) {
	nats := testutil.StartNATS(t)
	stream := streamName()
	comet := map[string]string{"comet": "history_size = 5"}
	a := startCometNode(t, nats.URL, "a", stream, comet)
	b := startCometNode(t, nats.URL, "b", stream, comet)
	for _, tr := range []string{"sse", "stream", "lp", "ws"} {
		t.Run(tr, func(t *testing.T) {
			id := "mv-" + tr
			var ids []uint64
			for i := range 3 {
				ids = append(ids, publish(t, a.API, fmt.Sprintf(`{"to":%q,"data":%d}`, id, i))...)
			}
			seen := firstItems(t, a, tr, id, ids[0]-1, 3)
			cursor := seen[2].ID
			// Missed: two published on A, two on B, and one more after.
			for i := 3; i < 8; i++ {
				api := a.API
				if i%2 == 1 {
					api = b.API
				}
				ids = append(ids, publish(t, api, fmt.Sprintf(`{"to":%q,"data":%d}`, id, i))...)
			}
			// history_size is 5: exactly the 5 it missed, then nothing
			// twice (the next item would be a repeat or a gap).
			got := firstItems(t, b, tr, id, cursor, 5)
			for i, m := range got {
				if m.Gap != nil || m.ID != ids[3+i] {
					t.Fatalf("on B after cursor %d: item %d is %+v, want id %d; all: %+v", cursor, i, m, ids[3+i], got)
				}
			}
			// An older cursor: the stream keeps 5 of this id, so a gap
			// comes before them.
			old := firstItems(t, b, tr, id, ids[0], 6)
			if old[0].Gap == nil || old[0].Gap.After != ids[0] || old[0].Gap.Before != ids[3] || old[1].ID != ids[3] {
				t.Fatalf("cursor %d older than the stream holds: got %+v, want a gap (%d, %d) and then id %d", ids[0], old, ids[0], ids[3], ids[3])
			}
		})
	}
	// A node that starts now reads the stream as it is: the same gap.
	c := startCometNode(t, nats.URL, "c", stream, comet)
	old := firstItems(t, c, "sse", "mv-sse", 0, 2)
	if old[0].Gap == nil || old[1].ID == 0 {
		t.Fatalf("on a node started later, cursor 0: %+v, want a gap, then the oldest kept", old)
	}
}

// Killing node A's manager (SIGKILL: its workers follow it) loses nothing
// for the clients that reconnect to B, which megatest does as a browser
// behind a load balancer would: A refuses, so it tries B, with its cursor.
func TestClusterNodeKilledLosesNothing(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel)
	nats := testutil.StartNATS(t)
	stream := streamName()
	a := startCometNode(t, nats.URL, "a", stream, nil)
	b := startCometNode(t, nats.URL, "b", stream, nil)
	const n = 2000
	load := runMegatestOn(t, a.Listen+","+b.Listen, b.API, "k", "-n", fmt.Sprint(n), "-pub", "200")
	waitSpread(t, n, a, b)
	load.waitMessages(t, 200)
	a.Cmd.Process.Kill()
	waitHeld(t, b, n, 3*time.Minute)
	before := load.progress("msgs")
	load.waitMessages(t, before+200) // publishing goes on
	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest over two nodes, one killed: %+v", sum)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 || sum.Published == 0 {
		t.Errorf("lost %d, duplicates %d, publish_errors %d: all must be 0; published %d", sum.Lost, sum.Duplicates, sum.PublishErrors, sum.Published)
	}
}

// NATS stopped for 5 s: publishes are answered 503 with the reason, no
// node crashes, the clients stay connected, and delivery resumes by
// itself with nothing missing.
func TestClusterNATSOutage(t *testing.T) {
	nats := testutil.StartNATS(t)
	stream := streamName()
	a := startCometNode(t, nats.URL, "a", stream, nil)
	b := startCometNode(t, nats.URL, "b", stream, nil)
	c := openStream(t, b.Listen, "/sse/o")
	waitIDs(t, b, 1)
	want := publish(t, a.API, `{"to":"o","data":"before"}`)
	if m := next(t, c, 30*time.Second); m.ID != want[0] {
		t.Fatalf("got %d, want %d", m.ID, want[0])
	}
	want = append(want, publish(t, a.API, `{"to":"o","data":"just before"}`)...)

	nats.Stop()
	down := time.Now()
	refused := 0
	for time.Since(down) < 5*time.Second {
		status, body, err := tryPost(a.API, `{"to":"o","data":"during"}`)
		switch {
		case err != nil:
			t.Fatal(err)
		case status == 200:
			continue // not noticed yet
		case status != 503 || !strings.Contains(body, "NATS") || strings.Count(body, "\n") > 0:
			t.Fatalf("publish with NATS down: %d %q; want 503 and one line naming NATS", status, body)
		}
		refused++
		time.Sleep(100 * time.Millisecond)
	}
	if refused == 0 {
		t.Fatal("no publish was refused while NATS was down")
	}
	for _, s := range []*testutil.Server{a, b} {
		select {
		case <-s.Exited():
			t.Fatalf("a node exited with NATS down:\n%s", s.Log.String())
		default:
		}
		if st := s.MustStats(); st.Cluster.State == "connected" || st.Cluster.PublishErrors == 0 && s == a {
			t.Errorf("%s with NATS down: %+v", st.Cluster.Node, st.Cluster)
		}
	}
	select {
	case <-c.done:
		t.Fatal("the client on B was disconnected while NATS was down")
	default:
	}

	nats.Start()
	for _, s := range []*testutil.Server{a, b} {
		testutil.CheckFor(t, time.Minute, func() error {
			ids, err := tryPublish(s.API, `{"to":"o","data":"after"}`)
			if err != nil {
				return err
			}
			want = append(want, ids...)
			return nil
		})
	}
	for _, id := range want[1:] {
		if m := next(t, c, 30*time.Second); m.ID != id {
			t.Fatalf("after the outage: id %d (%s), want %d", m.ID, m.Data, id)
		}
	}
	waitCluster(t, a)
	waitCluster(t, b)
}

// A JetStream cluster of three nats-server with the stream on all three:
// megatest holds 2,000 connections over two nodes and publishes while
// the NATS server node A is connected to is killed. Nothing is lost, and
// nothing arrives twice.
func TestClusterLosesANATSServer(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 connections, three nats-server")
	}
	testutil.Sysctl(t, testutil.DefaultKernel)
	servers := testutil.StartNATSCluster(t, 3)
	stream := streamName()
	rep := map[string]string{"cluster": "replicas = 3"}
	a := startCometNode(t, testutil.URLs(servers), "a", stream, rep)
	b := startCometNode(t, testutil.URLs(servers), "b", stream, rep)
	const n = 2000
	load := runMegatestOn(t, a.Listen+","+b.Listen, a.API, "r", "-n", fmt.Sprint(n), "-pub", "300")
	waitSpread(t, n, a, b)
	load.waitMessages(t, 300)
	victim := a.MustStats().Cluster.Server
	for _, s := range servers {
		if s.URL == victim {
			s.Kill()
		}
	}
	before := load.progress("msgs")
	load.waitMessages(t, before+600) // publishing goes on through the others
	for _, s := range []*testutil.Server{a, b} {
		waitCluster(t, s) // both read all the stream again
	}
	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest over two nodes, NATS server %s killed: %+v", victim, sum)

	if sum.Lost != 0 || sum.Duplicates != 0 || sum.Published == 0 || sum.ConnectFailed != 0 {
		t.Errorf("lost %d, duplicates %d, connect_failed %d: all must be 0; published %d", sum.Lost, sum.Duplicates, sum.ConnectFailed, sum.Published)
	}
	for _, s := range []*testutil.Server{a, b} {
		st := waitCluster(t, s)
		if st.Cluster.Server == victim {
			t.Errorf("%s still names the killed server %s", st.Cluster.Node, victim)
		}
	}
}

// A node reloaded (SIGHUP) goes on from its predecessor's position; one
// stopped and started again reads its history back from the stream. Over
// both, megatest's clients - spread over the two nodes, moving to the
// other while one is away - lose nothing and get nothing twice.
func TestClusterNodeReloadAndRestart(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	nats := testutil.StartNATS(t)
	stream := streamName()
	a := startCometNode(t, nats.URL, "a", stream, map[string]string{"server": "workers = 2\ndrain = \"1s\""})
	port, apiPort := testutil.FreePort(t), testutil.FreePort(t)
	fixed := map[string]string{
		"server": fmt.Sprintf("workers = 2\nlisten = \"127.0.0.1:%d\"", port),
		"api":    fmt.Sprintf("listen = \"127.0.0.1:%d\"", apiPort),
	}
	b := startCometNode(t, nats.URL, "b", stream, fixed)
	const n = 2000
	load := runMegatestOn(t, a.Listen+","+b.Listen, a.API, "h", "-n", fmt.Sprint(n), "-pub", "200")
	waitSpread(t, n, a, b)
	load.waitMessages(t, 200)

	a.Signal(syscall.SIGHUP)
	waitGeneration(t, a, 2, 0, 0, 2*time.Minute)
	waitSpread(t, n, a, b) // every client is back, wherever it went
	load.waitMessages(t, load.progress("msgs")+200)
	// The new manager read on from the id its predecessor handed over.
	reads := regexp.MustCompile(`"reading the cluster stream" .*after=(\d+)`).FindAllStringSubmatch(a.Log.String(), -1)
	if len(reads) != 2 || reads[0][1] != "0" || reads[1][1] == "0" {
		t.Errorf("the reloaded node should read on from its predecessor's last id:\n%s", a.Log.String())
	}

	b.Stop()
	load.waitMessages(t, load.progress("msgs")+200) // its clients went to a
	b2 := startCometNode(t, nats.URL, "b", stream, fixed)
	testutil.CheckFor(t, time.Minute, func() error { // its log arrives through a pipe
		if !strings.Contains(b2.Log.String(), "caught up with the cluster stream") {
			return fmt.Errorf("the restarted node did not say it read the stream")
		}
		return nil
	})
	if st := b2.MustStats(); st.Manager.Retained == 0 {
		t.Errorf("the restarted node holds no history: %+v", st.Manager)
	}
	load.waitMessages(t, load.progress("msgs")+200)
	for _, s := range []*testutil.Server{a, b2} {
		waitCluster(t, s)
	}
	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest across a reload and a restart: %+v", sum)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 || sum.Published == 0 {
		t.Errorf("lost %d, duplicates %d, publish_errors %d: all must be 0; published %d", sum.Lost, sum.Duplicates, sum.PublishErrors, sum.Published)
	}
}

// What another writer puts into the stream reaches clients only as
// megacomet would have written it: JSON with line breaks between its
// tokens is compacted (a raw newline would end an NDJSON line or an SSE
// data field in the middle of the message), and data past the API's
// 256 KiB limit is skipped and counted as foreign.
func TestClusterStreamDataCompactedAndBounded(t *testing.T) {
	nsrv := testutil.StartNATS(t)
	stream := streamName()
	a := startCometNode(t, nsrv.URL, "a", stream, nil)
	c, err := net.Dial("tcp", a.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /stream/x?channels=news HTTP/1.0\r\n\r\n") // NDJSON, one message a line
	waitIDs(t, a, 1)

	nc, err := nats.Connect(nsrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"{\"a\":\r\n  [1,\n 2]}", `"` + strings.Repeat("x", 256<<10) + `"`} {
		if _, err := js.Publish(context.Background(), stream+".ch.news", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	last := publish(t, a.API, `{"channel":"news","data":"after"}`)[0]

	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	var lines []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		if !strings.HasPrefix(line, "{") {
			continue // the answer's head, heartbeats
		}
		line = strings.TrimSuffix(line, "\n")
		lines = append(lines, line[:min(len(line), 200)]) // the oversized one, if it came, shown in part
		if strings.Contains(line, `"after"`) {
			break
		}
	}
	want := []string{fmt.Sprintf(`{"id":%d,"channel":"news","data":{"a":[1,2]}}`, last-2), fmt.Sprintf(`{"id":%d,"channel":"news","data":"after"}`, last)}
	if !slices.Equal(lines, want) {
		t.Errorf("NDJSON lines %q, want %q", lines, want)
	}
	if st := a.MustStats(); st.Cluster.Foreign != 1 {
		t.Errorf("foreign %d, want 1: the oversized message", st.Cluster.Foreign)
	}
}
