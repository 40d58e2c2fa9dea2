package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	jsclient "github.com/megacomet/megacomet/clients/js"
	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// megacomet.js (clients/js) in headless Chromium, loaded from the worker's
// GET /megacomet.js by a page of another origin, as an app would.

// jsPage defines start(name, options): a client whose messages, gaps,
// states and token fetches the test reads as c[name].
const jsPage = `<!doctype html><meta charset="utf-8"><title>megacomet.js</title>
<script type="module">
import { Megacomet } from "http://WORKER/megacomet.js";
window.c = {};
window.start = (name, o) => {
  const r = c[name] = {got: [], gaps: [], states: [], errors: [], tokens: 0};
  if (o.tokenURL) {
    const u = o.tokenURL;
    o.token = async () => { r.tokens++; return (await fetch(u)).text(); };
  }
  r.mc = new Megacomet("http://WORKER", o);
  r.mc.on("message", m => r.got.push(m.id)).on("gap", g => r.gaps.push(g))
    .on("state", s => r.states.push(s.state + " " + s.transport)).on("error", e => r.errors.push(e));
  return "started";
};
window.ready = true;
</script>`

// jsHarness is a server, a page from another origin that loads the client
// from it, and Chromium on that page.
type jsHarness struct {
	t *testing.T
	s *testutil.Server
	p *cdpPage
}

func startJS(t *testing.T, extra map[string]string) *jsHarness {
	t.Helper()
	if extra["server"] == "" {
		extra["server"] = "workers = 2"
	}
	s := testutil.Start(t, extra)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, strings.ReplaceAll(jsPage, "WORKER", s.Listen))
	})
	// /token?id=ID&ttl=D: what an app's token endpoint does, with the
	// tests' secret.
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		ttl, _ := time.ParseDuration(r.URL.Query().Get("ttl"))
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": r.URL.Query().Get("id"), "exp": time.Now().Add(ttl).Unix(),
		}).SignedString([]byte(clientSecret))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", "*")
		fmt.Fprint(w, tok)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	h := &jsHarness{t: t, s: s, p: openCDP(t, srv.URL+"/")}
	h.waitJS(30*time.Second, "window.ready === true", "the page did not load /megacomet.js")
	return h
}

// waitJS polls a page expression until it is true.
func (h *jsHarness) waitJS(wait time.Duration, expr, what string) {
	h.t.Helper()
	testutil.CheckFor(h.t, wait, func() error {
		if h.p.eval("!!("+expr+")") != "true" {
			return fmt.Errorf("%s (%s); page errors: %v", what, expr, h.p.consoleErrors())
		}
		return nil
	})
}

// start starts client name with options o (JSON) and waits until it is open.
func (h *jsHarness) start(name, o string) {
	h.t.Helper()
	if got := h.p.eval(fmt.Sprintf("start(%q, %s)", name, o)); got != "started" {
		h.t.Fatalf("start(%s): %q; page errors: %v", name, got, h.p.consoleErrors())
	}
	h.waitJS(30*time.Second, fmt.Sprintf("c[%q].mc.state == 'open'", name), name+" did not open")
}

// ids is what client name has received, in order.
func (h *jsHarness) ids(name string) []uint64 {
	h.t.Helper()
	var out []uint64
	if err := json.Unmarshal([]byte(h.p.eval(fmt.Sprintf("JSON.stringify(c[%q].got)", name))), &out); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// field is JSON.stringify(c[name].f).
func (h *jsHarness) field(name, f string) string {
	return h.p.eval(fmt.Sprintf("JSON.stringify(c[%q].%s)", name, f))
}

// waitExactly waits until client name has received as many messages as
// want, then checks they are want: each once, in order, none missing.
func (h *jsHarness) waitExactly(name string, want []uint64, wait time.Duration) {
	h.t.Helper()
	testutil.CheckFor(h.t, wait, func() error {
		if got := h.ids(name); len(got) < len(want) {
			return fmt.Errorf("%s received %d of %d messages; states %s", name, len(got), len(want), h.field(name, "states"))
		}
		return nil
	})
	if got := h.ids(name); !slices.Equal(got, want) {
		h.t.Errorf("%s received %d messages, not the %d published exactly once in order:\n got %v\nwant %v", name, len(got), len(want), got, want)
	}
}

// publishTo publishes n messages to id and channel ch in turn (all to id
// when ch is ""), each request safe to resend across a reload, pausing
// every between them.
func publishTo(t *testing.T, api, id, ch string, n int, every time.Duration) []uint64 {
	t.Helper()
	var ids []uint64
	for i := 0; i < n; i++ {
		body := fmt.Sprintf(`{"to":%q,"data":%d}`, id, i)
		if i%2 == 1 && ch != "" {
			body = fmt.Sprintf(`{"channel":%q,"data":%d}`, ch, i)
		}
		out, err := tryPublish(api, body, "Idempotency-Key", id+"-"+strconv.Itoa(i)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, out[0])
		time.Sleep(every) // a publisher's pace, not a wait for the server
	}
	return ids
}

// waitServing waits until the manager of generation gen has its workers
// of that generation ready.
func waitServing(t *testing.T, s *testutil.Server, gen uint64, workers int) manager.Stats {
	t.Helper()
	return s.WaitStats(t, 60*time.Second, func(st manager.Stats) error {
		if st.Generation != gen || len(st.Workers) != workers {
			return fmt.Errorf("generation %d with %d workers, want %d with %d", st.Generation, len(st.Workers), gen, workers)
		}
		for _, w := range st.Workers {
			if w.Generation != gen || w.State != "ready" {
				return fmt.Errorf("worker %d: generation %d %s", w.PID, w.Generation, w.State)
			}
		}
		return nil
	})
}

// On each transport forced in turn, 300 messages (to the client's id and
// its channel) published while the server takes two reloads and loses a
// worker to SIGKILL arrive exactly once and in order.
func TestJSClientAcrossReloadsAndWorkerKill(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	h := startJS(t, map[string]string{"server": "workers = 2\ndrain = \"1500ms\"", "comet": "history_size = 1000"})
	for _, tr := range []string{"ws", "sse", "lp"} {
		t.Run(tr, func(t *testing.T) {
			h.t = t
			id, ch := "js-"+tr, "news-"+tr
			h.start(tr, fmt.Sprintf(`{id: %q, channels: [%q], transports: [%q]}`, id, ch, tr))
			var sent []uint64
			batch := func() { sent = append(sent, publishTo(t, h.s.API, id, ch, 50, 10*time.Millisecond)...) }
			// Two reloads, each with messages published while it runs;
			// the next comes once the old processes are gone, so the
			// client has been handed over.
			for range 2 {
				batch()
				old := h.s.MustStats()
				syscall.Kill(old.Manager.PID, syscall.SIGHUP)
				batch()
				waitServing(t, h.s, old.Generation+1, 2)
				waitGone(t, old)
			}
			// The worker that holds the client (a long-poll's too, while
			// its poll is held).
			var victim manager.WorkerStats
			h.s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
				for _, w := range st.Workers {
					if w.Connections > 0 {
						victim = w
						return nil
					}
				}
				return fmt.Errorf("no worker holds the client")
			})
			syscall.Kill(victim.PID, syscall.SIGKILL)
			batch() // while the worker is replaced: 250 so far
			h.s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
				if w := st.Workers[victim.Slot]; w.PID == victim.PID || w.State != "ready" {
					return fmt.Errorf("slot %d: pid %d %s", victim.Slot, w.PID, w.State)
				}
				return nil
			})
			batch()
			if len(sent) != 300 {
				t.Fatalf("published %d", len(sent))
			}
			h.waitExactly(tr, sent, 60*time.Second)
			var states []string
			json.Unmarshal([]byte(h.field(tr, "states")), &states)
			for _, s := range states {
				if !strings.HasSuffix(s, " "+tr) {
					t.Errorf("forced to %s, the client went %q", tr, s)
				}
			}
			// A long-poll may see nothing: a draining worker answers its
			// held poll, and Chromium resends a request that a dead
			// worker's idle keep-alive connection never answered.
			if tr != "lp" && !slices.Contains(states, "reconnecting "+tr) {
				t.Errorf("the client never reconnected: %v", states)
			}
			t.Logf("%s: %d messages exactly once in order; states %v", tr, len(sent), states)
		})
	}
}

// With WebSocket not served (server.transports), the client falls back to
// SSE by itself, and messages published from before it started to after
// it settled arrive exactly once.
func TestJSClientFallsBackToSSE(t *testing.T) {
	h := startJS(t, map[string]string{"server": "workers = 2\ntransports = [\"sse\", \"lp\"]"})
	first := publishTo(t, h.s.API, "js-fb", "news-fb", 20, 0)
	if got := h.p.eval(`start("fb", {id: "js-fb", channels: ["news-fb"], since: 0})`); got != "started" {
		t.Fatalf("start: %q", got)
	}
	during := publishTo(t, h.s.API, "js-fb", "news-fb", 40, 10*time.Millisecond)
	h.waitJS(30*time.Second, `c.fb.mc.state == "open" && c.fb.mc.transport == "sse"`, "the client did not settle on sse")
	after := publishTo(t, h.s.API, "js-fb", "news-fb", 20, 0)
	h.waitExactly("fb", slices.Concat(first, during, after), 30*time.Second)
	var states []string
	json.Unmarshal([]byte(h.field("fb", "states")), &states)
	if len(states) < 3 || states[0] != "connecting ws" || states[len(states)-1] != "open sse" || slices.Contains(states, "open ws") {
		t.Errorf("states %v, want connecting ws … open sse", states)
	}
}

// A 2 s token is refreshed (the token function called again) each time
// it expires, on every transport, with nothing lost: published to for
// long enough that each client refreshes three times.
func TestJSClientRefreshesItsToken(t *testing.T) {
	h := startJS(t, map[string]string{"auth": fmt.Sprintf("secret = %q", clientSecret)})
	trs := []string{"ws", "sse", "lp"}
	for _, tr := range trs {
		id := "js-tok-" + tr
		h.start(tr, fmt.Sprintf(`{id: %q, transports: [%q], tokenURL: "/token?id=%s&ttl=2s"}`, id, tr, id))
	}
	sent := map[string][]uint64{}
	refreshed := func() bool {
		for _, tr := range trs {
			if n, _ := strconv.Atoi(h.p.eval(fmt.Sprintf("c[%q].tokens", tr))); n < 4 {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(90 * time.Second); !refreshed(); {
		if time.Now().After(deadline) {
			t.Fatalf("tokens fetched: ws %s, sse %s, lp %s; want 4 each", h.field("ws", "tokens"), h.field("sse", "tokens"), h.field("lp", "tokens"))
		}
		for _, tr := range trs {
			sent[tr] = append(sent[tr], publish(t, h.s.API, fmt.Sprintf(`{"to":"js-tok-%s","data":%d}`, tr, len(sent[tr])))...)
		}
		time.Sleep(20 * time.Millisecond) // a publisher's pace
	}
	for _, tr := range trs {
		h.waitExactly(tr, sent[tr], 30*time.Second)
		t.Logf("%s: %s token fetches, %d messages exactly once", tr, h.field(tr, "tokens"), len(sent[tr]))
	}
	// Each expiry the server saw: a connection ended (a held poll too), or
	// a poll sent with a token that had just expired, refused.
	h.s.WaitStats(t, 10*time.Second, func(st manager.Stats) error {
		var expiries uint64
		for _, w := range st.Workers {
			expiries += w.TokensExpired + w.AuthRefused
		}
		if expiries < 9 {
			return fmt.Errorf("the workers saw %d expired tokens, want at least 9", expiries)
		}
		return nil
	})
}

// A cursor older than the history fires one gap event, then the retained
// messages arrive; a reload after does not announce it again.
func TestJSClientGap(t *testing.T) {
	h := startJS(t, map[string]string{"server": "workers = 2\ndrain = \"1500ms\"", "comet": "history_size = 10"})
	trs := []string{"ws", "sse", "lp"}
	sent := map[string][]uint64{}
	for _, tr := range trs {
		id := "js-gap-" + tr
		sent[tr] = publishTo(t, h.s.API, id, "", 30, 0)
		h.start(tr, fmt.Sprintf(`{id: %q, transports: [%q], since: %d}`, id, tr, sent[tr][0]-1))
	}
	for _, tr := range trs {
		h.waitExactly(tr, sent[tr][20:], 30*time.Second)
		if g := h.field(tr, "gaps"); g != fmt.Sprintf(`[{"after":%d,"before":%d}]`, sent[tr][0]-1, sent[tr][20]) {
			t.Errorf("%s: gaps %s, want one from %d to %d", tr, g, sent[tr][0]-1, sent[tr][20])
		}
	}
	syscall.Kill(h.s.MustStats().Manager.PID, syscall.SIGHUP)
	waitServing(t, h.s, 2, 2)
	for _, tr := range trs {
		sent[tr] = append(sent[tr], publish(t, h.s.API, fmt.Sprintf(`{"to":"js-gap-%s","data":"after"}`, tr))...)
		h.waitExactly(tr, sent[tr][20:], 30*time.Second)
		if g := h.field(tr, "gaps"); strings.Count(g, "after") != 1 {
			t.Errorf("%s: gaps after a reload %s, want the one", tr, g)
		}
	}
}

// With persist, the cursor is kept in sessionStorage: a reloaded page
// resumes where it was, getting what it missed once.
func TestJSClientPersistsItsCursor(t *testing.T) {
	h := startJS(t, map[string]string{})
	h.start("p", `{id: "js-persist", persist: true}`)
	first := publishTo(t, h.s.API, "js-persist", "", 5, 0)
	h.waitExactly("p", first, 30*time.Second)
	// The page goes (closed first, so it cannot take what follows), the
	// messages come, and the page is loaded again.
	h.p.eval(`c.p.mc.close(); window.ready = false`)
	missed := publishTo(t, h.s.API, "js-persist", "", 5, 0)
	h.p.call(h.p.session, "Page.reload", nil, nil)
	h.waitJS(30*time.Second, "window.ready === true", "the page did not load again")
	h.start("p", `{id: "js-persist", persist: true}`)
	h.waitExactly("p", missed, 30*time.Second)
}

// The client is what the package says: a plain module under 8 KB that
// npm packs as "megacomet".
func TestJSClientPackage(t *testing.T) {
	if n := len(jsclient.Source); n >= 8000 {
		t.Errorf("megacomet.js is %d bytes, over the 8 KB it promises", n)
	}
	src, err := os.ReadFile("../clients/js/megacomet.js")
	if err != nil || string(src) != string(jsclient.Source) {
		t.Fatalf("the embedded client is not clients/js/megacomet.js: %v", err)
	}
	cmd := exec.Command("npm", "pack", "--dry-run", "--json")
	cmd.Dir = "../clients/js"
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("npm pack: %v", err)
	}
	var packs []struct {
		Name  string
		Files []struct{ Path string }
	}
	if err := json.Unmarshal(out, &packs); err != nil || len(packs) != 1 {
		t.Fatalf("npm pack --json: %v: %s", err, out)
	}
	var files []string
	for _, f := range packs[0].Files {
		files = append(files, f.Path)
	}
	slices.Sort(files)
	if packs[0].Name != "megacomet" || !slices.Equal(files, []string{"README.md", "megacomet.js", "package.json"}) {
		t.Errorf("npm pack: %s with %v", packs[0].Name, files)
	}
}

// The README's megacomet.js example, as it is, in Chromium: it logs the
// state, then what is published to alice and to news.
func TestJSClientREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(readme), "### In a browser: megacomet.js")
	_, rest, _ = strings.Cut(rest, "```html\n")
	example, _, ok := strings.Cut(rest, "```")
	if !ok || !strings.Contains(example, `from "http://localhost:8000/megacomet.js"`) {
		t.Fatalf("no megacomet.js example in README.md")
	}
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	capture := `<script>window.logs = []; console.log = (...a) => logs.push(a.map(String).join(" "));</script>`
	url, _ := page(t, capture+strings.ReplaceAll(example, "localhost:8000", s.Listen), s.Listen)
	p := openCDP(t, url)
	logs := func() string { return p.eval("logs.join('\\n')") }
	testutil.CheckFor(t, 30*time.Second, func() error {
		if !strings.Contains(logs(), "open ws") {
			return fmt.Errorf("the example logged %q; page errors %v", logs(), p.consoleErrors())
		}
		return nil
	})
	a := publish(t, s.API, `{"to":"alice","data":"hello"}`)[0]
	n := publish(t, s.API, `{"channel":"news","data":"headline"}`)[0]
	testutil.CheckFor(t, 30*time.Second, func() error {
		want := fmt.Sprintf("%d undefined hello\n%d news headline", a, n)
		if !strings.Contains(logs(), want) {
			return fmt.Errorf("the example logged %q, want %q", logs(), want)
		}
		return nil
	})
}
