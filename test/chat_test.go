package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
)

// Clients that talk (issue 16): WebSocket client publish.

// wsClient is a gobwas/ws client that answers pings as it reads.
type wsClient struct {
	c  net.Conn
	rw io.ReadWriter
}

func dialChat(t testing.TB, addr, path string) *wsClient {
	t.Helper()
	c, br, _, err := ws.Dial(context.Background(), "ws://"+addr+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var rw io.ReadWriter = c
	if br != nil { // frames that came with the handshake's answer
		rw = struct {
			io.Reader
			io.Writer
		}{io.MultiReader(br, c), c}
	}
	return &wsClient{c: c, rw: rw}
}

func (c *wsClient) send(t testing.TB, text string) {
	if err := wsutil.WriteClientText(c.c, []byte(text)); err != nil {
		t.Error(err)
	}
}

// frame is the next text frame's JSON: a message, an ack or an error.
type frame struct {
	msg
	Ack   uint64 `json:"ack"`
	Error string `json:"error"`
}

func (c *wsClient) next(wait time.Duration) (frame, error) {
	var f frame
	c.c.SetReadDeadline(time.Now().Add(wait))
	b, err := wsutil.ReadServerText(c.rw)
	if err != nil {
		return f, err
	}
	return f, json.Unmarshal(b, &f)
}

// 1,000 WebSocket clients in one channel each send one message: every
// client gets its ack and all 1,000 messages (10^6 deliveries), in id
// order, none lost and none twice.
func TestClientPublishChat(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "comet": "client_publish = true"})
	const n = 1000
	clients := make([]*wsClient, n)
	for i := range clients {
		clients[i] = dialChat(t, s.Listen, fmt.Sprintf("/ws/u%d?channels=room", i))
	}
	waitIDs(t, s, n)
	for i, c := range clients {
		c.send(t, fmt.Sprintf(`{"publish":"room","data":{"from":%d}}`, i))
	}
	acks := make([]uint64, n)
	got := make([][]uint64, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for len(got[i]) < n || acks[i] == 0 {
				f, err := c.next(2 * time.Minute)
				switch {
				case err != nil:
					t.Errorf("client %d after %d messages: %v", i, len(got[i]), err)
					return
				case f.Error != "":
					t.Errorf("client %d: %q", i, f.Error)
					return
				case f.Ack != 0:
					acks[i] = f.Ack
				case f.Channel != "room":
					t.Errorf("client %d: %+v", i, f)
					return
				default:
					if k := len(got[i]); k > 0 && f.ID <= got[i][k-1] {
						t.Errorf("client %d: id %d after %d: out of order or twice", i, f.ID, got[i][k-1])
						return
					}
					got[i] = append(got[i], f.ID)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	want := map[uint64]bool{}
	for _, id := range acks {
		want[id] = true
	}
	if len(want) != n {
		t.Fatalf("%d distinct acks for %d publishes", len(want), n)
	}
	for i := range clients {
		for _, id := range got[i] {
			if !want[id] {
				t.Fatalf("client %d got id %d that nobody was acked", i, id)
			}
		}
	}
	if st := s.MustStats(); st.Manager.Published != n {
		t.Errorf("published %d, want %d", st.Manager.Published, n)
	}
}

// Publishing needs the token's publish claim (with auth on); a refused
// client gets an error frame and stays; the rate limit is told, then
// closes a client that keeps going.
func TestClientPublishAllowedAndLimited(t *testing.T) {
	s := startAuthServer(t, map[string]string{"comet": "client_publish_rate = 1"})
	waitFrame := func(c *nodeClient, want string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; {
			ev, ok := c.event(time.Until(deadline))
			if !ok {
				t.Fatalf("no %s", want)
			}
			if ev.Ev == "message" && strings.Contains(ev.Data, want) {
				return
			}
		}
	}
	no := startNode(t, "ws://"+s.Listen+"/ws/nopub?token="+mintToken(t, s, "nopub"))
	no.waitOpen("")
	waitLive(t, s.API, no, "nopub")
	no.send(`{"publish":"room1","data":1}`)
	waitFrame(no, `{"error":"publish not allowed","channel":"room1"}`)
	id := publish(t, s.API, `{"to":"nopub","data":"still here"}`)[0]
	if m := next(t, no, 10*time.Second); m.ID != id {
		t.Errorf("after the refusal: %+v", m)
	}

	c := startNode(t, "ws://"+s.Listen+"/ws/pub?channels=room1&token="+mintToken(t, s, "pub", "-channels", "room*", "-publish", "room*"))
	c.waitOpen("")
	waitLive(t, s.API, c, "pub")
	c.send(`{"publish":"room1","data":"hello"}`)
	var ack, echo uint64
	for ack == 0 || echo == 0 {
		ev, ok := c.event(30 * time.Second)
		if !ok {
			t.Fatalf("ack %d, echo %d", ack, echo)
		}
		var f frame
		json.Unmarshal([]byte(ev.Data), &f)
		switch {
		case f.Ack != 0:
			ack = f.Ack
		case f.Channel == "room1" && string(f.Data) == `"hello"`:
			echo = f.ID
		}
	}
	if ack != echo {
		t.Errorf("acked %d, the channel got %d", ack, echo)
	}
	c.send(`{"publish":"other","data":1}`)
	waitFrame(c, `{"error":"publish not allowed","channel":"other"}`)

	// 1 a second after a burst of 2: a burst of 10 more is told (even
	// if a starved client took seconds to send them), then one that keeps
	// going is closed.
	for range 10 {
		c.send(`{"publish":"room1","data":"again"}`)
	}
	waitFrame(c, `{"error":"publish rate exceeded","channel":"room1"}`)
	for range 10 {
		c.send(`{"publish":"room1","data":"more"}`)
	}
	if ev := c.waitClose(30 * time.Second); ev.Code != 1008 || !strings.Contains(ev.Reason, "too many publishes") {
		t.Errorf("kept publishing past the limit: close %d %q, want 1008", ev.Code, ev.Reason)
	}
}

// With auth off, comet.client_publish decides.
func TestClientPublishOff(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1"})
	c := dialChat(t, s.Listen, "/ws/quiet")
	waitIDs(t, s, 1)
	c.send(t, `{"publish":"room","data":1}`)
	f, err := c.next(30 * time.Second)
	if err != nil || f.Error != "publish not allowed" || f.Channel != "room" {
		t.Fatalf("publish with client_publish off: %+v %v", f, err)
	}
}

// megatest -chat: its clients publish over their WebSocket, in two rooms,
// split over two processes, with tokens; every message reaches every
// member of its room once.
func TestMegatestChat(t *testing.T) {
	s := startAuthServer(t, map[string]string{"comet": "client_publish_rate = 100"})
	const n = 1000
	load := runMegatest(t, s, "m", "-transport", "ws", "-n", fmt.Sprint(n), "-channels", "2", "-procs", "2",
		"-chat", "20", "-hold", "3s", "-token-secret", clientSecret)
	raw, sum := load.wait(t, 3*time.Minute)
	chat, _ := raw["chat"].(map[string]any)
	num := func(k string) int64 { v, _ := chat[k].(float64); return int64(v) }
	t.Logf("megatest -chat: %v", chat)
	if num("acked") == 0 || num("owed") != num("acked")*n/2 || num("deliveries") != num("owed") || num("lost") != 0 || num("refused") != 0 || sum.Duplicates != 0 {
		t.Errorf("chat %v, duplicates %d: every acked message at each of its room's %d members once", chat, sum.Duplicates, n/2)
	}
}

// The README's browser chat (docs/chat.html), in headless Chromium, with a
// token: what it says reaches the room, and it shows the room's messages
// and who joined.
func TestBrowserChatExample(t *testing.T) {
	example, err := os.ReadFile("../docs/chat.html")
	if err != nil {
		t.Fatal(err)
	}
	readme, _ := os.ReadFile("../README.md")
	script := string(example[strings.Index(string(example), "<script"):])
	if !strings.Contains(string(readme), strings.TrimSpace(script)) {
		t.Fatal("README.md does not show docs/chat.html's script as it is")
	}
	s := startAuthServer(t, map[string]string{"comet": `presence_events = ["room1"]`})
	bob := dialChat(t, s.Listen, "/ws/bob?channels=room1&token="+mintToken(t, s, "bob", "-channels", "room1"))
	waitIDs(t, s, 1)
	// The test's own script, after the example's: once the page is
	// loaded it types a line (the client sends it once it is open), and
	// it reports every line the page shows.
	driver := `<script>
new MutationObserver(() => { const li = document.getElementById("log").lastChild;
  new Image().src = "/report?m=" + encodeURIComponent(li.textContent); }).observe(document.getElementById("log"), {childList: true});
addEventListener("DOMContentLoaded", () => { const say = document.getElementById("say");
  say.value = "hello from the browser"; say.dispatchEvent(new Event("change")); });
</script>`
	url, reports := page(t, strings.ReplaceAll(string(example), "localhost:8000", s.Listen)+driver, s.Listen)
	token := mintToken(t, s, "alice", "-channels", "room1", "-publish", "room1")
	chromium(t, url+"#id=alice&token="+token)
	var f frame
	for f.Channel != "room1" || !strings.Contains(string(f.Data), "hello from the browser") {
		if f, err = bob.next(30 * time.Second); err != nil {
			t.Fatalf("bob, in the room, did not get alice's message: %v", err)
		}
	}
	if string(f.Data) != `{"from":"alice","text":"hello from the browser"}` {
		t.Errorf("bob got %s", f.Data)
	}
	publish(t, s.API, `{"channel":"room1","data":{"from":"bob","text":"hi alice"}}`)
	want := map[string]bool{"alice: hello from the browser": false, "bob: hi alice": false, `{"join":"alice"}`: false}
	for deadline := time.After(30 * time.Second); slices.Contains(slices.Collect(maps.Values(want)), false); {
		select {
		case r := <-reports:
			if _, ok := want[r]; ok {
				want[r] = true
			}
		case <-deadline:
			t.Fatalf("the page showed only part of %v", want)
		}
	}
}
