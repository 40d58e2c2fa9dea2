package worker

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	jsclient "github.com/megacomet/megacomet/clients/js"
	"github.com/megacomet/megacomet/config"
)

// GET /megacomet.js is the embedded client with a day's cache and its
// ETag; a revalidation with that ETag is a 304 without the body; HEAD is
// the head; each on a keep-alive connection.
func TestClientJSServedWithETag(t *testing.T) {
	h := startWorker(t, nil)
	c := h.dialRaw()
	c.write([]byte("GET /megacomet.js HTTP/1.1\r\nHost: x\r\n\r\n"))
	got := c.readN(len(clientJS))
	head, body, _ := bytes.Cut(got, []byte("\r\n\r\n"))
	if !bytes.Equal(body, jsclient.Source) {
		t.Fatalf("the body is not clients/js/megacomet.js")
	}
	for _, want := range []string{"HTTP/1.1 200 OK\r\n", "Content-Type: text/javascript", "Cache-Control: public, max-age=86400\r\n",
		"ETag: " + jsclient.ETag + "\r\n", "Access-Control-Allow-Origin: *\r\n"} {
		if !strings.Contains(string(head), want) {
			t.Errorf("the answer lacks %q:\n%s", want, head)
		}
	}
	for _, inm := range []string{jsclient.ETag, `W/` + jsclient.ETag, `"old", ` + jsclient.ETag, "*"} {
		c.write([]byte("GET /megacomet.js HTTP/1.1\r\nIf-None-Match: " + inm + "\r\n\r\n"))
		if got := c.readN(len(clientJS304)); !bytes.Equal(got, clientJS304) || !bytes.HasPrefix(got, []byte("HTTP/1.1 304 ")) {
			t.Errorf("If-None-Match %s: got %q", inm, got)
		}
	}
	c.write([]byte("GET /megacomet.js HTTP/1.1\r\nIf-None-Match: \"old\"\r\n\r\nHEAD /megacomet.js HTTP/1.1\r\nConnection: close\r\n\r\n"))
	if got := c.readAll(); !bytes.Equal(got, append(slices.Clip(clientJS), clientJSHead...)) {
		t.Errorf("a stale ETag then HEAD: got %d bytes, want the script then its head", len(got))
	}
}

// Serving the client allocates nothing per request.
func TestClientJSAllocatesNothing(t *testing.T) {
	h := startWorker(t, nil)
	c := h.dialRaw()
	req := []byte("GET /megacomet.js HTTP/1.1\r\nIf-None-Match: " + jsclient.ETag + "\r\n\r\n")
	get := func() {
		c.write(req)
		c.readN(len(clientJS304))
	}
	get()
	if n := testing.AllocsPerRun(1000, get); n != 0 {
		t.Errorf("%.2f allocations per revalidation", n)
	}
}

// A transport server.transports leaves out is a 404 that says so, with
// CORS, so a page can read it; the others are served.
func TestTransportsOff(t *testing.T) {
	h := startWorker(t, func(o *config.Options) { o.Server.Transports = []string{"sse", "lp"} })
	for path, want := range map[string]*httpError{
		"/ws/a": errTransportOff[trWS], "/stream/a": errTransportOff[trStream],
	} {
		c := h.dialRaw()
		c.write([]byte("GET " + path + " HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
		if got := c.readAll(); !bytes.Equal(got, want.resp) {
			t.Errorf("%s: got %q", path, got)
		}
	}
	if !strings.Contains(string(errTransportOff[trWS].resp), "404 Not Found\r\n") ||
		!strings.Contains(string(errTransportOff[trWS].resp), "Access-Control-Allow-Origin: *\r\n") ||
		!strings.HasSuffix(string(errTransportOff[trWS].resp), "transport ws is not enabled on this server (server.transports)\n") {
		t.Errorf("the answer is %q", errTransportOff[trWS].resp)
	}
	c := h.dialRaw()
	c.write([]byte("GET /sse/a HTTP/1.1\r\n\r\n"))
	if got := c.readN(17); string(got) != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("sse: got %q", got)
	}
}
