package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// A reload never closes a connection without notice, even one the old
// worker has not answered: a client that connected and has not sent its
// request yet, and an idle keep-alive between two requests, each get a 503
// with Retry-After from the draining worker - a bare FIN there is what
// megatest saw as "closed before any answer" across reloads.
func TestReloadAnswersConnectionsNotAnsweredYet(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 1\ndrain = \"1s\""})
	quiet, err := net.Dial("tcp", s.Listen) // connected, request not sent yet
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	idle, err := net.Dial("tcp", s.Listen) // answered once, kept alive
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ping: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	testutil.CheckFor(t, time.Minute, func() error {
		if c := s.MustStats().Connections; c != 2 {
			return fmt.Errorf("%d connections, want 2", c)
		}
		return nil
	})

	s.Signal(syscall.SIGHUP)
	for _, cl := range []struct {
		name string
		c    net.Conn
		r    *bufio.Reader
	}{{"a connection that sent nothing", quiet, bufio.NewReader(quiet)}, {"an idle keep-alive", idle, br}} {
		name, r := cl.name, cl.r
		cl.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Errorf("%s: %v (the draining worker closed it without an answer)", name, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !resp.Close {
			t.Errorf("%s: %d, Retry-After %q, close %v, %q; want 503 with Retry-After and Connection: close",
				name, resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close, body)
		}
		if !strings.Contains(string(body), "retry") {
			t.Errorf("%s: body %q does not say to retry", name, body)
		}
	}
	waitGeneration(t, s, 2, 1, 0, 2*time.Minute)
}
