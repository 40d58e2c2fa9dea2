package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// Cookie auth against cross-site pages: the auth cookie is a credential
// the browser attaches by itself, so a page of another site must not read
// a signed-in user's stream with it.

// cookieServer is megacomet with auth.cookie "mc", trusting only origin's
// pages with it, holding a message for alice.
func cookieServer(t *testing.T, origin string) *testutil.Server {
	t.Helper()
	s := testutil.Start(t, map[string]string{
		"server": fmt.Sprintf("workers = 2\nallowed_origins = [%q]", origin),
		"auth":   fmt.Sprintf("secret = %q\ncookie = \"mc\"", clientSecret),
	})
	publish(t, s.API, `{"to":"alice","data":"private-for-alice"}`)
	return s
}

// rawAnswer sends req on a new connection and returns what comes back
// within a few seconds: the whole answer when the server closes, or what
// an open stream has sent by then.
func rawAnswer(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, req)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(bufio.NewReader(c))
	return string(b)
}

// The security review's two reproductions, as the browser sends them:
// JSONP from a <script> on evil.example, and a WebSocket opened by a page
// there, each with alice's cookie. Both are refused with one line of JSON
// and counted; the same requests from the trusted page, or carrying the
// token themselves, are served.
func TestCookieCrossSiteRefused(t *testing.T) {
	const app = "https://app.example"
	s := cookieServer(t, app)
	tok := mintToken(t, s, "alice")
	cookie := "Cookie: mc=" + tok + "\r\n"
	ws := "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, tc := range []struct {
		name, req, want string
	}{
		{"JSONP from another site", "GET /alice.js?since=0&callback=steal HTTP/1.1\r\nHost: push\r\n" + cookie +
			"Referer: https://evil.example/page\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: script\r\n\r\n",
			"HTTP/1.1 403 "},
		{"WebSocket from another site", "GET /ws/alice?since=0 HTTP/1.1\r\nHost: push\r\n" + ws + cookie +
			"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n\r\n", "HTTP/1.1 403 "},
		{"WebSocket from the app", "GET /ws/alice?since=0 HTTP/1.1\r\nHost: push\r\n" + ws + cookie +
			"Origin: " + app + "\r\nSec-Fetch-Site: same-site\r\n\r\n", "HTTP/1.1 101 "},
		{"JSONP with its own token", "GET /alice.js?since=0&callback=cb&token=" + tok + " HTTP/1.1\r\nHost: push\r\n" +
			"Referer: https://evil.example/page\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Dest: script\r\n\r\n", "HTTP/1.1 200 "},
	} {
		got := rawAnswer(t, s.Listen, tc.req)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %.300q, want %q", tc.name, got, tc.want)
		}
		secret := strings.Contains(got, "private-for-alice")
		if tc.want == "HTTP/1.1 403 " {
			_, body, _ := strings.Cut(got, "\r\n\r\n")
			if secret || !strings.HasPrefix(body, `{"error":"cookie credentials are not accepted `) || strings.Count(body, "\n") != 1 {
				t.Errorf("%s: the refusal is %q", tc.name, body)
			}
		} else if !secret {
			t.Errorf("%s: no message in %.300q", tc.name, got)
		}
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.AuthRefused }); n != 2 {
			return fmt.Errorf("auth_refused %d, want 2", n)
		}
		return nil
	})
}

// A config with the cookie and any origin does not start, and `megacomet
// -t` says why in one line naming both keys.
func TestCookieNeedsNamedOrigins(t *testing.T) {
	bin := testutil.Binary(t, "megacomet")
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte(fmt.Sprintf("[auth]\nsecret = %q\ncookie = \"mc\"\n", clientSecret)), 0o644)
	out, err := exec.Command(bin, "-t", "-config", path).CombinedOutput()
	msg := strings.TrimSpace(string(out))
	if err == nil || !strings.Contains(msg, "auth.cookie") || !strings.Contains(msg, "server.allowed_origins") || strings.Count(msg, "\n") != 0 {
		t.Errorf("megacomet -t: %v %q, want one line naming auth.cookie and server.allowed_origins", err, msg)
	}
}

// cookiePage probes the push server from a page as an attacker would and
// as the app does: JSONP (a <script>), fetch with credentials, EventSource
// withCredentials and WebSocket, each asking alice's stream from the start.
// Each probe gives the message it read that holds the secret, or how it
// ended without one.
const cookiePage = `<!doctype html><meta charset="utf-8"><title>probe</title>
<script>
const secret = d => typeof d === "string" && d.includes("private-for-alice");
window.probe = async (push, token) => {
  const tq = token ? "&token=" + token : "";
  const r = {};
  r.jsonp = await new Promise(res => {
    window.steal = d => res(JSON.stringify(d));
    const s = document.createElement("script");
    s.src = push + "/alice.js?since=0&callback=steal" + tq;
    s.onerror = () => res("script error");
    document.head.appendChild(s);
  });
  r.fetch = await fetch(push + "/lp/alice?since=0" + tq, {credentials: "include"})
    .then(async x => x.status + " " + await x.text(), e => "blocked");
  r.sse = await new Promise(res => {
    const es = new EventSource(push + "/sse/alice?since=0" + tq, {withCredentials: true});
    es.onmessage = m => { if (secret(m.data)) { es.close(); res(m.data); } };
    es.onerror = () => { es.close(); res("error"); };
  });
  r.ws = await new Promise(res => {
    const ws = new WebSocket(push.replace("http:", "ws:") + "/ws/alice?since=0" + tq);
    ws.onmessage = m => { if (secret(m.data)) { ws.close(); res(m.data); } };
    ws.onclose = e => res("closed " + e.code);
  });
  return JSON.stringify(r);
};
window.ready = true;
</script>`

// Chromium, with alice's cookie for the push server: a page of a sibling
// site (evil.example.test: same-site, so a Lax cookie goes with its
// requests) reads nothing over any transport; the app's page (app.example.
// test, in server.allowed_origins) reads alice's message over each, JSONP
// with ?token=.
func TestCookieBrowserCrossSite(t *testing.T) {
	pages := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, cookiePage)
	}))
	t.Cleanup(pages.Close)
	_, pagePort, _ := net.SplitHostPort(pages.Listener.Addr().String())
	app := "http://app.example.test:" + pagePort
	s := cookieServer(t, app)
	_, pushPort, _ := net.SplitHostPort(s.Listen)
	push := "http://push.example.test:" + pushPort
	tok := mintToken(t, s, "alice")

	p := openCDP(t, "about:blank", "--host-resolver-rules=MAP *.example.test 127.0.0.1")
	p.call(p.session, "Network.setCookie", map[string]any{"name": "mc", "value": tok, "url": push + "/"}, nil)
	probe := func(origin, token string) map[string]string {
		t.Helper()
		p.call(p.session, "Page.navigate", map[string]any{"url": origin + "/"}, nil)
		testutil.CheckFor(t, 30*time.Second, func() error {
			if p.eval("window.ready === true") != "true" {
				return fmt.Errorf("the page at %s did not load", origin)
			}
			return nil
		})
		p.eval(fmt.Sprintf("window.out = undefined; probe(%q, %q).then(r => window.out = r)", push, token))
		var out string
		testutil.CheckFor(t, time.Minute, func() error {
			if out = p.eval("window.out"); out == "" {
				return fmt.Errorf("the probes from %s have not ended", origin)
			}
			return nil
		})
		t.Logf("from %s: %s", origin, out)
		var r map[string]string
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	const secret = "private-for-alice"
	for tr, got := range probe("http://evil.example.test:"+pagePort, "") {
		if strings.Contains(got, secret) {
			t.Errorf("a page of another origin read alice's stream with her cookie over %s: %s", tr, got)
		}
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.AuthRefused }); n < 4 {
			return fmt.Errorf("auth_refused %d after the other site's four probes", n)
		}
		return nil
	})
	r := probe(app, "")
	for _, tr := range []string{"fetch", "sse", "ws"} {
		if !strings.Contains(r[tr], secret) {
			t.Errorf("the app's page did not read alice's message over %s with the cookie: %q", tr, r[tr])
		}
	}
	if r["jsonp"] != "script error" {
		t.Errorf("JSONP with the cookie from the app's page: %q, want it refused (JSONP needs ?token=)", r["jsonp"])
	}
	if r := probe(app, tok); !strings.Contains(r["jsonp"], secret) {
		t.Errorf("JSONP with ?token= from the app's page: %q", r["jsonp"])
	}
}
