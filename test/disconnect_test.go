package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// POST /disconnect: every connection of an id ends with its transport's
// announced close, saying why; a ban refuses it, across a reload.

// adminPost POSTs body to the API's path and returns the status and the
// answer.
func adminPost(t *testing.T, api, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+api+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDisconnectOnEveryTransport(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	sse, _ := cometGET(t, s.Listen, "/sse/alice")
	stream, _ := cometGET(t, s.Listen, "/stream/alice")
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/alice")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bob, _ := cometGET(t, s.Listen, "/sse/bob")
	lp := make(chan string, 1)
	go func() {
		out, _ := exec.Command("curl", "-s", "-w", " %{http_code}", "http://"+s.Listen+"/lp/alice").Output()
		lp <- string(out)
	}()
	testutil.CheckFor(t, 30*time.Second, func() error {
		if a := presenceOf(t, s, "/presence/alice"); a.Connections != 4 {
			return fmt.Errorf("alice has %d connections", a.Connections)
		}
		return nil
	})

	code, body := adminPost(t, s.API, "/disconnect", `{"id":"alice","reason":"banned for spam","reconnect":false,"ban":600}`)
	if code != 200 || body != "{\"disconnected\":4}\n" {
		t.Fatalf("POST /disconnect: %d %q, want 200 {\"disconnected\":4}", code, body)
	}
	if err := readUntil(sse.Body, "event: disconnect\ndata: {\"reason\":\"banned for spam\",\"reconnect\":false}\n\n"); err != nil {
		t.Errorf("SSE: %v", err)
	}
	if err := readUntil(stream.Body, `{"disconnect":{"reason":"banned for spam","reconnect":false}}`); err != nil {
		t.Errorf("stream: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, err := wsutil.ReadServerText(c)
		var closed wsutil.ClosedError
		if errors.As(err, &closed) {
			if closed.Code != 4003 || closed.Reason != "banned for spam" {
				t.Errorf("WebSocket closed %d %q, want 4003 \"banned for spam\"", closed.Code, closed.Reason)
			}
			break
		}
		if err != nil {
			t.Fatalf("WebSocket: %v", err)
		}
	}
	select {
	case out := <-lp:
		if out != `{"error":"banned for spam"}`+"\n 403" {
			t.Errorf("long-poll: %q, want 403 with the reason", out)
		}
	case <-time.After(30 * time.Second):
		t.Error("the long-poll was not answered")
	}

	// Banned: refused on every transport, and after a reload too.
	refused := func(when string) {
		t.Helper()
		for _, path := range []string{"/sse/alice", "/lp/alice", "/stream/alice"} {
			resp, _ := cometGET(t, s.Listen, path)
			refusedWith(t, when+" "+path, resp, 403, "banned for spam")
		}
		if _, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/alice"); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("%s: a WebSocket handshake of a banned id: %v, want 403", when, err)
		}
	}
	refused("banned")
	if code, body := adminPost(t, s.API, "/disconnect", `{"id":"alice","reason":"banned for spam","reconnect":false,"ban":600}`); code != 200 || !strings.Contains(body, `"disconnected":0`) {
		t.Errorf("again: %d %s, want nothing more ended", code, body)
	}
	if a := presenceOf(t, s, "/presence/bob"); a.Connections != 1 {
		t.Errorf("bob has %d connections, want his 1 untouched", a.Connections)
	}
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 0, time.Minute)
	refused("after a reload")

	// reconnect true: told so, and back at once. (The reload handed bob
	// over: he comes back.)
	bob, _ = cometGET(t, s.Listen, "/sse/bob")
	waitOnline(t, s, "bob")
	code, body = adminPost(t, s.API, "/disconnect", `{"id":"bob"}`)
	if code != 200 || !strings.Contains(body, `"disconnected":1`) {
		t.Errorf("bob: %d %s", code, body)
	}
	if err := readUntil(bob.Body, `data: {"reason":"disconnected by the server","reconnect":true}`); err != nil {
		t.Errorf("bob: %v", err)
	}
	if resp, _ := cometGET(t, s.Listen, "/sse/bob"); resp.StatusCode != 200 {
		t.Errorf("bob back: %d", resp.StatusCode)
	}
	st := statsCLI(t, s)
	if st.Manager.Disconnects != 1 {
		t.Errorf("disconnects %d on the new manager, want 1", st.Manager.Disconnects)
	}
}

// An id with connections on both workers: every one ends.
func TestDisconnectAcrossWorkers(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	var readers []*bufio.Reader
	for i := 0; ; i++ {
		resp, _ := cometGET(t, s.Listen, "/sse/carol")
		readers = append(readers, bufio.NewReader(resp.Body))
		var st manager.Stats
		testutil.CheckFor(t, time.Minute, func() error {
			st = statsCLI(t, s)
			if a := presenceOf(t, s, "/presence/carol"); a.Connections != uint64(len(readers)) || st.Connections != uint64(len(readers)) {
				return fmt.Errorf("carol has %d connections, the workers %d, want %d", a.Connections, st.Connections, len(readers))
			}
			return nil
		})
		if len(readers) >= 3 && st.Workers[0].Connections > 0 && st.Workers[1].Connections > 0 {
			break
		}
		if i == 40 {
			t.Fatalf("40 connections and not on both workers: %+v", st.Workers)
		}
	}
	code, body := adminPost(t, s.API, "/disconnect", `{"id":"carol","reason":"logged out"}`)
	if code != 200 || body != fmt.Sprintf("{\"disconnected\":%d}\n", len(readers)) {
		t.Fatalf("%d %q for %d connections", code, body, len(readers))
	}
	for i, r := range readers {
		if err := readUntil(r, `event: disconnect`+"\n"+`data: {"reason":"logged out","reconnect":true}`); err != nil {
			t.Errorf("connection %d: %v", i, err)
		}
	}
	s.WaitStats(t, time.Minute, func(st manager.Stats) error {
		var n uint64
		for _, w := range st.Workers {
			n += w.Disconnected
		}
		if n != uint64(len(readers)) || st.Connections != 0 {
			return fmt.Errorf("workers disconnected %d, %d connections left", n, st.Connections)
		}
		return nil
	})
}

// Every bad request is refused in one line.
func TestDisconnectBadRequests(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1"})
	for body, want := range map[string]string{
		`{}`:                     "id: use 1 to 64",
		`{"id":"a b"}`:           "id: use 1 to 64",
		`{"id":"a","reason":""}`: "reason: 1 to 100 printable",
		`{"id":"a","reason":"` + strings.Repeat("x", 101) + `"}`: "reason: 1 to 100 printable",
		`{"id":"a","reason":"tab\there"}`:                        "reason: 1 to 100 printable",
		`{"id":"a","ban":60}`:                                    `ban needs "reconnect":false`,
		`{"id":"a","reconnect":false,"ban":-1}`:                  "ban: 0 to 2592000 seconds",
		`{"id":"a","reconnect":false,"ban":9e9}`:                 "body must be one JSON object",
		`{"id":"a","why":"x"}`:                                   "body must be one JSON object",
		`{"id":"a"} {"id":"b"}`:                                  "body must be one JSON object",
		`[]`:                                                     "body must be one JSON object",
		`{"id":"` + strings.Repeat("a", 5000) + `"}`:             "body over 4096 bytes",
	} {
		code, got := adminPost(t, s.API, "/disconnect", body)
		var e struct{ Error string }
		if code/100 != 4 || json.Unmarshal([]byte(got), &e) != nil || !strings.HasPrefix(e.Error, want) || strings.Count(got, "\n") != 1 {
			t.Errorf("%.60s: %d %q, want a 4xx saying %q", body, code, got, want)
		}
	}
}

// megatest counts a disconnect apart, never as an unexpected close; one
// told not to come back stays away, the other comes back.
func TestDisconnectMegatest(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	trs := []string{"sse", "ws", "stream"}
	loads := map[string]*megatestRun{}
	for _, tr := range trs {
		loads[tr] = runMegatest(t, s, "d"+tr, "-n", "10", "-transport", tr)
	}
	waitHeld(t, s, 10*len(trs), time.Minute)
	for _, tr := range trs {
		letter, load := "d"+tr, loads[tr]
		for _, body := range []string{`{"id":"` + letter + `0"}`, `{"id":"` + letter + `1","reconnect":false}`} {
			if code, got := adminPost(t, s.API, "/disconnect", body); code != 200 || !strings.Contains(got, `"disconnected":1`) {
				t.Fatalf("%s: %d %s", body, code, got)
			}
		}
		testutil.CheckFor(t, time.Minute, func() error {
			if load.progress("active") != 9 || !presenceOf(t, s, "/presence/"+letter+"0").Online {
				return fmt.Errorf("%s: megatest holds %d, %s0 online %v", tr, load.progress("active"), letter, presenceOf(t, s, "/presence/"+letter+"0").Online)
			}
			return nil
		})
	}
	for _, tr := range trs {
		_, sum := loads[tr].stop(t, time.Minute)
		if sum.Disconnected != 2 || sum.ClosedUnexpected != 0 || sum.ConnectFailed != 0 {
			t.Errorf("%s: megatest disconnected %d, closed_unexpected %d, connect_failed %d; want 2, 0, 0", tr, sum.Disconnected, sum.ClosedUnexpected, sum.ConnectFailed)
		}
	}
}
