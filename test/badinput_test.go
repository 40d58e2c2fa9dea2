package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// rawRequest sends req as is and returns the status code and body.
func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	status, body, err := answerOf(c, 5*time.Second)
	if status == 0 {
		t.Fatalf("%.40q: %v", req, err)
	}
	return status, body
}

func TestBadInputIsRejectedAndOthersKeepBeingServed(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "api": `token = "s3cret"`})
	auth := []string{"Authorization", "Bearer s3cret"}
	bystander := openStream(t, s.Listen, "/sse/bystander")
	waitLiveAuth(t, s.API, bystander, "bystander", auth)

	clientCases := []struct {
		name, req string
		status    int
		body      string
	}{
		{"oversized headers", "GET /sse/a HTTP/1.1\r\nX-Big: " + strings.Repeat("x", 9000) + "\r\n\r\n", 431, "too large"},
		{"bad id", "GET /sse/a.b HTTP/1.1\r\n\r\n", 400, "bad id"},
		{"id too long", "GET /lp/" + strings.Repeat("a", 65) + " HTTP/1.1\r\n\r\n", 400, "bad id"},
		{"empty id", "GET /stream/ HTTP/1.1\r\n\r\n", 400, "bad id"},
		{"id with slash", "GET /sse/a/b HTTP/1.1\r\n\r\n", 400, "bad id"},
		{"unknown path", "GET /nope HTTP/1.1\r\n\r\n", 404, "not found"},
		{"method", "POST /sse/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "method not allowed"},
		{"bad since", "GET /lp/a?since=yesterday HTTP/1.1\r\n\r\n", 400, "bad since"},
		{"since overflow", "GET /lp/a?since=99999999999999999999 HTTP/1.1\r\n\r\n", 400, "bad since"},
		{"bad Last-Event-ID", "GET /sse/a HTTP/1.1\r\nLast-Event-ID: abc\r\n\r\n", 400, "bad since"},
		{"bad callback", "GET /lp/a?callback=alert(1) HTTP/1.1\r\n\r\n", 400, "bad callback"},
		{"callback starting with digit", "GET /a.js?callback=1x HTTP/1.1\r\n\r\n", 400, "bad callback"},
		{"bad channel", "GET /sse/a?channels=ok,no.pe HTTP/1.1\r\n\r\n", 400, "bad channels"},
		{"too many channels", "GET /sse/a?channels=" + strings.Repeat("c,", 16) + "c HTTP/1.1\r\n\r\n", 400, "bad channels"},
		{"request body", "GET /sse/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400, "body"},
		{"http version", "GET /sse/a HTTP/2.0\r\n\r\n", 505, "version"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "NUL, in the request head"}, // a TLS hello
	}
	for _, tc := range clientCases {
		status, body := rawRequest(t, s.Listen, tc.req)
		if status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("%s: got %d %q, want %d %q", tc.name, status, body, tc.status, tc.body)
		}
	}

	before := s.MustStats().Manager.Published
	apiCases := []struct {
		name, body string
		header     []string
		status     int
		err        string
	}{
		{"no token", `{"to":"a","data":1}`, nil, 401, "bearer token"},
		{"wrong token", `{"to":"a","data":1}`, []string{"Authorization", "Bearer nope"}, 401, "bearer token"},
		{"not JSON", `{"to":"a",`, auth, 400, "not JSON"},
		{"not an object", `"hello"`, auth, 400, "message object"},
		{"missing data", `{"to":"a"}`, auth, 400, "data is required"},
		{"to and channel", `{"to":"a","channel":"c","data":1}`, auth, 400, "exactly one"},
		{"no target", `{"data":1}`, auth, 400, "exactly one"},
		{"broadcast false", `{"broadcast":false,"data":1}`, auth, 400, "broadcast"},
		{"bad id", `{"to":"a b","data":1}`, auth, 400, "bad id"},
		{"bad id in list", `{"to":["a","b/c"],"data":1}`, auth, 400, "bad id"},
		{"to of wrong type", `{"to":7,"data":1}`, auth, 400, "to must be"},
		{"bad channel", `{"channel":"","data":1}`, auth, 400, "bad channel"},
		{"unknown field", `{"to":"a","data":1,"ttl":5}`, auth, 400, "unknown field"},
		{"empty body", ``, auth, 400, "empty body"},
		{"empty batch", `[]`, auth, 400, "empty batch"},
		{"one bad item spoils the batch", `[{"to":"a","data":1},{"to":"a"}]`, auth, 400, "item 1"},
		{"invalid UTF-8", "{\"to\":\"a\",\"data\":\"\xff\xfe\"}", auth, 400, "UTF-8"},
		{"data too large", `{"to":"a","data":"` + strings.Repeat("x", 300<<10) + `"}`, auth, 400, "limit"},
		{"body too large", `[` + strings.Repeat(`{"to":"a","data":"`+strings.Repeat("x", 100<<10)+`"},`, 170) + `1]`, auth, 413, "body over"},
	}
	for _, tc := range apiCases {
		status, body := post(t, s.API, tc.body, tc.header...)
		var e struct{ Error string }
		if err := json.Unmarshal([]byte(body), &e); err != nil || status != tc.status || !strings.Contains(e.Error, tc.err) {
			t.Errorf("%s: got %d %.200s, want %d {\"error\": …%s…}", tc.name, status, body, tc.status, tc.err)
		}
	}
	resp, err := http.Get("http://" + s.API + "/publish?access_token=s3cret")
	if err != nil || resp.StatusCode != 405 {
		t.Errorf("GET /publish: %v %v", resp.StatusCode, err)
	}
	if after := s.MustStats().Manager.Published; after != before {
		t.Errorf("rejected requests published %d messages", after-before)
	}

	// Everyone else was served all along.
	id := publish(t, s.API, `{"to":"bystander","data":"still here"}`, auth...)[0]
	if m := next(t, bystander, 5*time.Second); m.ID != id {
		t.Errorf("bystander got %d %s", m.ID, m.Data)
	}
	if got := ping(t, s.Listen); got != "pong" {
		t.Errorf("ping = %q", got)
	}
	testutil.CheckFor(t, 3*time.Second, func() error {
		st := s.MustStats()
		if bad := st.Workers[0].BadRequests + st.Workers[1].BadRequests; bad != uint64(len(clientCases)) {
			return fmt.Errorf("%d bad requests counted, want %d", bad, len(clientCases))
		}
		if st.Workers[0].Restarts+st.Workers[1].Restarts != 0 {
			return fmt.Errorf("a worker restarted")
		}
		return nil
	})
}

func waitLiveAuth(t *testing.T, api string, r receiver, id string, auth []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		publish(t, api, `{"to":"`+id+`","data":"probe"}`, auth...)
		if _, ok := r.tryNext(200 * time.Millisecond); ok {
			for {
				if _, ok := r.tryNext(100 * time.Millisecond); !ok {
					return
				}
			}
		}
	}
	t.Fatalf("%s never received a probe", id)
}

func TestCORS(t *testing.T) {
	any := testutil.Start(t, map[string]string{"server": "workers = 1"})
	req := "OPTIONS /sse/a HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: last-event-id\r\nConnection: close\r\n\r\n"
	c, _ := net.Dial("tcp", any.Listen)
	defer c.Close()
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Last-Event-ID") ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "GET") {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	sse := openStream(t, any.Listen, "/sse/cors", "Origin", "https://app.example")
	if got := sse.resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("SSE Access-Control-Allow-Origin = %q", got)
	}

	only := testutil.Start(t, map[string]string{"server": "workers = 1\nallowed_origins = [\"https://app.example\"]"})
	for origin, want := range map[string]string{"https://app.example": "https://app.example", "https://evil.example": ""} {
		req, _ := http.NewRequest("GET", "http://"+only.Listen+"/stream/cors", nil)
		req.Header.Set("Origin", origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != want || resp.Header.Get("Vary") != "Origin" {
			t.Errorf("origin %s: Access-Control-Allow-Origin %q Vary %q, want %q", origin, got, resp.Header.Get("Vary"), want)
		}
	}
}

// curl, a client nobody here wrote, receives published messages on SSE and
// the NDJSON stream.
func TestCurlReceivesMessages(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed: apt-get install curl")
	}
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	for _, path := range []string{"/sse/curly", "/stream/curly"} {
		cmd := exec.Command("curl", "-sN", "http://"+s.Listen+path)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		deadline := time.Now().Add(10 * time.Second)
		found := false
		for !found && time.Now().Before(deadline) {
			id := publish(t, s.API, `{"to":"curly","data":{"via":"curl"}}`)[0]
			want := fmt.Sprintf(`{"id":%d,"data":{"via":"curl"}}`, id)
			timeout := time.After(300 * time.Millisecond)
		read:
			for {
				select {
				case l := <-lines:
					if strings.Contains(l, want) {
						found = true
						break read
					}
				case <-timeout:
					break read
				}
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		if !found {
			t.Errorf("curl %s never printed a published message", path)
		}
	}
}
