package test

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
)

// handOverStub is an upstream for the proxies that answers each attempt
// at a path as the path's script says, as a worker on its way out would:
//   - "close": read the request, close without a word;
//   - "reset": the same with an RST, as a listen queue that is closed;
//   - "503": the answer a draining worker gives a request it has not
//     answered, byte for byte (worker/http.go, errRetryNow);
//   - "ok": 200, or 101 to a WebSocket upgrade.
//
// The last answer of a script repeats. GET /ping is answered pong (the
// proxies' start check). It takes the PROXY protocol v2 header HAProxy
// sends first.
type handOverStub struct {
	addr    string
	mu      sync.Mutex
	scripts map[string][]string
	tries   map[string]int
}

var handOver503 = func() string {
	body := "this worker is handing its clients over: retry now\n"
	return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n" +
		"Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
}()

func startHandOverStub(t *testing.T) *handOverStub {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &handOverStub{addr: ln.Addr().String(), scripts: map[string][]string{}, tries: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c.(*net.TCPConn))
		}
	}()
	return s
}

// script sets what the attempts at path are answered, and forgets the
// attempts so far.
func (s *handOverStub) script(path string, answers []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[path], s.tries[path] = answers, 0
}

// attempts is how many requests for path have come.
func (s *handOverStub) attempts(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tries[path]
}

// proxyV2Sig opens a PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

func (s *handOverStub) serve(c *net.TCPConn) {
	defer c.Close()
	r := bufio.NewReader(c)
	if sig, err := r.Peek(len(proxyV2Sig)); err == nil && bytes.Equal(sig, proxyV2Sig) {
		head := make([]byte, 16)
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		if _, err := r.Discard(int(head[14])<<8 | int(head[15])); err != nil {
			return
		}
	}
	for {
		req, err := http.ReadRequest(r)
		if err != nil {
			return
		}
		if req.URL.Path == "/ping" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
			continue
		}
		s.mu.Lock()
		script := s.scripts[req.URL.Path]
		n := s.tries[req.URL.Path]
		s.tries[req.URL.Path]++
		s.mu.Unlock()
		answer := "ok"
		if len(script) > 0 {
			answer = script[min(n, len(script)-1)]
		}
		switch answer {
		case "close":
			return
		case "reset":
			c.SetLinger(0)
			return
		case "503":
			io.WriteString(c, handOver503)
			return
		}
		if key := req.Header.Get("Sec-WebSocket-Key"); key != "" {
			sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
		return
	}
}
