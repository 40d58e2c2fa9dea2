package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestShippedConfigIsTheDefaults(t *testing.T) {
	o, err := Load("../etc/megacomet.toml")
	if err != nil {
		t.Fatal(err)
	}
	if d := Default(); !reflect.DeepEqual(o, d) {
		t.Errorf("etc/megacomet.toml differs from Default():\n file    %+v\n default %+v", o, d)
	}
}

// Every key of Options must be documented in etc/megacomet.toml.
func TestShippedConfigDocumentsEveryKey(t *testing.T) {
	b, err := os.ReadFile("../etc/megacomet.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	ot := reflect.TypeOf(Options{})
	for i := 0; i < ot.NumField(); i++ {
		sec := ot.Field(i)
		table := sec.Tag.Get("toml")
		if !strings.Contains(text, "["+table+"]") {
			t.Errorf("table [%s] not documented", table)
		}
		for j := 0; j < sec.Type.NumField(); j++ {
			key := sec.Type.Field(j).Tag.Get("toml")
			if key == "-" {
				continue // not a key: filled in by Load
			}
			if !strings.Contains(text, "\n"+key+" = ") && !strings.Contains(text, "\n# "+key+" = ") {
				t.Errorf("key %s.%s not documented", table, key)
			}
		}
	}
}

func TestLoadOverlaysDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte("[server]\nworkers = 53\nallowed_origins = [\"https://a.example\"]\n[comet]\nheartbeat = \"2s\"\n"), 0o644)
	o, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if o.Server.Workers != 53 || o.Comet.Heartbeat.D() != 2*time.Second {
		t.Errorf("values not applied: %+v", o)
	}
	if !reflect.DeepEqual(o.Server.AllowedOrigins, []string{"https://a.example"}) {
		t.Errorf("allowed_origins = %v: a list replaces the default", o.Server.AllowedOrigins)
	}
	if o.Server.Listen != Default().Server.Listen || o.Comet.HistorySize != 100 {
		t.Errorf("unset keys lost their defaults: %+v", o)
	}
}

// cluster.nats is one URL, a comma list, or an array; empty is alone.
func TestClusterURLs(t *testing.T) {
	for in, want := range map[string][]string{
		`nats = ""`:                                          nil,
		`nats = "nats://a:4222"`:                             {"nats://a:4222"},
		`nats = "nats://a:4222, nats://b:4222"`:              {"nats://a:4222", "nats://b:4222"},
		`nats = ["nats://a:4222", "tls://b:4222,ws://c:80"]`: {"nats://a:4222", "tls://b:4222", "ws://c:80"},
	} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte("[cluster]\n"+in+"\n"), 0o644)
		o, err := Load(path)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !reflect.DeepEqual([]string(o.Cluster.NATS), want) || o.Cluster.On() != (want != nil) {
			t.Errorf("%s: %q (on %v), want %q", in, o.Cluster.NATS, o.Cluster.On(), want)
		}
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	cases := map[string]string{
		"[server]\nworkers = \"x\"\n":                                 "server.workers",
		"[server]\nfoo = 1\n":                                         "unknown key server.foo",
		"[server]\nlisten = \"nope\"\n":                               "server.listen",
		"[server]\nlisten = \"example.com:80\"\n":                     "server.listen",
		"[server]\ndrain = \"0s\"\n":                                  "server.drain",
		"[server]\nallowed_origins = [\"ftp://x\"]\n":                 "server.allowed_origins",
		"[server]\ntransports = [\"ws\", \"comet\"]\n":                "server.transports",
		"[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n":             "server.trusted_proxies",
		"[server]\ntrusted_proxies = [\"nginx\"]\n":                   "server.trusted_proxies",
		"[server]\ntransports = []\n":                                 "server.transports",
		"[server]\ntransports = [\"ws\", \"ws\"]\n":                   "server.transports",
		"[api]\nlisten = \"10.0.0.1:9000\"\n":                         "api.token",
		"[manager]\nlog_level = \"loud\"\n":                           "manager.log_level",
		"[manager]\nsocket = \"/" + strings.Repeat("s", 200) + "\"\n": "manager.socket",
		"[comet]\nheartbeat = \"1ms\"\n":                              "comet.heartbeat",
		"[comet]\nhistory_size = -1\n":                                "comet.history_size",
		"[comet]\nhistory_size = 0\n":                                 "comet.history_size",
		"[comet]\nhistory_ttl = \"0s\"\n":                             "comet.history_ttl",
		"[comet]\nmax_replay = -1\n":                                  "comet.max_replay",
		"[comet]\nws_ping_rate = 0\n":                                 "comet.ws_ping_rate",
		"[comet]\nws_fragment_timeout = \"10ms\"\n":                   "comet.ws_fragment_timeout",
		"[comet]\nws_fragment_timeout = \"2h\"\n":                     "comet.ws_fragment_timeout",
		"[manager]\nworker_stall_timeout = \"500ms\"\n":               "manager.worker_stall_timeout",
		"[comet]\nhistory_max_bytes = 10\n":                           "comet.history_max_bytes",
		"[api]\nmax_batch = 0\n":                                      "api.max_batch",
		"[api]\nmax_conns = 0\n":                                      "api.max_conns",
		"[server]\nmax_header_bytes = 10\n":                           "server.max_header_bytes",
		"[server]\nmax_conns_per_ip = -1\n":                           "server.max_conns_per_ip",
		"[server]\ntcp_keepalive = \"10ms\"\n":                        "server.tcp_keepalive",
		"[manager]\nstate_dir = \"\"\n":                               "manager.state_dir",
		"[comet]\nmax_pending = 10\n":                                 "comet.max_pending",
		"[comet]\npoll_timeout = \"-1s\"\n":                           "comet.poll_timeout",
		"[cluster]\nnats = \"http://x:4222\"\n":                       "cluster.nats",
		"[cluster]\nnats = 4222\n":                                    "cluster.nats",
		"[cluster]\nnode = \"a.b\"\n":                                 "cluster.node",
		"[cluster]\nstream = \"s>\"\n":                                "cluster.stream",
		"[cluster]\nreplicas = 7\n":                                   "cluster.replicas",
		"[cluster]\npublish_timeout = \"1ms\"\n":                      "cluster.publish_timeout",
		"[cluster]\ntls_cert = \"c.pem\"\n":                           "cluster.tls_cert",
		"[cluster]\nuser = \"u\"\n":                                   "cluster.user",
	}
	for in, want := range cases {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte(in), 0o644)
		_, err := Load(path)
		if err == nil {
			t.Errorf("%q: accepted", in)
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: error %v is not ErrInvalid", in, err)
		}
		if msg := err.Error(); !strings.Contains(msg, want) || strings.Contains(msg, "\n") || !strings.Contains(msg, path) {
			t.Errorf("%q: error %q should be one line naming %q and the file", in, msg, want)
		}
	}
}

func TestTokenAllowsPublicAPI(t *testing.T) {
	o := Default()
	o.API.Listen, o.API.Token = "0.0.0.0:9000", "s3cret"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Auth keys that do not fit together, or a key that cannot be used, are
// errors that name the key; the ones that fit load, with required on.
func TestAuthConfig(t *testing.T) {
	dir := t.TempDir()
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	writeKey := func(name string, pub any) string {
		b, _ := x509.MarshalPKIXPublicKey(pub)
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: b}), 0o644)
		return p
	}
	good, small := writeKey("ec.pem", ek.Public()), writeKey("rsa1024.pem", weak.Public())
	secret := strings.Repeat("s", MinSecret)
	for in, want := range map[string]string{
		"secret = \"short\"\n": "auth.secret",
		"secret = \"" + secret + "\"\npublic_key = \"" + good + "\"\n": "auth.secret",
		"required = true\n": "auth.required",
		"cookie = \"mc\"\n": "auth.cookie",
		"secret = \"" + secret + "\"\ncookie = \"a b\"\n": "auth.cookie",
		"secret = \"" + secret + "\"\ncookie = \"mc\"\n":  "server.allowed_origins",
		"public_key = \"" + small + "\"\n":                "auth.public_key",
		"public_key = \"" + dir + "/none.pem\"\n":         "auth.public_key",
	} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte("[auth]\n"+in), 0o644)
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line naming %s", in, err, want)
		}
	}
	for in, required := range map[string]bool{
		"secret = \"" + secret + "\"\n":                    true,
		"public_key = \"" + good + "\"\n":                  true,
		"secret = \"" + secret + "\"\nrequired = false\n":  false,
		"secret = \"" + secret + "\"\ncookie = \"mc_t\"\n": true,
	} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte("[server]\nallowed_origins = [\"https://app.example\"]\n[auth]\n"+in), 0o644)
		o, err := Load(path)
		if err != nil || o.Auth.Required != required || !o.Auth.On() {
			t.Errorf("%q: %v, required %v on %v", in, err, o.Auth.Required, o.Auth.On())
		}
	}
}
