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
// costs megatest ~50 KB and three descriptors per connection (TLS state,
// two goroutines), which is fine for the 10^4-10^5 connections a proxy
// test holds, not for a million: the plaintext path is unchanged.

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

func carryTLS(cfg *tls.Config, src netip.Addr, dst netip.AddrPort, local net.Conn) {
	defer local.Close()
	d := net.Dialer{Timeout: 15 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	raw, err := d.Dial("tcp", dst.String())
	if err != nil {
		return
	}
	c := tls.Client(raw, cfg)
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := c.Handshake(); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		io.Copy(c, local) // the engine's requests and frames, until it closes
		c.Close()
		close(done)
	}()
	io.Copy(local, c) // the server's answers, until it closes
	// Half-close, as a TCP peer's FIN: the engine reads to the end and may
	// still write (a pong, a close echo) as it could on a socket.
	local.(*net.UnixConn).CloseWrite()
	<-done
}
