package test

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/megacomet/megacomet/internal/testutil"
)

// The security review's reproductions against the API, with curl: a page
// open in any browser on the machine POSTs a text/plain broadcast (no
// preflight needed), or a JSON one from its own origin; a DNS-rebinding
// page reads /stats, /presence and the status feed under its own name.
// Each is one line of refusal and publishes nothing; the listed origin,
// the status page's own origin, curl and a lowercase "bearer" are served.
func TestAPIRefusesCrossSiteRequests(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1",
		"api": "token = \"t0k\"\nallowed_origins = [\"https://ops.example\"]"})
	api := "http://" + s.API
	_, port, _ := net.SplitHostPort(s.API)
	const (
		bearer = "Authorization: Bearer t0k"
		ctJSON = "Content-Type: application/json"
		csrf   = `{"broadcast":true,"data":"forged"}`
	)
	before := s.MustStats().Manager.Published
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		reason string
	}{
		{"text/plain, as a page's fetch or form sends it", []string{"-H", bearer, "-H", "Content-Type: text/plain", "-H", "Origin: " + api, "-d", csrf, api + "/publish"},
			415, "Content-Type must be application/json"},
		{"a form", []string{"-H", bearer, "-d", csrf, api + "/publish"}, 415, "Content-Type must be application/json"},
		{"JSON from another site's page", []string{"-H", bearer, "-H", ctJSON, "-H", "Origin: http://evil.example", "-d", csrf, api + "/publish"},
			403, "origin not accepted"},
		{"DNS rebinding: /stats", []string{"-H", bearer, "-H", "Host: evil.example:" + port, api + "/stats"}, 421, "host not accepted"},
		{"DNS rebinding: /presence", []string{"-H", bearer, "-H", "Host: evil.example:" + port, api + "/presence/victim"}, 421, "host not accepted"},
		{"DNS rebinding: publish", []string{"-H", bearer, "-H", ctJSON, "-H", "Host: evil.example:" + port, "-d", csrf, api + "/publish"}, 421, "host not accepted"},
	} {
		status, body := curl(t, tc.args...)
		if status != tc.status || !strings.HasPrefix(body, `{"error":"`+tc.reason) || strings.Count(body, "\n") != 1 || strings.Contains(body, "evil") {
			t.Errorf("%s: %d %q, want %d with one line of %q", tc.name, status, body, tc.status, tc.reason)
		}
	}
	// The status feed from a rebinding page: refused before it streams.
	if code := openStatusFeed(t, s.API, "evil.example:"+port, ""); code != 421 {
		t.Errorf("DNS rebinding: /status/events answered %d, want 421", code)
	}
	if after := s.MustStats().Manager.Published; after != before {
		t.Fatalf("refused requests published %d messages", after-before)
	}

	// Served: the named origin (told so, for CORS), a lowercase scheme,
	// curl as the README shows it, and the status page from its own origin.
	status, body := curl(t, "-i", "-H", bearer, "-H", ctJSON, "-H", "Origin: https://ops.example", "-d", `{"to":"ops","data":1}`, api+"/publish")
	if status != 200 || !strings.Contains(body, "Access-Control-Allow-Origin: https://ops.example\r\n") {
		t.Errorf("from api.allowed_origins: %d %q", status, body)
	}
	if status, body := curl(t, "-H", "Authorization: bearer t0k", "-H", ctJSON, "-d", `{"to":"ops","data":2}`, api+"/publish"); status != 200 {
		t.Errorf("lowercase bearer: %d %q", status, body)
	}
	if status, body := curl(t, "-H", bearer, "-H", "Host: localhost:"+port, api+"/stats"); status != 200 || !json.Valid([]byte(body)) {
		t.Errorf("/stats as localhost: %d %.100q", status, body)
	}
	if after := s.MustStats().Manager.Published; after != before+2 {
		t.Errorf("published %d, want the 2 accepted", after-before)
	}
	if status, body := curl(t, "-H", "Origin: "+api, api+"/status?access_token=t0k"); status != 200 || !strings.Contains(body, `"status/events"`) {
		t.Errorf("the status page: %d %.100q", status, body)
	}
	if code := openStatusFeed(t, s.API, s.API, api); code != 200 {
		t.Errorf("the status page's feed, from its own origin: %d", code)
	}
}

// openStatusFeed opens GET /status/events as host, with origin when not
// "", and returns the status, closing the stream.
func openStatusFeed(t *testing.T, api, host, origin string) int {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+api+"/status/events?access_token=t0k", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
