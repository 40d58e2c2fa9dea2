package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
)

// POST /subscribe and /unsubscribe move every live connection of an id
// into and out of a channel; each is told its channels.
func TestSubscribeFromTheServer(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1s\""})
	sseResp, _ := cometGET(t, s.Listen, "/sse/alice")
	streamResp, _ := cometGET(t, s.Listen, "/stream/alice")
	sse, stream := &tail{r: sseResp.Body}, &tail{r: streamResp.Body}
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/alice")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testutil.CheckFor(t, 30*time.Second, func() error {
		if a := presenceOf(t, s, "/presence/alice"); a.Connections != 3 {
			return fmt.Errorf("alice has %d connections", a.Connections)
		}
		return nil
	})
	wsNext := func(want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			msg, err := wsutil.ReadServerText(c)
			if err != nil {
				t.Fatalf("WebSocket, waiting for %s: %v", want, err)
			}
			if strings.Contains(string(msg), want) {
				return
			}
		}
	}

	before := publish(t, s.API, `{"channel":"news","data":"before"}`)[0]
	code, body := adminPost(t, s.API, "/subscribe", `{"id":"alice","channel":"news"}`)
	if code != 200 || body != "{\"connections\":3}\n" {
		t.Fatalf("POST /subscribe: %d %q", code, body)
	}
	// Told first, then what the channel had since the connection's last
	// message (its cursor), then what comes.
	if err := sse.until("event: channels\ndata: {\"channels\":[\"news\"]}\n\n"); err != nil {
		t.Errorf("SSE: %v", err)
	}
	if err := stream.until(`{"channels":["news"]}`); err != nil {
		t.Errorf("stream: %v", err)
	}
	wsNext(`{"channels":["news"]}`)
	after := publish(t, s.API, `{"channel":"news","data":"after"}`)[0]
	for _, id := range []uint64{before, after} {
		want := fmt.Sprintf(`{"id":%d,"channel":"news"`, id)
		if err := sse.until(want); err != nil {
			t.Errorf("SSE: %v", err)
		}
		if err := stream.until(want); err != nil {
			t.Errorf("stream: %v", err)
		}
		wsNext(want)
	}
	if _, got := channelsOf(t, s, "prefix=news"); got != "news:3" {
		t.Errorf("GET /channels: %q", got)
	}
	if code, body := adminPost(t, s.API, "/subscribe", `{"id":"alice","channel":"news"}`); code != 200 || !strings.Contains(body, `"connections":3`) {
		t.Errorf("again: %d %s", code, body)
	}

	code, _ = adminPost(t, s.API, "/unsubscribe", `{"id":"alice","channel":"news"}`)
	if code != 200 {
		t.Fatalf("POST /unsubscribe: %d", code)
	}
	wsNext(`{"channels":[]}`)
	if err := sse.until("event: channels\ndata: {\"channels\":[]}\n\n"); err != nil {
		t.Errorf("SSE: %v", err)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		if _, got := channelsOf(t, s, "prefix=news"); got != "" {
			return fmt.Errorf("GET /channels: %q after the unsubscribe", got)
		}
		return nil
	})
	publish(t, s.API, `{"channel":"news","data":"not for alice"}`)
	direct := publish(t, s.API, `{"to":"alice","data":"direct"}`)[0]
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	msg, err := wsutil.ReadServerText(c)
	if err != nil || !strings.Contains(string(msg), fmt.Sprintf(`"id":%d`, direct)) {
		t.Errorf("after the unsubscribe the next message is %s (%v), want the direct one", msg, err)
	}

	// After a reload, on the new workers, with megatest: told, and not a
	// protocol error.
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 0, time.Minute)
	load := runMegatest(t, s, "sb", "-n", "5")
	waitHeld(t, s, 5, time.Minute)
	if code, body := adminPost(t, s.API, "/subscribe", `{"id":"sb0","channel":"extra"}`); code != 200 || !strings.Contains(body, `"connections":1`) {
		t.Errorf("after a reload: %d %s", code, body)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		if _, got := channelsOf(t, s, "prefix=extra"); got != "extra:1" {
			return fmt.Errorf("GET /channels: %q", got)
		}
		return nil
	})
	_, sum := load.stop(t, time.Minute)
	if sum.ChannelNotices != 1 || sum.ProtocolErrors != 0 || sum.ClosedUnexpected != 0 {
		t.Errorf("megatest: channel notices %d, protocol errors %d, closed unexpected %d; want 1, 0, 0", sum.ChannelNotices, sum.ProtocolErrors, sum.ClosedUnexpected)
	}
	if st := statsCLI(t, s); st.Manager.ChannelChanges != 1 {
		t.Errorf("channel_changes %d on the new manager, want 1", st.Manager.ChannelChanges)
	}

	for body, want := range map[string]string{
		`{"id":"alice"}`:                 "channel: use 1 to 64",
		`{"channel":"news"}`:             "id: use 1 to 64",
		`{"id":"a","channel":"a,b"}`:     "channel: use 1 to 64",
		`{"id":"a","channel":"b","x":1}`: "body must be one JSON object",
	} {
		for _, path := range []string{"/subscribe", "/unsubscribe"} {
			code, got := adminPost(t, s.API, path, body)
			var e struct{ Error string }
			if code != 400 || json.Unmarshal([]byte(got), &e) != nil || !strings.HasPrefix(e.Error, want) {
				t.Errorf("%s %s: %d %q, want 400 saying %q", path, body, code, got, want)
			}
		}
	}
}

// tail reads a stream for what it waits for, keeping what came after it
// for the next wait.
type tail struct {
	r    io.Reader
	seen []byte
}

func (t *tail) until(want string) error {
	buf := make([]byte, 4096)
	for {
		if i := bytes.Index(t.seen, []byte(want)); i >= 0 {
			t.seen = t.seen[i+len(want):]
			return nil
		}
		n, err := t.r.Read(buf)
		t.seen = append(t.seen, buf[:n]...)
		if err != nil && !bytes.Contains(t.seen, []byte(want)) {
			return fmt.Errorf("%q never came; got %q (%v)", want, t.seen, err)
		}
	}
}
