package worker

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
)

const testSecret = "a test secret of at least 32 bytes!"

// appOrigin is the one page origin the auth tests' server trusts with its
// cookie (server.allowed_origins).
const appOrigin = "https://app.example"

func withAuth(o *config.Options) {
	o.Auth = config.Auth{Secret: testSecret, Required: true, Cookie: "mc"}
	o.Server.AllowedOrigins = []string{appOrigin}
	o.Comet.Heartbeat = config.Duration(time.Hour)
}

func token(t testing.TB, id string, channels []string, ttl time.Duration) string {
	s, err := auth.Mint([]byte(testSecret), id, channels, ttl, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authedSSE(j int) string {
	id := "idle" + strconv.Itoa(j)
	tok, _ := auth.Mint([]byte(testSecret), id, nil, time.Hour, time.Now())
	return "GET /sse/" + id + "?token=" + tok + " HTTP/1.1\r\n\r\n"
}

// answer sends req on a new connection and returns everything the worker
// answers before it closes.
func answer(h *harness, req string) string {
	c := h.dialRaw()
	c.write([]byte(req))
	return string(c.readAll())
}

// A request without a good token is answered with its status and a
// one-line JSON reason, and the connection closed: nothing is held open.
// The token never comes back in the answer.
func TestTokenRefusals(t *testing.T) {
	h := startWorker(t, withAuth)
	expired := token(t, "alice", nil, -time.Minute)
	for _, tc := range []struct {
		name, req, status, reason string
	}{
		{"no token", "GET /sse/alice HTTP/1.1\r\n\r\n", "401", "no token"},
		{"malformed", "GET /sse/alice?token=abc HTTP/1.1\r\n\r\n", "401", "malformed token"},
		{"other secret", "GET /sse/alice?token=" + mintOther(t) + " HTTP/1.1\r\n\r\n", "401", "bad token signature"},
		{"expired", "GET /lp/alice?token=" + expired + " HTTP/1.1\r\n\r\n", "401", "token expired"},
		{"another id", "GET /stream/bob?token=" + token(t, "alice", nil, time.Hour) + " HTTP/1.1\r\n\r\n", "403", "token is for another id"},
		{"a channel it may not join", "GET /sse/alice?channels=news,secret&token=" + token(t, "alice", []string{"news"}, time.Hour) + " HTTP/1.1\r\n\r\n",
			"403", "token does not allow channel secret"},
		{"websocket", wsRequest("/ws/alice", "Authorization: Bearer "+expired+"\r\n"), "401", "token expired"},
	} {
		got := answer(h, tc.req)
		head, body, _ := strings.Cut(got, "\r\n\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 "+tc.status+" ") || !strings.Contains(head, "\r\nContent-Type: application/json\r\n") ||
			!strings.Contains(head, "\r\nConnection: close") || body != fmt.Sprintf("{%q:%q}\n", "error", reasonFor(tc.reason)) {
			t.Errorf("%s: got %q", tc.name, got)
		}
		if i := strings.Index(tc.req, "token="); i >= 0 && len(tc.req) > i+20 && strings.Contains(got, tc.req[i+6:i+20]) {
			t.Errorf("%s: the answer echoes the token", tc.name)
		}
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.AuthRefused == 7 })
	if got := answer(h, "GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n"); !strings.HasSuffix(got, "pong") {
		t.Errorf("/ping wants no token: %q", got)
	}
}

func reasonFor(prefix string) string {
	for _, r := range []*auth.Refusal{auth.ErrNoToken, auth.ErrMalformed, auth.ErrSignature, auth.ErrExpired, auth.ErrOtherClient} {
		if strings.HasPrefix(r.Reason, prefix) {
			return r.Reason
		}
	}
	return prefix
}

func mintOther(t testing.TB) string {
	s, err := auth.Mint([]byte("another secret, also 32 bytes long"), "alice", nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The token may come as ?token=, Authorization: Bearer, or the cookie.
func TestTokenCarriers(t *testing.T) {
	h := startWorker(t, withAuth)
	tok := token(t, "alice", nil, time.Hour)
	for _, req := range []string{
		"GET /sse/alice?token=" + tok + " HTTP/1.1\r\n\r\n",
		"GET /sse/alice HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n",
		"GET /sse/alice HTTP/1.1\r\nCookie: theme=dark; mc=" + tok + "; x=y\r\nSec-Fetch-Site: same-origin\r\n\r\n",
	} {
		c := h.dialRaw()
		c.write([]byte(req))
		if got := string(c.readOpening()); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
			t.Errorf("%.60q: %q", req, got)
		}
	}
}

// The cookie is a credential the browser attaches by itself, whichever page
// starts the request: it counts only where the browser says the page is
// one of server.allowed_origins (or the request is not cross-site), never
// for JSONP. A token the request carries itself is not ambient.
func TestCookieOnlyFromTrustedPages(t *testing.T) {
	h := startWorker(t, withAuth)
	tok := token(t, "alice", nil, time.Hour)
	cookie := "Cookie: mc=" + tok + "\r\n"
	evil := "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n"
	jsonp := "Referer: https://evil.example/page\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\n"
	const (
		fromEvil  = "cookie credentials are not accepted from origin https://evil.example"
		crossSite = "cookie credentials are not accepted on a cross-site request (Sec-Fetch-Site)"
		forJSONP  = "cookie credentials are not accepted for JSONP (a <script> request): send ?token="
		noOrigin  = "cookie credentials are not accepted on a WebSocket handshake without an Origin in server.allowed_origins"
	)
	refused := 0
	for _, tc := range []struct {
		name, req string
		status    string
		reason    string // for a refusal
	}{
		{"same-origin SSE", "GET /sse/alice HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: same-origin\r\n\r\n", "200", ""},
		{"same-site SSE", "GET /sse/alice HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: same-site\r\n\r\n", "200", ""},
		{"typed in the address bar", "GET /sse/alice HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: none\r\n\r\n", "200", ""},
		{"the app's page, cross-origin", "GET /sse/alice HTTP/1.1\r\n" + cookie + "Origin: " + appOrigin + "\r\nSec-Fetch-Site: cross-site\r\n\r\n", "200", ""},
		{"the app's WebSocket", wsRequest("/ws/alice", cookie+"Origin: "+appOrigin+"\r\n"), "101", ""},
		{"another site's EventSource", "GET /sse/alice HTTP/1.1\r\n" + cookie + evil + "\r\n", "403", fromEvil},
		{"another site's fetch of a long-poll", "GET /lp/alice?since=0 HTTP/1.1\r\n" + cookie + evil + "\r\n", "403", fromEvil},
		{"a cross-site request without an Origin", "GET /stream/alice HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: cross-site\r\n\r\n", "403", crossSite},
		{"a request that says nothing of its site", "GET /sse/alice HTTP/1.1\r\n" + cookie + "\r\n", "403", crossSite},
		{"JSONP, the MegaComet URL", "GET /alice.js?since=0&callback=steal HTTP/1.1\r\n" + cookie + jsonp + "\r\n", "403", forJSONP},
		{"JSONP from the app's own page", "GET /lp/alice?callback=cb HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: same-origin\r\n\r\n", "403", forJSONP},
		{"a <script> without a callback", "GET /lp/alice HTTP/1.1\r\n" + cookie + "Sec-Fetch-Site: same-site\r\nSec-Fetch-Dest: script\r\n\r\n", "403", forJSONP},
		{"another site's WebSocket", wsRequest("/ws/alice?since=0", cookie+"Origin: https://evil.example\r\n"), "403", fromEvil},
		{"a WebSocket without an Origin", wsRequest("/ws/alice", cookie), "403", noOrigin},
		{"another site with ?token=", "GET /sse/alice?token=" + tok + " HTTP/1.1\r\n" + cookie + evil + "\r\n", "200", ""},
		{"another site with Authorization", "GET /sse/alice HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n" + evil + "\r\n", "200", ""},
	} {
		c := h.dialRaw()
		c.write([]byte(tc.req))
		var got string
		if tc.status == "403" {
			got = string(c.readAll())
			refused++
			head, body, _ := strings.Cut(got, "\r\n\r\n")
			if !strings.HasPrefix(head, "HTTP/1.1 403 ") || body != fmt.Sprintf("{%q:%q}\n", "error", tc.reason) {
				t.Errorf("%s: got %q, want 403 %q", tc.name, got, tc.reason)
			}
			continue
		}
		got = (&wsClient{rawConn: c}).readHead()
		if !strings.HasPrefix(got, "HTTP/1.1 "+tc.status+" ") {
			t.Errorf("%s: got %q, want %s", tc.name, got, tc.status)
		}
		if strings.Contains(tc.req, "Origin: "+appOrigin) && tc.status == "200" &&
			(!strings.Contains(got, "\r\nAccess-Control-Allow-Origin: "+appOrigin+"\r\n") || !strings.Contains(got, "\r\nAccess-Control-Allow-Credentials: true\r\n")) {
			t.Errorf("%s: the app's page may not read the answer with its cookie: %q", tc.name, got)
		}
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.AuthRefused == uint64(refused) })
}

// A WebSocket client whose token limits its channels gets an error frame
// for a subscribe to another one, and its connection stays.
func TestWSSubscribeOutsideTheClaim(t *testing.T) {
	h := startWorker(t, withAuth)
	c := h.openWS("/ws/alice?token=" + token(t, "alice", []string{"news-*"}, time.Hour))
	h.waitJoins(1)
	c.write(text(`{"subscribe":"sport"}`))
	hd, p := c.mustNext()
	if hd.OpCode != ws.OpText || string(p) != `{"error":"token does not allow channel sport"}` {
		t.Fatalf("got %v %q", hd.OpCode, p)
	}
	c.write(text(`{"subscribe":"news-eu"}`))
	h.waitJoins(2) // allowed: it joins again with the channel
	c.alive()
}

// When the token expires the connection ends with its transport's
// announced close; nothing is refused before.
func TestTokenExpiryEndsEachTransport(t *testing.T) {
	h := startWorker(t, withAuth)
	ttl := 1500 * time.Millisecond // the token's exp has a resolution of seconds
	sse := h.dialRaw()
	sse.write([]byte("GET /sse/a?token=" + token(t, "a", nil, ttl) + " HTTP/1.1\r\n\r\n"))
	stream := h.dialRaw()
	stream.write([]byte("GET /stream/b?token=" + token(t, "b", nil, ttl) + " HTTP/1.1\r\n\r\n"))
	lp := h.dialRaw()
	lp.write([]byte("GET /lp/c?token=" + token(t, "c", nil, ttl) + " HTTP/1.1\r\n\r\n"))
	wsc := h.openWS("/ws/d?token=" + token(t, "d", nil, ttl))
	h.waitJoins(4)
	for name, c := range map[string]*rawConn{"sse": sse, "stream": stream, "lp": lp} {
		c.readTimeout(time.Minute)
		got := string(c.readAll())
		var want string
		switch name {
		case "sse":
			want = "event: expired\ndata: {\"error\":\"token expired\"}\n\n"
		case "stream":
			want = "1a\r\n{\"error\":\"token expired\"}\n\r\n0\r\n\r\n"
		case "lp":
			want = "HTTP/1.1 401 "
		}
		if !strings.HasSuffix(got, want) && !(name == "lp" && strings.HasPrefix(got, want) && strings.HasSuffix(got, "{\"error\":\"token expired\"}\n")) {
			t.Errorf("%s ended with %q", name, got)
		}
	}
	wsc.readTimeout(time.Minute)
	if r := wsc.expectClose(wsStatusTokenExpired); r != "token expired" {
		t.Errorf("websocket: reason %q", r)
	}
	h.countsWhere(func(c ipc.Counts) bool { return c.TokensExpired == 4 })
}

// Auth on, an idle connection costs what it costs without: the token is
// checked when it subscribes and nothing of it is kept but its expiry, in
// a field every connection has.
func TestAuthKeepsNothingOfAnIdleConnection(t *testing.T) {
	needFanoutFiles(t)
	// The same request without auth has a query as long: a request's
	// length shows in the worker's one-off buffers. Each is measured twice,
	// alternately, and the smaller kept: one-off costs (the first token
	// fills encoding/json's type cache for the claims) are not per
	// connection, and the heap has a few bytes a connection of noise.
	pad := strings.Repeat("x", len(token(t, "idle0", nil, time.Hour)))
	padded := func(j int) string { return "GET /sse/idle" + strconv.Itoa(j) + "?pad=" + pad + " HTTP/1.1\r\n\r\n" }
	idleConnBytes(t, withAuth, authedSSE) // warm up: the process's first run measures its own start too
	plain, authed := 1e9, 1e9
	for range 2 {
		p, _ := idleConnBytes(t, nil, padded)
		a, _ := idleConnBytes(t, withAuth, authedSSE)
		plain, authed = min(plain, p), min(authed, a)
	}
	t.Logf("heap per idle SSE connection: %.0f bytes, %.0f with a token", plain, authed)
	if authed > plain+8 {
		t.Errorf("a connection with a token holds %.0f bytes, one without %.0f", authed, plain)
	}
}

// FuzzQueryAndToken: a request's query string and token, however mangled,
// parse without a panic into what the rules allow - channels that are
// valid names, at most maxChannels of them, and a token that is bytes of
// the request itself (from ?token=, Authorization: Bearer or the cookie),
// never more.
func FuzzQueryAndToken(f *testing.F) {
	f.Add([]byte("GET /sse/a?since=5&channels=x,y&token=abc HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /sse/a HTTP/1.1\r\nAuthorization: Bearer t.o.k\r\n\r\n"))
	f.Add([]byte("GET /sse/a HTTP/1.1\r\nCookie: a=1; mc_token=xyz; b\r\n\r\n"))
	f.Add([]byte("GET /lp/a?callback=cb&channels=&token=&since=99999999999999999999 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /ws/a?channels=a,a,b%2Cc&cursor=1 HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		var r request
		if _, err := parseRequest(head, &r, defaultMaxHeader); err != nil {
			return
		}
		var q query
		if parseQuery(r.query, &q) != nil {
			return
		}
		if q.nchans > maxChannels {
			t.Fatalf("%d channels", q.nchans)
		}
		for _, ch := range q.channels() {
			if !ipc.ValidName(string(ch)) {
				t.Fatalf("channel %q accepted", ch)
			}
		}
		tok, ambient := tokenOf(&r, &q, "mc_token")
		if len(tok) > 0 && !bytes.Contains(head, tok) {
			t.Fatalf("token %q is not in the request", tok)
		}
		if ambient && (len(q.token) > 0 || len(r.authorization) > 7 && asciiEqualFold(r.authorization[:7], []byte("bearer "))) {
			t.Fatalf("the cookie counted although the request carries a token of its own")
		}
	})
}
