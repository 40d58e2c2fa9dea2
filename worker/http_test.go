package worker

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/megacomet/megacomet/ipc"
)

func TestParseRequest(t *testing.T) {
	big := "GET /x HTTP/1.1\r\nX: " + strings.Repeat("a", defaultMaxHeader) + "\r\n\r\n"
	cases := []struct {
		name, in string
		err      error
		path     string
		query    string
		close    bool
	}{
		{"ping", "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", nil, "/ping", "", false},
		{"query", "GET /lp/a1?since=5&callback=f HTTP/1.1\r\n\r\n", nil, "/lp/a1", "since=5&callback=f", false},
		{"http10", "GET /ping HTTP/1.0\r\n\r\n", nil, "/ping", "", true},
		{"http10 keep-alive", "GET /ping HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", nil, "/ping", "", false},
		{"close", "GET /ping HTTP/1.1\r\nconnection: upgrade, close\r\n\r\n", nil, "/ping", "", true},
		{"bare LF", "GET /ping HTTP/1.1\nHost: x\n\n", nil, "/ping", "", false},
		{"incomplete", "GET /ping HTTP/1.1\r\nHost: x\r\n", errNeedMore, "", "", false},
		{"empty", "", errNeedMore, "", "", false},
		{"too large", big, errTooLarge, "", "", false},
		{"too large unterminated", big[:len(big)-4], errTooLarge, "", "", false},
		{"no target", "GET\r\n\r\n", errBadRequest, "", "", false},
		{"relative target", "GET ping HTTP/1.1\r\n\r\n", errBadRequest, "", "", false},
		{"bad version", "GET / HTTP/2.0\r\n\r\n", errVersion, "", "", false},
		{"garbage version", "GET / FOO\r\n\r\n", errBadRequest, "", "", false},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", errBadRequest, "", "", false},
		{"header without colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", errBadRequest, "", "", false},
		{"body", "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", errBody, "", "", false},
		{"zero body", "GET /ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n", nil, "/ping", "", false},
		{"chunked", "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", errBody, "", "", false},
		{"bare CR in a value", "GET /ping HTTP/1.1\r\nX-A: a\rb\r\n\r\n", errBareCR, "", "", false},
		{"bare CR ending a value", "GET /ping HTTP/1.1\r\nX-A: a\r\r\n\r\n", errBareCR, "", "", false},
		{"bare CR, LF line ends", "GET /ping HTTP/1.1\nOrigin: x\ry\n\n", errBareCR, "", "", false},
		{"bare CR in the target", "GET /ping\r HTTP/1.1\r\n\r\n", errBareCR, "", "", false},
		{"NUL in a value", "GET /ping HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", errBareCR, "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r request
			n, err := parseRequest([]byte(tc.in), &r, defaultMaxHeader)
			if err != tc.err {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if want := strings.Index(tc.in, "\n\n"); want < 0 && n != strings.Index(tc.in, "\r\n\r\n")+4 || want >= 0 && n != want+2 {
				t.Errorf("n = %d", n)
			}
			if string(r.path) != tc.path || string(r.query) != tc.query || r.close != tc.close {
				t.Errorf("got path %q query %q close %v", r.path, r.query, r.close)
			}
		})
	}
}

func TestParseRequestHeaders(t *testing.T) {
	in := "GET /sse/a HTTP/1.1\r\nLast-Event-ID:  42 \r\nORIGIN: https://a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
	var r request
	if _, err := parseRequest([]byte(in), &r, defaultMaxHeader); err != nil {
		t.Fatal(err)
	}
	got := []string{string(r.lastEventID), string(r.origin), string(r.upgradeTo), string(r.wsKey), string(r.wsVersion), string(r.wsProtocol)}
	want := []string{"42", "https://a.example", "websocket", "dGhlIHNhbXBsZSBub25jZQ==", "13", "chat"}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("header %d = %q, want %q", i, got[i], want[i])
		}
	}
	if !r.upgrade {
		t.Error("Connection: Upgrade not seen")
	}
}

func TestErrorResponsesAreWellFormed(t *testing.T) {
	for _, e := range []*httpError{errBadRequest, errBareCR, errBadID, errBody, errNotFound, errMethod, errTooLarge, errVersion} {
		head, body, ok := bytes.Cut(e.resp, []byte("\r\n\r\n"))
		if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.1 ")) || !bytes.Contains(head, []byte("Connection: close")) {
			t.Errorf("%d: malformed response %q", e.status, e.resp)
		}
		if !bytes.Contains(head, []byte("Content-Length: "+strconv.Itoa(len(body)))) {
			t.Errorf("%d: Content-Length does not match body %q", e.status, body)
		}
	}
}

func TestParseRequestAllocatesNothing(t *testing.T) {
	in := []byte("GET /sse/abc?since=12 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\nLast-Event-ID: 9\r\nAccept: text/event-stream\r\n\r\n")
	var r request
	if n := testing.AllocsPerRun(1000, func() { parseRequest(in, &r, defaultMaxHeader) }); n != 0 {
		t.Errorf("parseRequest allocates %.1f times per call", n)
	}
}

// FuzzParseRequest checks that a request head split anywhere parses as it
// does whole: a prefix either needs more or gives the whole's answer.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\n\r\n"), 7)
	f.Add([]byte("GET /lp/a?since=1 HTTP/1.0\nConnection: keep-alive\n\n"), 20)
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"), 3)
	f.Add([]byte("GET /sse/a HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9, 192.0.2.7\r\nForwarded: for=\"[2001:db8::1]:4711\"\r\n\r\n"), 40)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if split < 0 || split > len(data) {
			return
		}
		var whole, part request
		n1, err1 := parseRequest(data, &whole, defaultMaxHeader)
		n2, err2 := parseRequest(data[:split], &part, defaultMaxHeader)
		if err2 == errNeedMore {
			if err1 == nil && n1 <= split {
				t.Fatalf("prefix of %d needs more, but the whole head is %d bytes", split, n1)
			}
			return
		}
		if err1 != err2 || n1 != n2 {
			t.Fatalf("split at %d: (%d, %v), whole: (%d, %v)", split, n2, err2, n1, err1)
		}
		if err1 == nil && (!bytes.Equal(whole.path, part.path) || !bytes.Equal(whole.query, part.query) || whole.close != part.close ||
			!bytes.Equal(whole.forwardedFor, part.forwardedFor) || !bytes.Equal(whole.forwarded, part.forwarded)) {
			t.Fatalf("split at %d parsed differently", split)
		}
	})
}

func TestValidID(t *testing.T) {
	for id, ok := range map[string]bool{"a": true, "A-z_09": true, strings.Repeat("x", 64): true,
		"": false, strings.Repeat("x", 65): false, "a.b": false, "a/b": false, "é": false, "a b": false} {
		if ipc.ValidName([]byte(id)) != ok {
			t.Errorf("ipc.ValidName(%q) != %v", id, ok)
		}
	}
}
