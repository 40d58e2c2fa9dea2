//go:build linux

package megatest

import (
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
)

// -token-secret with -channels: each connection's token lets it join the
// channel it asks for, by the server's own rule (a token without a
// channels claim joins none).
func TestTokensAllowTheirChannels(t *testing.T) {
	const secret = "megatest-unit-test-secret-of-32-bytes"
	f := newFake(t)
	runMegatest(t, f, "-n 4 -channels 3 -hold 100ms -token-secret "+secret)
	v, err := auth.New(&config.Auth{Secret: secret, Required: true})
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.requestList()
	if len(reqs) < 4 {
		t.Fatalf("requests %q", reqs)
	}
	for _, r := range reqs {
		u, err := url.Parse(r)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		c, err := v.Verify(q.Get("token"), path.Base(u.Path))
		if err != nil {
			t.Fatalf("%s: %v", u.Path, err)
		}
		for _, ch := range strings.Split(q.Get("channels"), ",") {
			if ch == "" || !c.Allows(ch) {
				t.Errorf("%s: channel %q, token allows %q", u.Path, ch, c.Channels)
			}
		}
	}
}
