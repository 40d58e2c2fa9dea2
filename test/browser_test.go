package test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// chromium starts headless Chromium on url and stops it when the test
// ends. make test installs Debian's chromium; without it the test fails
// (MEGACOMET_SKIP_BROWSER=1 skips it on a machine that cannot have one).
func chromium(t *testing.T, url string) {
	t.Helper()
	cmd := exec.Command(chromiumBin(t), append(chromiumFlags(t), url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var log testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killGroup(cmd)
		if t.Failed() {
			t.Logf("chromium output:\n%s", log.String())
		}
	})
}

// chromiumBin is the browser's path; it skips or fails the test without one.
func chromiumBin(t *testing.T) string {
	t.Helper()
	if os.Getenv("MEGACOMET_SKIP_BROWSER") != "" {
		t.Skip("MEGACOMET_SKIP_BROWSER is set")
	}
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed (make test installs it: apt-get install chromium)")
	}
	return bin
}

func chromiumFlags(t *testing.T) []string {
	// Its own profile dir, removed after the browser is killed (cleanups
	// run last first) and retried: the browser's helper processes may
	// still be writing for a moment after it.
	dir, err := os.MkdirTemp("", "chromium")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; os.RemoveAll(dir) != nil && i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-dev-shm-usage", "--user-data-dir=" + dir}
}

// killGroup kills a browser started with Setpgid and all its helpers.
func killGroup(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
}

// renderedDOM loads url in headless Chromium and returns the page as its
// scripts left it. Virtual time runs for two seconds of the page's timers,
// and stands still while a fetch is under way, so a page that renders what
// it fetched shows it, however slow the machine.
func renderedDOM(t *testing.T, url string) (string, error) {
	t.Helper()
	bin := chromiumBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(chromiumFlags(t), "--virtual-time-budget=2000", "--dump-dom", url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("chromium --dump-dom %s: %v\n%s", url, err, stderr.Bytes())
	}
	return string(out), nil
}

// page serves html (with WORKER replaced by the worker address) from its
// own origin and collects what the page reports to /report?m=….
func page(t *testing.T, html, worker string) (url string, reports chan string) {
	reports = make(chan string, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, strings.ReplaceAll(html, "WORKER", worker))
		case "/report":
			reports <- r.URL.Query().Get("m")
			w.WriteHeader(204)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/", reports
}

// waitReport publishes probes until the page reports one, then publishes
// the real message and returns what the page reports for it.
func waitReport(t *testing.T, api, id string, reports chan string, data string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		publish(t, api, `{"to":"`+id+`","data":"probe"}`)
		select {
		case <-reports:
			for len(reports) > 0 {
				<-reports
			}
			publish(t, api, `{"to":"`+id+`","data":`+data+`}`)
			timeout := time.After(10 * time.Second)
			for {
				select {
				case r := <-reports:
					if !strings.Contains(r, "probe") {
						return r
					}
				case <-timeout:
					t.Fatal("the page stopped reporting")
				}
			}
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatal("the page never received a probe")
	return ""
}

const jsonpPage = `<!doctype html><html><body><script>
var since = 0;
function poll() {
  var s = document.createElement("script");
  s.src = "http://WORKER/browser.js?callback=got" + (since ? "&since=" + since : "");
  s.onerror = function () { setTimeout(poll, 200); };
  document.body.appendChild(s);
}
function got(msgs) {
  for (var i = 0; i < msgs.length; i++) {
    since = msgs[i].id;
    new Image().src = "/report?m=" + encodeURIComponent(JSON.stringify(msgs[i]));
  }
  poll();
}
poll();
</script></body></html>`

// A JSONP <script> long-poll in a real browser, from another origin, on
// the original MegaComet URL /ID.js.
func TestBrowserJSONPLongPoll(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	url, reports := page(t, jsonpPage, s.Listen)
	chromium(t, url)
	got := waitReport(t, s.API, "browser", reports, `{"hello":"browser"}`)
	if !strings.Contains(got, `"data":{"hello":"browser"}`) {
		t.Errorf("the page reported %s", got)
	}
}

const eventSourcePage = `<!doctype html><html><body><script>
var es = new EventSource("http://WORKER/sse/browser-es");
es.onmessage = function (e) {
  new Image().src = "/report?m=" + encodeURIComponent(e.lastEventId + " " + e.data);
};
</script></body></html>`

// EventSource from another origin (CORS) receives published messages, and
// sees the SSE id as lastEventId.
func TestBrowserEventSource(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	url, reports := page(t, eventSourcePage, s.Listen)
	chromium(t, url)
	got := waitReport(t, s.API, "browser-es", reports, `"from the server"`)
	var id uint64
	var data string
	if _, err := fmt.Sscanf(got, "%d %s", &id, &data); err != nil || !strings.Contains(got, fmt.Sprintf(`{"id":%d,"data":"from the server"}`, id)) {
		t.Errorf("the page reported %q", got)
	}
}

// The status page in headless Chromium, driven over the DevTools
// protocol, while megatest holds connections: it shows what megacomet
// stats says, follows more clients connecting, draws its charts, goes on
// through a SIGHUP, and the console shows no error. Behind api.token too,
// which the page takes from its own URL. Its screenshot is the test's
// artifact (MEGACOMET_UPDATE_DOCS=1 also writes docs/status.png).
func TestBrowserStatusPage(t *testing.T) {
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1s\"", "api": `token = "t0k"`})
	first := runMegatest(t, s, "s", "-n", "2000", "-token", "t0k", "-pub", "50")
	waitHeld(t, s, 2000, 3*time.Minute)
	p := openCDP(t, "http://"+s.API+"/status?access_token=t0k")
	shows := func(n uint64) {
		t.Helper()
		testutil.CheckFor(t, time.Minute, func() error {
			st := statsCLI(t, s)
			if got := digits(p.eval(`document.getElementById("connections").textContent`)); got != fmt.Sprint(n) || st.Connections != n {
				return fmt.Errorf("the page shows %q connections, megacomet stats %d, want %d", got, st.Connections, n)
			}
			return nil
		})
	}
	shows(2000)
	second := runMegatest(t, s, "u", "-n", "1000", "-token", "t0k")
	shows(3000)
	points := func() int {
		n, _ := strconv.Atoi(p.eval(`document.getElementById("c-conns").dataset.points || "0"`))
		return n
	}
	testutil.CheckFor(t, time.Minute, func() error {
		if n := points(); n < 3 {
			return fmt.Errorf("the connections chart has %d points", n)
		}
		return nil
	})
	if rows := p.eval(`document.querySelectorAll("#workers tr").length`); rows != "2" {
		t.Errorf("the worker table has %s rows, want 2", rows)
	}

	before := points()
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, 3000, 3*time.Minute)
	testutil.CheckFor(t, time.Minute, func() error {
		sub := p.eval(`document.getElementById("sub").textContent`)
		if !strings.Contains(sub, "generation 2") || points() <= before+2 {
			return fmt.Errorf("after the SIGHUP the page shows %q, %d points (%d before)", sub, points(), before)
		}
		return nil
	})
	shows(3000)
	png := p.screenshot()
	os.WriteFile(filepath.Join(t.ArtifactDir(), "status.png"), png, 0o644)
	if os.Getenv("MEGACOMET_UPDATE_DOCS") != "" {
		os.WriteFile("../docs/status.png", png, 0o644)
	}
	if errs := p.consoleErrors(); len(errs) > 0 {
		t.Errorf("the console showed errors: %q", errs)
	}
	first.stop(t, time.Minute)
	second.stop(t, time.Minute)
}
