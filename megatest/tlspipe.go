package megatest

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// -tls: each connection goes through TLS, for a server behind a
// terminating proxy (docs/DEPLOY.md). The engine keeps its raw loop and
// parsers: it talks plaintext to one end of a socket pair, and a pair of
// goroutines carries the other end over a crypto/tls connection. That
// costs megatest ~40 KB and three descriptors per connection (TLS state,
// two goroutines and their 4 KB buffers; measured 40 KB at 2,000, ~430 KB
// race-built, where the race detector's shadow memory multiplies it),
// which is fine for the 10^4-10^5 connections a proxy bench holds, not
// for a million: the plaintext path is unchanged.

// tlsFDs is how many descriptors a -tls connection holds in megatest.
const tlsFDs = 3

// tlsConfig is the client TLS config -tls asks for.
func (o *Options) tlsConfig() *tls.Config {
	if !o.TLS {
		return nil
	}
	return &tls.Config{ServerName: o.Host, InsecureSkipVerify: o.TLSInsecure, ClientSessionCache: tls.NewLRUClientSessionCache(1024)}
}

// openTLS returns the engine's end of a socket pair whose other end is
// carried over TLS to dst, from src when it is valid. The pair is
// connected at once; a TLS connection that fails closes it, which the
// engine sees as the server closing.
func openTLS(cfg *tls.Config, src netip.Addr, dst netip.AddrPort) (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return -1, err
	}
	f := os.NewFile(uintptr(fds[1]), "tls-pipe")
	local, err := net.FileConn(f) // a dup
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		return -1, err
	}
	go carryTLS(cfg, src, dst, local)
	return fds[0], nil
}

// handshakes bounds the TLS handshakes in flight in this process. A
// handshake is CPU on both ends: past a few per core more at once only
// make every one of them slower, and under a connect storm (a -rate this
// machine cannot do TLS at, or every client coming back after a reload)
// they would all pass their deadline together. The engine's requests wait
// in their socket pairs meanwhile; the deadline starts once a slot is had.
var handshakes = make(chan struct{}, 64)

// tlsBuf is what each direction of a carried connection reads into:
// requests, frames and messages are small, and a larger TLS record is read
// in pieces (io.Copy's own 32 KB buffers were two thirds of what a
// connection cost).
const tlsBuf = 4 << 10

func carryTLS(cfg *tls.Config, src netip.Addr, dst netip.AddrPort, local net.Conn) {
	defer local.Close()
	handshakes <- struct{}{}
	c, err := dialTLS(cfg, src, dst)
	<-handshakes
	if err != nil {
		return
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		io.CopyBuffer(c, local, make([]byte, tlsBuf)) // the engine's requests and frames, until it closes
		c.Close()
		close(done)
	}()
	io.CopyBuffer(local, c, make([]byte, tlsBuf)) // the server's answers, until it closes
	// Half-close, as a TCP peer's FIN: the engine reads to the end and may
	// still write (a pong, a close echo) as it could on a socket.
	local.(*net.UnixConn).CloseWrite()
	<-done
}

// dialTLS connects to dst (from src when it is valid) and completes the
// TLS handshake within 15 s.
func dialTLS(cfg *tls.Config, src netip.Addr, dst netip.AddrPort) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 15 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	raw, err := d.Dial("tcp", dst.String())
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
