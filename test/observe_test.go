package test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
)

// Metrics people can plug in (issue 17): Prometheus' own checker on
// /metrics and on the alert rules we ship, the dashboard's queries against
// the metrics that exist, and the status page's event stream.

func promtool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: `make deps` installs Debian's prometheus, which has it")
	}
	return bin
}

// metricsText is /metrics of a server that holds a connection and has
// published a message.
func metricsText(t *testing.T) string {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	hold(t, s.Listen, "m")
	waitHeld(t, s, 1, 10*time.Second)
	publish(t, s.API, `{"to":"m","data":1}`)
	var body string
	testutil.CheckFor(t, 30*time.Second, func() error {
		var code int
		code, body, _ = get(t, "http://"+s.API+"/metrics")
		if code != 200 || !strings.Contains(body, "megacomet_ping_p99_seconds") {
			return &os.PathError{Op: "GET", Path: "/metrics", Err: os.ErrNotExist} // not measured yet
		}
		return nil
	})
	return body
}

func TestPromtoolChecksMetricsAndRules(t *testing.T) {
	bin := promtool(t)
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(metricsText(t))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "check", "rules", "../etc/prometheus/alerts.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// Every metric the dashboard and the alerts ask for is one /metrics has.
func TestDashboardAndAlertsUseOurMetrics(t *testing.T) {
	metrics := metricsText(t)
	b, err := os.ReadFile("../etc/grafana/megacomet.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil || len(d.Panels) < 6 {
		t.Fatalf("etc/grafana/megacomet.json: %v, %d panels", err, len(d.Panels))
	}
	rules, _ := os.ReadFile("../etc/prometheus/alerts.yml")
	exprs := []string{string(rules)}
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	name := regexp.MustCompile(`megacomet_[a-z0-9_]+`)
	for _, e := range exprs {
		for _, m := range name.FindAllString(e, -1) {
			if !strings.Contains(metrics, "\n"+m+" ") && !strings.Contains(metrics, "\n"+m+"{") {
				t.Errorf("%s is asked for but /metrics has no such metric", m)
			}
		}
	}
}

// GET /status/events: a point a second, pushed, with what the page shows.
func TestStatusEventsStream(t *testing.T) {
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	hold(t, s.Listen, "e")
	waitHeld(t, s, 1, 10*time.Second)
	resp, err := http.Get("http://" + s.API + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("%d %s", resp.StatusCode, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	var last int64
	for seen := 0; seen < 3; {
		if !sc.Scan() {
			t.Fatalf("the stream ended: %v", sc.Err())
		}
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var p struct {
			T           int64   `json:"t"`
			Connections uint64  `json:"connections"`
			PingP99     float64 `json:"ping_p99_ms"`
			Workers     []struct{ PID int }
		}
		if err := json.Unmarshal([]byte(data), &p); err != nil {
			t.Fatalf("%v: %s", err, data)
		}
		if p.T <= last || len(p.Workers) != 2 {
			t.Fatalf("point %s after t=%d", data, last)
		}
		last = p.T
		if p.Connections == 1 && p.PingP99 > 0 {
			seen++
		}
	}
}
