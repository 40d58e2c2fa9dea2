package megatest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A connect storm of -tls connections has at most cap(handshakes) TLS
// handshakes in flight: the server here holds every handshake until
// released, and never sees more at once; once released, every connection
// carries bytes both ways through its socket pair.
func TestTLSHandshakesBounded(t *testing.T) {
	const n = 100
	var mu sync.Mutex
	inFlight, most := 0, 0
	release := make(chan struct{})
	cfg := &tls.Config{Certificates: []tls.Certificate{testCert(t)},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			<-release
			mu.Lock()
			inFlight--
			mu.Unlock()
			return nil, nil
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // an echo server behind TLS
				tc := tls.Server(c, cfg)
				defer tc.Close()
				io.Copy(tc, tc)
			}()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	client := &tls.Config{InsecureSkipVerify: true}
	fds := make([]int, n)
	for i := range fds {
		if fds[i], err = openTLS(client, netip.Addr{}, dst); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[i])
	}
	peak := func() int { mu.Lock(); defer mu.Unlock(); return most }
	for deadline := time.Now().Add(time.Minute); peak() < cap(handshakes); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshakes in flight after a minute, want %d", peak(), cap(handshakes))
		}
	}
	// The other dials would be under way by now if nothing held them.
	time.Sleep(200 * time.Millisecond)
	if p := peak(); p != cap(handshakes) {
		t.Errorf("%d TLS handshakes in flight at once, want at most %d", p, cap(handshakes))
	}
	close(release)
	buf := make([]byte, 16)
	for i, fd := range fds {
		unix.SetNonblock(fd, false)
		if _, err := unix.Write(fd, []byte("hello")); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		tv := unix.NsecToTimeval(int64(time.Minute))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		m, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("connection %d: read: %v", i, err)
		}
		if string(buf[:m]) != "hello" {
			t.Fatalf("connection %d: read %q, want the echo", i, buf[:m])
		}
	}
}
