package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
)

const secret = "a shared secret of at least 32 bytes"

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// megacomet -t warns, in one line on stderr and still exiting 0, when a
// shared secret checks tokens and neither aud nor iss narrows them.
func TestCheckWarnsOfABareSharedSecret(t *testing.T) {
	for text, warns := range map[string]bool{
		"":                                      false,
		"[auth]\nsecret = \"" + secret + "\"\n": true,
		"[auth]\nsecret = \"" + secret + "\"\naudience = \"push\"\n":      false,
		"[auth]\nsecret = \"" + secret + "\"\nissuer = \"app.example\"\n": false,
	} {
		var out, errs bytes.Buffer
		code := run([]string{"-t", "-config", writeConfig(t, text)}, &out, &errs)
		msg := errs.String()
		if code != 0 || !strings.HasSuffix(out.String(), ": ok\n") {
			t.Errorf("%q: exit %d, %q %q", text, code, out.String(), msg)
		}
		if got := msg != ""; got != warns || warns && (strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "auth.audience") || !strings.Contains(msg, "auth.issuer") || strings.Contains(msg, secret)) {
			t.Errorf("%q: stderr %q, want a warning: %v", text, msg, warns)
		}
	}
}

// megacomet token signs what the config checks: its aud and iss, and the
// channels asked for; without -channels, auth.default_channels applies.
func TestTokenCarriesTheConfigsAudience(t *testing.T) {
	path := writeConfig(t, "[auth]\nsecret = \""+secret+"\"\naudience = \"push\"\nissuer = \"app.example\"\n")
	opts, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.New(&opts.Auth)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(args ...string) *auth.Claims {
		t.Helper()
		var out, errs bytes.Buffer
		if code := run(append([]string{"token", "-config", path, "-id", "alice"}, args...), &out, &errs); code != 0 {
			t.Fatalf("token %v: exit %d %s", args, code, errs.String())
		}
		c, err := v.Verify(strings.TrimSpace(out.String()), "alice")
		if err != nil {
			t.Fatalf("token %v: %v", args, err)
		}
		return c
	}
	if c := mint(); c.Allows("news") {
		t.Error("a token minted without -channels joins any channel")
	}
	if c := mint("-channels", "news,team-*"); !c.Allows("news") || !c.Allows("team-1") || c.Allows("sport") {
		t.Errorf("-channels news,team-*: %q", c.Channels)
	}
	if c := mint("-channels", "*"); !c.Allows("sport") {
		t.Errorf("-channels *: %q", c.Channels)
	}
	// Minted elsewhere, without the aud, it is refused.
	other, _ := auth.Mint([]byte(secret), "alice", []string{"*"}, time.Hour, time.Now())
	if _, err := v.Verify(other, "alice"); err != auth.ErrAudience && err != auth.ErrIssuer {
		t.Errorf("a token without aud or iss: %v", err)
	}
}
