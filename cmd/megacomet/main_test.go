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

// writeConfig writes a config only its owner reads, as one with secrets
// should be (TestCheckWarnsOfAReadableConfigWithSecrets).
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
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

// megacomet -t (and the manager's start log: both say warnings()) warns in
// one line when a config that holds secrets is readable by users besides
// the server's: it names the keys and the file, never a value, and says
// what to chmod. A group-readable file whose group is the server's own is
// fine (640), another group's is not.
func TestCheckWarnsOfAReadableConfigWithSecrets(t *testing.T) {
	const (
		token    = "an API token nobody else should read"
		password = "a NATS password"
		urlPass  = "pass-in-the-url"
	)
	narrowed := "[auth]\nsecret = \"" + secret + "\"\naudience = \"push\"\n"
	cluster := "[api]\ntoken = \"" + token + "\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nuser = \"mc\"\npassword = \"" + password + "\"\n"
	inURL := "[cluster]\nnats = \"nats://mc:" + urlPass + "@127.0.0.1:4222\"\n"
	cases := []struct {
		name, text string
		mode       os.FileMode
		gid        int // -1: ours
		keys       []string
	}{
		{"owner only", narrowed, 0o600, -1, nil},
		{"world-readable", narrowed, 0o644, -1, []string{"auth.secret", "all users"}},
		{"others only", cluster, 0o604, -1, []string{"api.token", "cluster.password", "all users"}},
		{"a URL's password", inURL, 0o644, -1, []string{"cluster.nats"}},
		{"no secrets", "[server]\nworkers = 2\n", 0o644, -1, nil},
		{"our group", narrowed, 0o640, -1, nil},
		{"another group", narrowed, 0o640, 65534, []string{"auth.secret", "group", "gid 65534"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.gid >= 0 && os.Geteuid() != 0 {
				t.Skip("giving a file another group needs root")
			}
			path := writeConfig(t, tc.text)
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.gid >= 0 {
				if err := os.Chown(path, -1, tc.gid); err != nil {
					t.Fatal(err)
				}
			}
			var out, errs bytes.Buffer
			code := run([]string{"-t", "-config", path}, &out, &errs)
			msg := errs.String()
			if code != 0 || out.String() != path+": ok\n" {
				t.Errorf("exit %d, %q %q", code, out.String(), msg)
			}
			if tc.keys == nil {
				if msg != "" {
					t.Errorf("stderr %q, want no warning", msg)
				}
				return
			}
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "megacomet: warning: "+path+" ") || !strings.Contains(msg, "chmod 600 "+path) || !strings.Contains(msg, "chmod 640") {
				t.Errorf("stderr %q, want one line naming the file and what to chmod", msg)
			}
			for _, k := range tc.keys {
				if !strings.Contains(msg, k) {
					t.Errorf("stderr %q does not say %q", msg, k)
				}
			}
			for _, v := range []string{secret, token, password, urlPass} {
				if strings.Contains(msg, v) {
					t.Errorf("stderr %q shows a secret's value", msg)
				}
			}
		})
	}
}
