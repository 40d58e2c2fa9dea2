package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The auth keys that narrow what a token may do, and the API's origins and
// host names: they load, and a bad value is one line naming its key.
func TestTokenAndAPIGuardKeys(t *testing.T) {
	secret := strings.Repeat("s", MinSecret)
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte(`[api]
allowed_origins = ["https://ops.example.com"]
allowed_hosts = ["push-api.internal", "10.0.0.5"]
[auth]
secret = "`+secret+`"
audience = "push"
issuer = "https://app.example.com"
default_channels = ["news", "team-*"]
`), 0o644)
	o, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if o.Auth.Audience != "push" || o.Auth.Issuer != "https://app.example.com" || !reflect.DeepEqual(o.Auth.DefaultChannels, []string{"news", "team-*"}) ||
		!reflect.DeepEqual(o.API.AllowedOrigins, []string{"https://ops.example.com"}) || !reflect.DeepEqual(o.API.AllowedHosts, []string{"push-api.internal", "10.0.0.5"}) {
		t.Errorf("not applied: auth %+v api %+v", o.Auth, o.API)
	}
	if d := Default(); d.Auth.Audience != "" || d.Auth.Issuer != "" || len(d.Auth.DefaultChannels) != 0 || len(d.API.AllowedOrigins) != 0 || len(d.API.AllowedHosts) != 0 {
		t.Errorf("defaults: auth %+v api %+v, want all empty", d.Auth, d.API)
	}

	for in, want := range map[string]string{
		"[auth]\naudience = \"push\"\n":                                       "auth.audience",
		"[auth]\nissuer = \"me\"\n":                                           "auth.issuer",
		"[auth]\ndefault_channels = [\"news\"]\n":                             "auth.default_channels",
		"[auth]\nsecret = \"" + secret + "\"\naudience = \" push\"\n":         "auth.audience",
		"[auth]\nsecret = \"" + secret + "\"\nissuer = \"a\\nb\"\n":           "auth.issuer",
		"[auth]\nsecret = \"" + secret + "\"\ndefault_channels = [\"a b\"]\n": "auth.default_channels",
		"[auth]\nsecret = \"" + secret + "\"\ndefault_channels = [\"a**\"]\n": "auth.default_channels",
		"[auth]\nsecret = \"" + secret + "\"\ndefault_channels = \"news\"\n":  "auth.default_channels",
		"[auth]\nsecret = \"" + secret + "\"\naudience = 1\n":                 "auth.audience",
		"[api]\nallowed_origins = [\"*\"]\n":                                  "api.allowed_origins",
		"[api]\nallowed_origins = [\"evil.example\"]\n":                       "api.allowed_origins",
		"[api]\nallowed_origins = [\"https://a.example/path\"]\n":             "api.allowed_origins",
		"[api]\nallowed_hosts = [\"push.example:9000\"]\n":                    "api.allowed_hosts",
		"[api]\nallowed_hosts = [\"http://push.example\"]\n":                  "api.allowed_hosts",
		"[api]\nallowed_hosts = [\"\"]\n":                                     "api.allowed_hosts",
	} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte(in), 0o644)
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line naming %s", in, err, want)
		}
	}
}
