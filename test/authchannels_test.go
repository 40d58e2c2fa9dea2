package test

import (
	"strings"
	"testing"
	"time"
)

// A token with no channels claim joins no channel - not every one - on a
// connect's channels= and on a WebSocket subscribe; its own id it always
// may. auth.default_channels is what such a token may join, and "any"
// takes an explicit ["*"].
func TestTokenWithoutChannelsClaim(t *testing.T) {
	refused := func(t *testing.T, base, query, channel string) {
		t.Helper()
		status, body := curl(t, base+"/lp/alice?"+query)
		if want := `{"error":"token does not allow channel ` + channel + `"}`; status != 403 || body != want+"\n" {
			t.Errorf("%s: %d %q, want 403 %s", query[:strings.Index(query, "token=")], status, body, want)
		}
	}
	served := func(t *testing.T, base, query, data string) {
		t.Helper()
		if status, body := curl(t, base+"/lp/alice?since=0&"+query); status != 200 || !strings.Contains(body, data) {
			t.Errorf("%s: %d %q, want 200 with %s", query[:strings.Index(query, "token=")], status, body, data)
		}
	}

	s := startAuthServer(t, nil)
	base := "http://" + s.Listen
	tok := mintToken(t, s, "alice") // no -channels: no claim
	refused(t, base, "channels=news&token="+tok, "news")
	publish(t, s.API, `{"to":"alice","data":"for alice"}`)
	served(t, base, "token="+tok, "for alice")
	ws := dialChat(t, s.Listen, "/ws/alice?token="+tok)
	ws.send(t, `{"subscribe":"news"}`)
	for {
		f, err := ws.next(30 * time.Second)
		if err != nil {
			t.Fatalf("no answer to a subscribe without a channels claim: %v", err)
		}
		if f.Error != "" {
			if f.Error != "token does not allow channel news" {
				t.Errorf("subscribe: %+v", f)
			}
			break
		}
	}

	s = startAuthServer(t, map[string]string{"auth": `default_channels = ["news"]`})
	base = "http://" + s.Listen
	tok = mintToken(t, s, "alice")
	publish(t, s.API, `{"channel":"news","data":"headline"}`)
	publish(t, s.API, `{"channel":"sport","data":"score"}`)
	served(t, base, "channels=news&token="+tok, "headline")
	refused(t, base, "channels=news,sport&token="+tok, "sport")
	served(t, base, "channels=sport&token="+mintToken(t, s, "alice", "-channels", "*"), "score")
}
