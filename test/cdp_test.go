package test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/megacomet/megacomet/internal/testutil"
)

// cdpPage is one page of headless Chromium driven over the DevTools
// protocol (a WebSocket, JSON commands and events): it evaluates
// expressions in the page, takes screenshots, and collects every error
// the page's console shows - exceptions, console.error, and the browser's
// own log entries such as a failed request.
type cdpPage struct {
	t       *testing.T
	mu      sync.Mutex
	conn    interface{ Close() error }
	send    func([]byte) error
	session string
	nextID  int
	waiting map[int]chan json.RawMessage
	errors  []string
}

var devtoolsURL = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// openCDP starts Chromium with remote debugging (and flags) and opens url
// in a page.
func openCDP(t *testing.T, url string, flags ...string) *cdpPage {
	t.Helper()
	args := append(append(chromiumFlags(t), flags...), "--remote-debugging-port=0", "--window-size=1280,900", "about:blank")
	cmd := exec.Command(chromiumBin(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log testutil.SyncBuffer
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.Write([]byte(sc.Text() + "\n"))
			if m := devtoolsURL.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		killGroup(cmd)
		if t.Failed() {
			t.Logf("chromium:\n%s", log.String())
		}
	})
	var browser string
	select {
	case browser = <-found:
	case <-time.After(60 * time.Second):
		t.Fatalf("chromium did not open its DevTools port:\n%s", log.String())
	}
	c, _, _, err := ws.Dial(context.Background(), browser)
	if err != nil {
		t.Fatal(err)
	}
	p := &cdpPage{t: t, conn: c, waiting: map[int]chan json.RawMessage{},
		send: func(b []byte) error { return wsutil.WriteClientText(c, b) }}
	t.Cleanup(func() { c.Close() })
	go p.read(func() ([]byte, error) { return wsutil.ReadServerText(c) })
	var target struct{ TargetID string }
	p.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var att struct{ SessionID string }
	p.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	p.session = att.SessionID
	for _, domain := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		p.call(p.session, domain, nil, nil)
	}
	p.call(p.session, "Page.navigate", map[string]any{"url": url}, nil)
	return p
}

// read dispatches answers to their callers and keeps the page's errors.
func (p *cdpPage) read(next func() ([]byte, error)) {
	for {
		b, err := next()
		if err != nil {
			return
		}
		var m struct {
			ID     int             `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		p.mu.Lock()
		if ch, ok := p.waiting[m.ID]; ok && m.ID != 0 {
			delete(p.waiting, m.ID)
			if m.Error != nil {
				m.Result = m.Error
			}
			ch <- m.Result
		}
		switch m.Method {
		case "Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded":
			if e := pageError(m.Method, m.Params); e != "" {
				p.errors = append(p.errors, e)
			}
		}
		p.mu.Unlock()
	}
}

// pageError is an event's error text, "" when it is not an error.
func pageError(method string, params json.RawMessage) string {
	var ev struct {
		Type  string `json:"type"`
		Entry struct {
			Level, Text, URL string
		} `json:"entry"`
		ExceptionDetails struct {
			Text      string
			Exception struct{ Description string }
		} `json:"exceptionDetails"`
		Args []struct{ Value any }
	}
	json.Unmarshal(params, &ev)
	switch {
	case method == "Runtime.exceptionThrown":
		return "exception: " + ev.ExceptionDetails.Text + " " + ev.ExceptionDetails.Exception.Description
	case method == "Runtime.consoleAPICalled" && ev.Type == "error":
		return fmt.Sprintf("console.error: %v", ev.Args)
	case method == "Log.entryAdded" && ev.Entry.Level == "error":
		return "log: " + ev.Entry.Text + " " + ev.Entry.URL
	}
	return ""
}

// call sends a command and decodes its result into out (when not nil).
func (p *cdpPage) call(session, method string, params any, out any) {
	p.t.Helper()
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	ch := make(chan json.RawMessage, 1)
	p.waiting[id] = ch
	p.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	b, _ := json.Marshal(msg)
	if err := p.send(b); err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
	select {
	case res := <-ch:
		if out != nil {
			if err := json.Unmarshal(res, out); err != nil {
				p.t.Fatalf("%s: %v: %s", method, err, res)
			}
		}
	case <-time.After(60 * time.Second):
		p.t.Fatalf("%s: no answer from chromium", method)
	}
}

// eval returns what expression evaluates to in the page, as a string.
func (p *cdpPage) eval(expression string) string {
	p.t.Helper()
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
	}
	p.call(p.session, "Runtime.evaluate", map[string]any{"expression": expression, "returnByValue": true}, &r)
	if r.Result.Value == nil {
		return ""
	}
	return fmt.Sprint(r.Result.Value)
}

// screenshot is the page as a PNG.
func (p *cdpPage) screenshot() []byte {
	p.t.Helper()
	var r struct{ Data string }
	p.call(p.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &r)
	b, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

// consoleErrors is what the page's console showed as errors so far.
func (p *cdpPage) consoleErrors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.errors...)
}

// digits keeps the digits of a rendered number ("12,345" → "12345").
func digits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}
