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
// strings (each must be there exactly once) replaced, written to dir.
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
		if n := strings.Count(s, repl[i]); n != 1 {
			t.Fatalf("etc/%s has %q %d times, the test expects it once", file, repl[i], n)
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
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

// perAddress is max_conns_per_ip in these tests (a cap per worker): above
// what each of megatest's 40 source addresses holds (250, over two
// workers), far below the 10,000 the proxy's one address would be if
// megacomet counted it.
const perAddress = 300

// throughProxy: megatest holds 10,000 connections through the proxy with
// TLS, 5,000 SSE and 5,000 WebSocket, publishing to them; the server is
// reloaded; nothing is lost, no connection fails or closes unannounced,
// and the per-address cap counted the clients' addresses, not the
// proxy's; then a 301st connection from one address is refused.
func throughProxy(t *testing.T, s *testutil.Server, port int) {
	const n = 5000
	var loads []*megatestRun
	for i, tr := range []string{"sse", "ws"} {
		loads = append(loads, runMegatestOn(t, "127.0.0.1", s.API, string(rune('p'+i)), "-port", fmt.Sprint(port),
			"-tls", "-tls-insecure", "-transport", tr, "-n", fmt.Sprint(n), "-rate", "3000", "-pub", "100",
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
		if sum.ConnectFailed != 0 || sum.ClosedUnexpected != 0 || sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 || sum.Published == 0 {
			t.Errorf("%s: connect_failed %d, closed_unexpected %d, lost %d, duplicates %d, publish_errors %d (published %d)",
				sum.Transport, sum.ConnectFailed, sum.ClosedUnexpected, sum.Lost, sum.Duplicates, sum.PublishErrors, sum.Published)
		}
		if sum.Reconnects < n {
			t.Errorf("%s: %d reconnects: every connection should have been handed over", sum.Transport, sum.Reconnects)
		}
	}
	// One address's cap (per worker: two here), through the proxy: the
	// connections past it are answered 429 (and megatest retries them).
	one := runMegatestOn(t, "127.0.0.1", s.API, "r", "-port", fmt.Sprint(port), "-tls", "-tls-insecure",
		"-n", fmt.Sprint(2*perAddress+50), "-src", "127.0.1.200")
	s.WaitStats(t, 2*time.Minute, func(st manager.Stats) error {
		if r := workerSum(st, func(w manager.WorkerStats) uint64 { return w.PerIPRefused }); r == 0 || st.Connections > 2*perAddress {
			return fmt.Errorf("%d connections, %d refused past max_conns_per_ip; want at most %d and some", st.Connections, r, 2*perAddress)
		}
		return nil
	})
	one.stop(t, time.Minute)
}

// deploySetup is a certificate in dir, megacomet with these server lines
// too, and a port for the proxy.
func deploySetup(t *testing.T, server string) (dir string, s *testutil.Server, port int) {
	if testing.Short() {
		t.Skip("10,000 TLS connections")
	}
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	dir = t.TempDir()
	selfSigned(t, dir)
	s = testutil.Start(t, map[string]string{"server": fmt.Sprintf("workers = 2\ndrain = \"2s\"\nmax_conns_per_ip = %d\n%s", perAddress, server)})
	return dir, s, testutil.FreePort(t)
}

func TestDeployNginxTLS(t *testing.T) {
	dir, s, port := deploySetup(t, `trusted_proxies = ["127.0.0.1"]`)
	conf := deployConfig(t, "nginx/megacomet.conf", dir,
		"listen 443 ssl", fmt.Sprintf("listen 127.0.0.1:%d ssl", port),
		"server 127.0.0.1:8000", "server "+s.Listen,
		"/etc/megacomet/tls/fullchain.pem", filepath.Join(dir, "fullchain.pem"),
		"/etc/megacomet/tls/privkey.pem", filepath.Join(dir, "privkey.pem"),
		"/run/nginx-megacomet.pid", filepath.Join(dir, "nginx.pid"),
		"/var/log/nginx/megacomet-error.log", filepath.Join(dir, "error.log"))
	startProxy(t, port, sbin(t, "nginx"), "-c", conf, "-g", "daemon off;")
	throughProxy(t, s, port)
}

func TestDeployHAProxyTLS(t *testing.T) {
	dir, s, port := deploySetup(t, "proxy_protocol = true")
	conf := deployConfig(t, "haproxy/megacomet.cfg", dir,
		"bind :443 ssl", fmt.Sprintf("bind 127.0.0.1:%d ssl", port),
		"server megacomet 127.0.0.1:8000", "server megacomet "+s.Listen,
		"/etc/megacomet/tls/haproxy.pem", filepath.Join(dir, "haproxy.pem"))
	// Two HAProxy processes on the port (it binds with SO_REUSEPORT): on
	// these machines one process may not hold more than 20,000 files, so
	// one HAProxy carries at most 9,990 clients.
	startProxy(t, port, sbin(t, "haproxy"), "-f", conf, "-db")
	startProxy(t, port, sbin(t, "haproxy"), "-f", conf, "-db")
	throughProxy(t, s, port)
}
