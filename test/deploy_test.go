package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// megacomet behind the proxies of docs/DEPLOY.md, with TLS: the files in
// etc/nginx and etc/haproxy, as the doc shows them, with only the paths,
// ports and upstream of the test put in.

// selfSigned writes a certificate for 127.0.0.1 and localhost and its key
// as nginx (fullchain.pem, privkey.pem) and HAProxy (haproxy.pem: both)
// take them.
func selfSigned(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "megacomet test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	priv := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	for name, b := range map[string][]byte{"fullchain.pem": cert, "privkey.pem": priv, "haproxy.pem": append(cert, priv...)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// deployConfig is etc/FILE as docs/DEPLOY.md shows it, with each of repl's
// strings (each must be there) replaced wherever it stands, written to dir.
func deployConfig(t *testing.T, file, dir string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile("../etc/" + file)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := os.ReadFile("../docs/DEPLOY.md")
	if !strings.Contains(string(doc), string(b)) {
		t.Fatalf("docs/DEPLOY.md does not show etc/%s as it is", file)
	}
	s := string(b)
	for i := 0; i+1 < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("etc/%s has no %q, which the test replaces", file, repl[i])
		}
		s = strings.ReplaceAll(s, repl[i], repl[i+1])
	}
	out := filepath.Join(dir, filepath.Base(file))
	if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// sbin finds a daemon that Debian puts in /usr/sbin, which a user's PATH
// may not have.
func sbin(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/sbin/" + name; fileExists(p) {
		return p
	}
	t.Fatalf("%s is not installed (make deps installs it)", name)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// startProxy runs a proxy in the foreground until the test ends and waits
// until https://127.0.0.1:port/ping answers pong through it.
func startProxy(t *testing.T, port int, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var log testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("%s:\n%s", filepath.Base(name), log.String())
		}
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	testutil.CheckFor(t, 30*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("%s exited:\n%s", name, log.String())
		default:
		}
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/ping", port))
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "pong" {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	})
}

// The proxies as docs/DEPLOY.md shows them, listening with TLS on port
// and forwarding to upstream, with only paths, ports and the upstream put
// in. HAProxy sends the PROXY protocol to it, nginx X-Forwarded-For.
var proxies = []struct {
	name  string
	start func(t *testing.T, dir string, port int, upstream string)
}{
	{"nginx", func(t *testing.T, dir string, port int, upstream string) {
		conf := deployConfig(t, "nginx/megacomet.conf", dir,
			"listen 443 ssl", fmt.Sprintf("listen 127.0.0.1:%d ssl", port),
			"server 127.0.0.1:8000", "server "+upstream,
			"/etc/megacomet/tls/fullchain.pem", filepath.Join(dir, "fullchain.pem"),
			"/etc/megacomet/tls/privkey.pem", filepath.Join(dir, "privkey.pem"),
			"/run/nginx-megacomet.pid", filepath.Join(dir, "nginx.pid"),
			"/var/log/nginx/megacomet-error.log", filepath.Join(dir, "error.log"))
		startProxy(t, port, sbin(t, "nginx"), "-c", conf, "-g", "daemon off;")
	}},
	{"haproxy", func(t *testing.T, dir string, port int, upstream string) {
		conf := deployConfig(t, "haproxy/megacomet.cfg", dir,
			"bind :443 ssl", fmt.Sprintf("bind 127.0.0.1:%d ssl", port),
			"server megacomet 127.0.0.1:8000", "server megacomet "+upstream,
			"/etc/megacomet/tls/haproxy.pem", filepath.Join(dir, "haproxy.pem"))
		startProxy(t, port, sbin(t, "haproxy"), "-f", conf, "-db")
	}},
}

// perAddress is max_conns_per_ip in these tests (a cap per worker): above
// what each of megatest's 40 source addresses holds (25, over two
// workers), far below the 1,000 the proxy's one address would be if
// megacomet counted it.
const perAddress = 100

// throughProxy: megatest holds 1,000 connections through the proxy with
// TLS, 500 SSE and 500 WebSocket, publishing to them; the server is
// reloaded; nothing is lost, no connection fails or closes unannounced,
// and the per-address cap counted the clients' addresses, not the
// proxy's; then connections past the cap from one address are refused.
func throughProxy(t *testing.T, s *testutil.Server, port int) {
	const n = 500
	var loads []*megatestRun
	for i, tr := range []string{"sse", "ws"} {
		loads = append(loads, runMegatestOn(t, "127.0.0.1", s.API, string(rune('p'+i)), "-port", fmt.Sprint(port),
			"-tls", "-tls-insecure", "-transport", tr, "-n", fmt.Sprint(n), "-pub", "100",
			"-src", "127.0.1.1-127.0.1.40"))
	}
	first := waitHeld(t, s, 2*n, 4*time.Minute)
	for _, l := range loads {
		l.waitMessages(t, 100)
	}
	if refused := workerSum(first, func(w manager.WorkerStats) uint64 { return w.PerIPRefused }); refused != 0 {
		t.Errorf("%d connections refused past max_conns_per_ip: megacomet counted the proxy's address", refused)
	}
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 2*n, 4*time.Minute)
	for _, l := range loads {
		l.waitMessages(t, l.progress("msgs")+100) // delivery goes on after the reload
	}
	for _, l := range loads {
		_, sum := l.stop(t, 2*time.Minute)
		t.Logf("megatest %s: %+v", sum.Transport, sum)
		if sum.ConnectFailed != 0 || sum.HTTPErrors != 0 || sum.ClosedUnexpected != 0 || sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 || sum.Published == 0 {
			t.Errorf("%s: connect_failed %d, http_errors %d, closed_unexpected %d, lost %d, duplicates %d, publish_errors %d (published %d)",
				sum.Transport, sum.ConnectFailed, sum.HTTPErrors, sum.ClosedUnexpected, sum.Lost, sum.Duplicates, sum.PublishErrors, sum.Published)
		}
		if sum.Reconnects < n {
			t.Errorf("%s: %d reconnects: every connection should have been handed over", sum.Transport, sum.Reconnects)
		}
	}
	// One address's cap (per worker: two here), through the proxy: the
	// connections past it are answered 429 (and megatest retries them).
	// Its clients are counted on their channel (GET /channels): the SSE
	// streams megatest left stay open behind the proxy until a heartbeat
	// finds them gone, and refused connections linger a moment.
	one := runMegatestOn(t, "127.0.0.1", s.API, "r", "-port", fmt.Sprint(port), "-tls", "-tls-insecure",
		"-n", fmt.Sprint(2*perAddress+50), "-src", "127.0.1.200", "-channels", "1")
	s.WaitStats(t, 2*time.Minute, func(st manager.Stats) error {
		_, held := channelsOf(t, s, "prefix=r-c")
		if r := workerSum(st, func(w manager.WorkerStats) uint64 { return w.PerIPRefused }); r == 0 || held != fmt.Sprintf("r-c0:%d", 2*perAddress) {
			return fmt.Errorf("held %q, %d refused past max_conns_per_ip; want %d (the cap on each worker) and some", held, r, 2*perAddress)
		}
		return nil
	})
	one.stop(t, time.Minute)
}

// Through each proxy with TLS: megatest's clients across a reload of
// megacomet, and the per-address cap. The kernel is as a fresh machine has
// it (net.ipv4.tcp_migrate_req 0): connections queued on a worker as it
// leaves the port are reset, and the proxy's retries must hide that too.
func TestDeployTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 TLS connections through each proxy")
	}
	testutil.Sysctl(t, testutil.DefaultKernel)
	for _, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			dir := t.TempDir()
			selfSigned(t, dir)
			server := fmt.Sprintf("workers = 2\ndrain = \"2s\"\nmax_conns_per_ip = %d\n", perAddress)
			if p.name == "haproxy" {
				server += "proxy_protocol = true"
			} else {
				server += `trusted_proxies = ["127.0.0.1"]`
			}
			s := testutil.Start(t, map[string]string{"server": server})
			port := testutil.FreePort(t)
			p.start(t, dir, port, s.Listen)
			throughProxy(t, s, port)
		})
	}
}

// What the proxies do with a request that meets a worker on its way out,
// against an upstream that answers as a draining worker would: closed
// unanswered, reset, or the hand-over's 503 with Retry-After. Each is sent
// again, and the client gets the answer of the attempt that succeeds; when
// every attempt gets the 503, the client gets it, Retry-After and all.
func TestDeployProxiesRetryAHandOver(t *testing.T) {
	for _, p := range proxies {
		t.Run(p.name, func(t *testing.T) {
			dir := t.TempDir()
			selfSigned(t, dir)
			up := startHandOverStub(t)
			port := testutil.FreePort(t)
			p.start(t, dir, port, up.addr)
			client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
			for _, tc := range []struct {
				name    string
				answers []string // the stub's answers to the attempts, the last one repeated
				ws      bool
				status  int
			}{
				{"closed unanswered", []string{"close", "ok"}, false, 200},
				{"reset", []string{"reset", "ok"}, false, 200},
				{"hand-over 503", []string{"503", "ok"}, false, 200},
				{"hand-over 503 to a WebSocket upgrade", []string{"503", "ok"}, true, 101},
				{"twice", []string{"close", "503", "ok"}, false, 200},
				{"every attempt 503", []string{"503"}, false, 503},
			} {
				path := "/sse/" + strings.ReplaceAll(tc.name, " ", "_")
				up.script(path, tc.answers)
				req, _ := http.NewRequest("GET", fmt.Sprintf("https://127.0.0.1:%d%s", port, path), nil)
				if tc.ws {
					req.Header.Set("Connection", "Upgrade")
					req.Header.Set("Upgrade", "websocket")
					req.Header.Set("Sec-WebSocket-Version", "13")
					req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				resp.Body.Close()
				attempts := up.attempts(path)
				t.Logf("%s: %d after %d attempts", tc.name, resp.StatusCode, attempts)
				if resp.StatusCode != tc.status {
					t.Errorf("%s: the client got %d, want %d", tc.name, resp.StatusCode, tc.status)
				}
				if tc.status == 503 {
					if attempts < 3 {
						t.Errorf("%s: %d attempts: the proxy gave up without retrying", tc.name, attempts)
					}
					if ra := resp.Header.Get("Retry-After"); ra != "0" {
						t.Errorf("%s: Retry-After %q reached the client, want the hand-over's 0", tc.name, ra)
					}
				} else if attempts != len(tc.answers) {
					t.Errorf("%s: %d attempts, want %d", tc.name, attempts, len(tc.answers))
				}
			}
		})
	}
}
