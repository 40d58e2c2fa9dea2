package test

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// The stats JSON has every field of the contract, on the socket and the API.
func TestStatsJSONHasContractFields(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	hold(t, s.Listen, "counted")
	_, apiBody, _ := get(t, "http://"+s.API+"/stats")
	for _, raw := range []string{string(mustCLIStats(t, s)), apiBody} {
		var st map[string]any
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{
			"":        {"connections", "workers", "manager", "host"},
			"manager": {"pid", "rss_bytes", "published", "retained", "uptime_s"},
			"host":    {"load1", "mem_total_bytes", "mem_used_bytes"},
			"workers": {"slot", "pid", "cpu", "connections", "rss_bytes", "cpu_percent", "restarts", "messages_out"},
		}
		for section, keys := range want {
			obj := st
			switch section {
			case "":
			case "workers":
				ws, _ := st["workers"].([]any)
				if len(ws) != 2 {
					t.Fatalf("workers = %v", st["workers"])
				}
				obj, _ = ws[1].(map[string]any)
			default:
				obj, _ = st[section].(map[string]any)
			}
			for _, k := range keys {
				if _, ok := obj[k]; !ok {
					t.Errorf("stats %s has no %q: %s", section, k, raw)
				}
			}
		}
	}
}

// mustCLIStats is what `megacomet stats -json` prints, byte for byte.
func mustCLIStats(t *testing.T, s *testutil.Server) []byte {
	t.Helper()
	out, err := exec.Command(s.Bin, "stats", "-json", "-socket", s.Socket).Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMetricsAndStatusPage(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2", "api": `token = "t0k"`})
	base := "http://" + s.API
	for _, path := range []string{"/metrics", "/status", "/stats"} {
		if code, _, _ := get(t, base+path); code != 401 {
			t.Errorf("%s without token: %d", path, code)
		}
	}
	code, body, _ := get(t, base+"/metrics?access_token=t0k")
	for _, want := range []string{"megacomet_connections ", "megacomet_published_total ", `megacomet_worker_connections{slot="1",state="ready"}`, "go_goroutines"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, no %q", code, want)
		}
	}
	if code, body, _ := get(t, base+"/nothing?access_token=t0k"); code != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("unknown path: %d %s", code, body)
	}

	// The status page is HTML whose script opens "status/events" -
	// relative to /status, so /status/events - with the page's own
	// access_token. (TestBrowserStatusPage renders it as a browser does.)
	code, page, h := get(t, base+"/status?access_token=t0k")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Fatalf("/status: %d %s", code, h.Get("Content-Type"))
	}
	if !strings.Contains(page, `"status/events"`) || !strings.Contains(page, "access_token") {
		t.Errorf("the status page does not read its events with its access_token:\n%s", page)
	}
	hold(t, s.Listen, "watched")
	live := waitHeld(t, s, 1, 10*time.Second)
	code, body, h = get(t, base+"/stats?access_token=t0k")
	var st manager.Stats
	if err := json.Unmarshal([]byte(body), &st); code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") || err != nil {
		t.Fatalf("/stats as the page reads it: %d %s %v: %s", code, h.Get("Content-Type"), err, body)
	}
	// The /metrics scrape above turned the manager's /ping probes on: a
	// probe may be open for a millisecond, so IDs says who is held.
	if st.IDs != 1 || st.Connections < 1 || st.Manager.PID != s.Cmd.Process.Pid || len(st.Workers) != len(live.Workers) {
		t.Errorf("/stats: %d connections, manager %d, %d workers; the server has 1, %d, %d",
			st.Connections, st.Manager.PID, len(st.Workers), s.Cmd.Process.Pid, len(live.Workers))
	}
	for i, w := range st.Workers {
		if i < len(live.Workers) && (w.PID != live.Workers[i].PID || w.State != "ready") {
			t.Errorf("/stats worker %d: pid %d %s; the server's is pid %d", w.Slot, w.PID, w.State, live.Workers[i].PID)
		}
	}
}
