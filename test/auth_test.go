package test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// clientSecret is the [auth] secret the tests' servers check tokens with.
const clientSecret = "the integration tests' shared secret, 32+ bytes"

func startAuthServer(t *testing.T, extra map[string]string) *testutil.Server {
	t.Helper()
	if extra == nil {
		extra = map[string]string{}
	}
	extra["auth"] = fmt.Sprintf("secret = %q\n", clientSecret) + extra["auth"]
	if extra["server"] == "" {
		extra["server"] = "workers = 2"
	}
	return testutil.Start(t, extra)
}

// mintToken makes a client token the way a script would: megacomet token.
func mintToken(t *testing.T, s *testutil.Server, id string, args ...string) string {
	t.Helper()
	out, err := exec.Command(s.Bin, append([]string{"token", "-config", s.Config, "-id", id}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("megacomet token: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// curl is `curl -s` with args; it returns the status and the body.
func curl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-s", "-m", "60", "-w", "\n%{http_code}"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	text := string(out)
	i := strings.LastIndexByte(text, '\n')
	var code int
	fmt.Sscan(text[i+1:], &code)
	return code, text[:i]
}

// What a client sees with curl, a client nobody here wrote: no token, a
// bad one, an expired one are 401s with a one-line JSON reason; another id
// or a channel the token does not allow is 403; a good token in any of the
// three places streams.
func TestAuthRefusalsWithCurl(t *testing.T) {
	// The cookie counts only from named origins' pages (cookie_test.go).
	s := startAuthServer(t, map[string]string{"auth": `cookie = "mc_token"`,
		"server": "workers = 2\nallowed_origins = [\"https://app.example\"]"})
	base := "http://" + s.Listen
	good := mintToken(t, s, "alice", "-channels", "news,sport-*")
	expired := mintToken(t, s, "alice", "-ttl", "1ms")
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		reason string
	}{
		{"no token", []string{base + "/lp/alice"}, 401, "no token"},
		{"not a token", []string{base + "/lp/alice?token=nope"}, 401, "malformed token"},
		{"alg none", []string{base + "/lp/alice?token=" + unsigned("alice")}, 401, "token algorithm not accepted"},
		{"expired", []string{"-H", "Authorization: Bearer " + expired, base + "/lp/alice"}, 401, "token expired"},
		{"another id", []string{base + "/sse/bob?token=" + good}, 403, "token is for another id"},
		{"a channel not in the claim", []string{base + "/stream/alice?channels=news,weather&token=" + good}, 403, "token does not allow channel weather"},
	} {
		status, body := curl(t, tc.args...)
		var reason struct{ Error string }
		if err := json.Unmarshal([]byte(body), &reason); status != tc.status || err != nil || !strings.HasPrefix(reason.Error, tc.reason) || strings.Count(body, "\n") != 1 {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, status, body, tc.status, tc.reason)
		}
	}
	for name, args := range map[string][]string{
		"?token=":       {base + "/sse/alice?channels=sport-eu&token=" + good},
		"Bearer":        {"-H", "Authorization: Bearer " + good, base + "/sse/alice"},
		"the cookie":    {"-b", "mc_token=" + good, "-H", "Sec-Fetch-Site: same-origin", base + "/sse/alice"},
		"/ping, no one": {base + "/ping"},
	} {
		// -m 2: the stream stays open; curl gives up, with what it read.
		out, _ := exec.Command("curl", append([]string{"-s", "-m", "2", "-i"}, args...)...).Output()
		if !strings.HasPrefix(string(out), "HTTP/1.1 200 ") {
			t.Errorf("%s: %.80q", name, out)
		}
	}
	if log := s.Log.String(); strings.Contains(log, good[20:60]) || strings.Contains(log, expired[20:60]) {
		t.Errorf("a token is in the server's log")
	}
	s.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if n := workerSum(st, func(w manager.WorkerStats) uint64 { return w.AuthRefused }); n != 6 {
			return fmt.Errorf("auth_refused %d, want 6", n)
		}
		return nil
	})
}

// unsigned is a token with alg none: what an attacker sends first.
func unsigned(id string) string {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	return enc(`{"alg":"none","typ":"JWT"}`) + "." + enc(fmt.Sprintf(`{"sub":%q,"exp":%d}`, id, time.Now().Add(time.Hour).Unix())) + "."
}

// npm ws: a token in ?token= (browsers cannot set a WebSocket's headers); a
// subscribe outside the token's channels is an error frame and the
// connection stays; when the token expires the server closes with 4001.
func TestAuthWebSocketWithNodeWS(t *testing.T) {
	s := startAuthServer(t, nil)
	c := startNode(t, "ws://"+s.Listen+"/ws/node?token="+mintToken(t, s, "node", "-channels", "news", "-ttl", "8s"))
	c.waitOpen("")
	waitLive(t, s.API, c, "node")
	c.send(`{"subscribe":"sport"}`)
	for deadline := time.Now().Add(30 * time.Second); ; { // past waitLive's last probes
		ev, ok := c.event(time.Until(deadline))
		if !ok {
			t.Fatal("no answer to a subscribe outside the claim")
		}
		if ev.Ev == "message" && strings.Contains(ev.Data, `"error"`) {
			if ev.Data != `{"error":"token does not allow channel sport"}` {
				t.Fatalf("after a subscribe outside the claim: %+v", ev)
			}
			break
		}
	}
	id := publish(t, s.API, `{"to":"node","data":"still here"}`)[0]
	if m := next(t, c, 5*time.Second); m.ID != id {
		t.Errorf("got %+v", m)
	}
	if ev := c.waitClose(time.Minute); ev.Code != 4001 || ev.Reason != "token expired" {
		t.Errorf("at expiry: close %d %q, want 4001 \"token expired\"", ev.Code, ev.Reason)
	}
}

// Chromium's EventSource with ?token=, from another origin.
func TestAuthBrowserEventSource(t *testing.T) {
	s := startAuthServer(t, nil)
	tok := mintToken(t, s, "browser-es")
	url, reports := page(t, strings.Replace(eventSourcePage, "/sse/browser-es", "/sse/browser-es?token="+tok, 1), s.Listen)
	chromium(t, url)
	if got := waitReport(t, s.API, "browser-es", reports, `"with a token"`); !strings.Contains(got, `"data":"with a token"`) {
		t.Errorf("the page reported %q", got)
	}
}

// Expiry at scale: 250 connections on each transport, the four at once,
// with tokens of 2 s while messages are published to them (1,000 at once,
// coming back 500 times a second: 1,000 per transport at once had a
// machine three times slower answer late enough for tokens to expire in
// the queue). Each connection is ended when its
// token expires, with the transport's announced close; megatest comes back
// with a fresh token and its cursor, and nothing is lost or doubled.
func TestAuthExpiryUnderPublish(t *testing.T) {
	// Long-polls held longer than a token lives, so theirs expire too.
	s := startAuthServer(t, map[string]string{"comet": `poll_timeout = "5s"`})
	const n = 250
	t.Setenv("MEGATEST_TOKEN_SECRET", clientSecret) // not on the command line
	trs := []string{"sse", "ws", "stream", "lp"}
	runs := map[string]*megatestRun{}
	for _, tr := range trs { // the four at once
		runs[tr] = runMegatest(t, s, "x"+tr, "-transport", tr, "-n", fmt.Sprint(n), "-token-ttl", "2s", "-pub", "50")
	}
	// Every connection has expired and come back at least twice (all
	// 1,000 are seldom held at one instant: each comes and goes).
	testutil.CheckFor(t, 3*time.Minute, func() error {
		for _, tr := range trs {
			if got := runs[tr].progress("closed"); got < 2*n {
				return fmt.Errorf("%s: %d connections ended, want %d", tr, got, 2*n)
			}
		}
		return nil
	})
	for _, tr := range trs {
		_, sum := runs[tr].stop(t, 2*time.Minute)
		t.Logf("%s: %d reconnects, %d for an expired token; %d published, %d lost, %d duplicates", tr, sum.Reconnects, sum.TokensExpired, sum.Published, sum.Lost, sum.Duplicates)
		if sum.TokensExpired < n || sum.Reconnects < sum.TokensExpired {
			t.Errorf("%s: tokens_expired %d, reconnects %d: every connection should have expired", tr, sum.TokensExpired, sum.Reconnects)
		}
		if sum.Lost != 0 || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 || sum.HTTPErrors != 0 || sum.Published == 0 {
			t.Errorf("%s: lost %d, duplicates %d, closed_unexpected %d, http_errors %d, published %d", tr, sum.Lost, sum.Duplicates, sum.ClosedUnexpected, sum.HTTPErrors, sum.Published)
		}
	}
}
