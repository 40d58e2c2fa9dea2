package test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/megacomet/megacomet/internal/testutil"
)

// signedToken is a client token with the tests' secret and these claims
// (an hour to live unless they say).
func signedToken(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	if claims["exp"] == nil {
		claims["exp"] = time.Now().Add(time.Hour).Unix()
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(clientSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// sseStatus is the status a GET /sse/PATH?token=TOK gets, and its body
// when it is not 200.
func sseStatus(t *testing.T, s *testutil.Server, id, tok string) string {
	t.Helper()
	resp, _ := cometGET(t, s.Listen, "/sse/"+id+"?token="+tok)
	if resp.StatusCode == 200 {
		return "200"
	}
	var e struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&e)
	return fmt.Sprintf("%d %s", resp.StatusCode, e.Error)
}

// POST /revoke: an id's older tokens are refused and its live connections
// end as an expired token's do; one token by jti; listed; kept across a
// reload and a crash (manager.state_dir); bad requests refused in a line.
func TestRevoke(t *testing.T) {
	state := filepath.Join(testutil.ShortTempDir(t), "state")
	cfg := func() map[string]string {
		return map[string]string{"server": "workers = 2\ndrain = \"1s\"", "manager": fmt.Sprintf("state_dir = %q", state)}
	}
	s := startAuthServer(t, cfg())
	now := time.Now().Unix()
	old := signedToken(t, jwt.MapClaims{"sub": "alice", "iat": now - 100})
	noIat := signedToken(t, jwt.MapClaims{"sub": "alice"})
	fresh := signedToken(t, jwt.MapClaims{"sub": "alice", "iat": now})
	bob := signedToken(t, jwt.MapClaims{"sub": "bob", "iat": now - 100})
	marked := signedToken(t, jwt.MapClaims{"sub": "carol", "iat": now, "jti": "token-1"})
	other := signedToken(t, jwt.MapClaims{"sub": "carol", "iat": now, "jti": "token-2"})

	live, _ := cometGET(t, s.Listen, "/sse/alice?token="+old)
	cometGET(t, s.Listen, "/sse/bob?token="+bob)
	waitOnline(t, s, "alice")
	waitOnline(t, s, "bob")
	code, body := adminPost(t, s.API, "/revoke", fmt.Sprintf(`{"id":"alice","before":%d}`, now-50))
	if code != 200 || !strings.Contains(body, `"id":"alice"`) {
		t.Fatalf("POST /revoke: %d %s", code, body)
	}
	if err := readUntil(live.Body, "event: expired"); err != nil {
		t.Errorf("alice's live connection: %v", err)
	}
	if code, body := adminPost(t, s.API, "/revoke", fmt.Sprintf(`{"jti":"token-1","until":%d}`, now+3600)); code != 200 {
		t.Fatalf("POST /revoke jti: %d %s", code, body)
	}
	check := func(when string) {
		t.Helper()
		for _, c := range []struct{ id, tok, want string }{
			{"alice", old, "401 token revoked"},
			{"alice", noIat, "401 token revoked"},
			{"alice", fresh, "200"},
			{"carol", marked, "401 token revoked"},
			{"carol", other, "200"},
		} {
			if got := sseStatus(t, s, c.id, c.tok); got != c.want {
				t.Errorf("%s: %s's token: %q, want %q", when, c.id, got, c.want)
			}
		}
	}
	check("revoked")
	if a := presenceOf(t, s, "/presence/bob"); a.Connections != 1 {
		t.Errorf("bob has %d connections, want his 1 untouched", a.Connections)
	}
	code, body, _ = get(t, "http://"+s.API+"/revoke")
	var listed struct{ Revocations []map[string]any }
	if code != 200 || json.Unmarshal([]byte(body), &listed) != nil || len(listed.Revocations) != 2 ||
		listed.Revocations[0]["id"] != "alice" || listed.Revocations[1]["jti"] != "token-1" {
		t.Errorf("GET /revoke: %d %s", code, body)
	}

	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 0, time.Minute)
	check("after a reload")

	// A crash: what state_dir keeps is enough.
	for _, w := range s.MustStats().Workers {
		syscall.Kill(w.PID, syscall.SIGKILL)
	}
	syscall.Kill(s.ManagerPID(), syscall.SIGKILL)
	testutil.CheckFor(t, 30*time.Second, func() error {
		if testutil.PIDAlive(s.ManagerPID()) {
			return fmt.Errorf("the manager lives")
		}
		return nil
	})
	s = startAuthServer(t, cfg())
	check("after a crash")

	for body, want := range map[string]string{
		`{}`:                               `give one of "id" and "jti"`,
		`{"id":"a","jti":"b","until":9}`:   `give one of "id" and "jti"`,
		`{"id":"a b"}`:                     "id: use 1 to 64",
		`{"jti":"x"}`:                      `a jti's revocation needs "until"`,
		`{"jti":"x","before":1,"until":9}`: `"before" goes with "id"`,
		`{"id":"a","before":99999999999}`:  "before: a unix time, not in the future",
		`{"id":"a","until":1}`:             "until: a unix time after now",
		`{"jti":"` + strings.Repeat("j", 257) + `","until":9}`: "jti: 1 to 256 printable",
		`{"id":"a","why":1}`: "body must be one JSON object",
	} {
		code, got := adminPost(t, s.API, "/revoke", body)
		var e struct{ Error string }
		if code != 400 || json.Unmarshal([]byte(got), &e) != nil || !strings.HasPrefix(e.Error, want) || strings.Count(got, "\n") != 1 {
			t.Errorf("%.50s: %d %q, want 400 saying %q", body, code, got, want)
		}
	}
}
