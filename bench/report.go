package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Quantiles are a distribution in milliseconds.
type Quantiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Round is one broadcast (or channel) round as megatest measured it.
type Round struct {
	Quantiles
	Received int64 `json:"received"`
	Expected int64 `json:"expected"`
}

// Ping is megatest's /ping while the connections were held.
type Ping struct {
	Quantiles
	Pings    int64 `json:"pings"`
	Failures int64 `json:"failures"`
}

// CPUSeconds is the CPU time (user + system) each side spent in the run.
type CPUSeconds struct {
	Server   float64 `json:"server"`
	Megatest float64 `json:"megatest"`
}

// Sample is every process's RSS at one moment of a soak.
type Sample struct {
	AtS      float64           `json:"at_s"` // since the connections were held
	RSSBytes map[string]uint64 `json:"rss_bytes"`
	Total    uint64            `json:"total_bytes"`
}

// Target is one of the targets and how this run did against it.
type Target struct {
	Name     string `json:"name"`
	Want     string `json:"want"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Report is c1m-report.json (and bench-report.json, soak-report.json).
type Report struct {
	Kind      string `json:"kind"` // c1m, bench or soak
	Date      string `json:"date"`
	Host      string `json:"host"` // kernel, CPUs, memory
	N         int    `json:"n"`
	Transport string `json:"transport"`
	Heartbeat string `json:"heartbeat"`
	Workers   int    `json:"workers"`

	ConnectionsHeld  uint64  `json:"connections_held"` // the most the server held at once
	Ready            int64   `json:"ready"`            // answered, as megatest saw at the end
	ClosedUnexpected int64   `json:"closed_unexpected"`
	ConnectFailed    int64   `json:"connect_failed"`
	ConnectRate      float64 `json:"connect_rate"`
	ConnectRateAuth  float64 `json:"connect_rate_auth,omitempty"` // the same N again, HS256 tokens required
	// The same N again, asking a connect hook that answers in 1 ms, and
	// with hooks.cache on.
	ConnectRateHook       float64 `json:"connect_rate_hook,omitempty"`
	ConnectRateHookCached float64 `json:"connect_rate_hook_cached,omitempty"`
	HookConnectRatio      float64 `json:"hook_connect_ratio,omitempty"`
	// Events: N connecting then leaving with hooks.events on (linger 0).
	Events           *EventsReport `json:"events,omitempty"`
	AuthConnectRatio float64       `json:"auth_connect_ratio,omitempty"`
	Chat             *ChatReport   `json:"chat,omitempty"` // the -chat round

	ServerBytesPerConn   float64 `json:"server_bytes_per_conn"` // PSS of manager and workers, (at N - at 0) / N
	ServerPSSAt0         uint64  `json:"server_pss_bytes_at_0"`
	ServerPSSAtN         uint64  `json:"server_pss_bytes_at_n"`
	KernelSlabBytesDelta int64   `json:"kernel_slab_bytes_delta"`

	FloorUsPerConn      float64 `json:"floor_us_per_conn"`
	BroadcastFloorMs    float64 `json:"broadcast_floor_ms"` // N × floor / CPUs: no fan-out can be faster here
	BroadcastMs         []Round `json:"broadcast_ms"`
	BroadcastFloorRatio float64 `json:"broadcast_floor_ratio"` // the worst round's max over the floor
	BroadcastP50Ratio   float64 `json:"broadcast_p50_floor_ratio"`

	PingMs              Ping       `json:"ping_ms"`
	HeartbeatLatenessMs Quantiles  `json:"heartbeat_lateness_ms"`
	CPUSeconds          CPUSeconds `json:"cpu_seconds"`

	Published  int64 `json:"published"`
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`

	Samples     []Sample `json:"rss_samples,omitempty"` // soak
	RSSDriftPct float64  `json:"rss_drift_pct"`         // soak: total RSS, 5th minute to the end
	// The same for the server's processes (manager and workers) and for
	// megatest's: megatest's grows by design (its ledger of published ids).
	ServerRSSDriftPct   float64 `json:"server_rss_drift_pct"`
	MegatestRSSDriftPct float64 `json:"megatest_rss_drift_pct"`
	HoldS               float64 `json:"hold_s"`
	MegatestJSON        string  `json:"megatest_summary"` // where megatest's own summary is
	ServerLog           string  `json:"server_log"`       // the manager's and workers' log

	Targets []Target `json:"targets"`
}

// judge fills in Targets from the figures.
func (r *Report) judge() {
	add := func(name, want, measured string, met bool) {
		r.Targets = append(r.Targets, Target{name, want, measured, met})
	}
	add("answered", fmt.Sprintf("%d of %d, 0 unexpected closes", r.N, r.N),
		fmt.Sprintf("%d, %d unexpected closes", r.Ready, r.ClosedUnexpected), r.Ready == int64(r.N) && r.ClosedUnexpected == 0)
	add("heartbeat lateness p99", "≤ 1000 ms", fmt.Sprintf("%.0f ms", r.HeartbeatLatenessMs.P99), r.HeartbeatLatenessMs.P99 <= 1000)
	add("/ping p99 while held", "≤ 20 ms, 0 failed", fmt.Sprintf("%.1f ms, %d failed of %d", r.PingMs.P99, r.PingMs.Failures, r.PingMs.Pings),
		r.PingMs.Pings > 0 && r.PingMs.P99 <= 20 && r.PingMs.Failures == 0)
	if len(r.BroadcastMs) > 0 {
		add("broadcast max / floor", "≤ 1.3", fmt.Sprintf("%.2f (floor %.0f ms)", r.BroadcastFloorRatio, r.BroadcastFloorMs), r.BroadcastFloorRatio <= 1.3)
		add("broadcast p50 / floor", "≤ 1.1", fmt.Sprintf("%.2f", r.BroadcastP50Ratio), r.BroadcastP50Ratio <= 1.1)
	}
	add("server memory", "≤ 400 B/conn", fmt.Sprintf("%.0f B/conn", r.ServerBytesPerConn), r.ServerBytesPerConn > 0 && r.ServerBytesPerConn <= 400)
	add("connect rate", "≥ 15,000/s", fmt.Sprintf("%.0f/s", r.ConnectRate), r.ConnectRate >= 15000)
	if r.ConnectRateAuth > 0 {
		add("connect rate with HS256 auth", "≥ 80 % of without", fmt.Sprintf("%.0f/s, %.0f %%", r.ConnectRateAuth, 100*r.AuthConnectRatio), r.AuthConnectRatio >= 0.8)
	}
	if r.ConnectRateHook > 0 {
		add("connect rate with a 1 ms connect hook", "≥ 50 % of without", fmt.Sprintf("%.0f/s, %.0f %%", r.ConnectRateHook, 100*r.HookConnectRatio), r.HookConnectRatio >= 0.5)
	}
	if e := r.Events; e != nil {
		add("events: each connect and disconnect told", "exactly once", fmt.Sprintf("%d and %d for %d: %v", e.Connects, e.Disconnects, r.N, e.ExactlyOnce), e.ExactlyOnce)
	}
	if r.Published > 0 {
		add("lost, duplicates", "0, 0", fmt.Sprintf("%d, %d", r.Lost, r.Duplicates), r.Lost == 0 && r.Duplicates == 0)
	}
	if len(r.Samples) > 0 {
		add("RSS drift, 5th minute to the end", "≤ 1 %", fmt.Sprintf("%.2f %% (server %.2f %%, megatest %.2f %%)", r.RSSDriftPct, r.ServerRSSDriftPct, r.MegatestRSSDriftPct), r.RSSDriftPct <= 1)
		add("server RSS drift, 5th minute to the end", "≤ 1 %", fmt.Sprintf("%.2f %%", r.ServerRSSDriftPct), r.ServerRSSDriftPct <= 1)
	}
}

// Table prints the report for people.
func (r *Report) Table(w io.Writer) {
	fmt.Fprintf(w, "megacomet %s: %d %s connections, %d workers, heartbeat %s, %s, %s\n",
		r.Kind, r.N, r.Transport, r.Workers, r.Heartbeat, r.Date, r.Host)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, f string, a ...any) { fmt.Fprintf(tw, "  %s\t%s\n", k, fmt.Sprintf(f, a...)) }
	row("connections held / ready", "%d / %d", r.ConnectionsHeld, r.Ready)
	row("closed unexpected / connect failed", "%d / %d", r.ClosedUnexpected, r.ConnectFailed)
	row("connect rate", "%.0f/s", r.ConnectRate)
	if r.ConnectRateAuth > 0 {
		row("connect rate, HS256 tokens", "%.0f/s (%.0f %% of without)", r.ConnectRateAuth, 100*r.AuthConnectRatio)
	}
	if r.ConnectRateHook > 0 {
		row("connect rate, 1 ms connect hook", "%.0f/s (%.0f %% of without); %.0f/s with hooks.cache", r.ConnectRateHook, 100*r.HookConnectRatio, r.ConnectRateHookCached)
	}
	if e := r.Events; e != nil {
		row("events", "%d connects, %d disconnects, exactly once %v; delay p50 %.0f p99 %.0f max %.0f ms; %d requests, %.0f/s",
			e.Connects, e.Disconnects, e.ExactlyOnce, e.DelayMs.P50, e.DelayMs.P99, e.DelayMs.Max, e.Requests, e.RequestsPerSec)
	}
	row("server memory", "%.0f B/conn (PSS %s at %d, %s at 0)", r.ServerBytesPerConn, mib(r.ServerPSSAtN), r.N, mib(r.ServerPSSAt0))
	row("kernel slab", "%+.0f MiB (%.0f B/conn)", float64(r.KernelSlabBytesDelta)/(1<<20), float64(r.KernelSlabBytesDelta)/float64(max(r.N, 1)))
	row("loopback floor", "%.2f µs/conn (a broadcast to %d: ≥ %.0f ms here)", r.FloorUsPerConn, r.N, r.BroadcastFloorMs)
	for i, b := range r.BroadcastMs {
		row(fmt.Sprintf("broadcast %d", i+1), "p50 %.0f  p99 %.0f  max %.0f ms (%.2f× floor); %d of %d", b.P50, b.P99, b.Max, b.Max/r.BroadcastFloorMs, b.Received, b.Expected)
	}
	row("/ping while held", "p50 %.1f  p99 %.1f  max %.1f ms; %d failed of %d", r.PingMs.P50, r.PingMs.P99, r.PingMs.Max, r.PingMs.Failures, r.PingMs.Pings)
	row("heartbeat lateness", "p50 %.0f  p99 %.0f  max %.0f ms", r.HeartbeatLatenessMs.P50, r.HeartbeatLatenessMs.P99, r.HeartbeatLatenessMs.Max)
	row("CPU seconds", "server %.1f, megatest %.1f", r.CPUSeconds.Server, r.CPUSeconds.Megatest)
	if r.Published > 0 {
		row("published / lost / duplicates", "%d / %d / %d", r.Published, r.Lost, r.Duplicates)
	}
	if c := r.Chat; c != nil {
		row("chat", "%d members, %d msgs/s: fan-out p50 %.1f  p99 %.1f  max %.1f ms; lost %d of %d, duplicates %d",
			c.Members, c.Rate, c.LatencyMs.P50, c.LatencyMs.P99, c.LatencyMs.Max, c.Lost, c.Owed, c.Duplicates)
	}
	if n := len(r.Samples); n > 0 {
		row("RSS total", "%s → %s over %d samples; drift from the 5th minute %.2f %% (server %.2f %%, megatest %.2f %%)", mib(r.Samples[0].Total), mib(r.Samples[n-1].Total), n, r.RSSDriftPct, r.ServerRSSDriftPct, r.MegatestRSSDriftPct)
	}
	tw.Flush()
	fmt.Fprintln(w, "targets:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range r.Targets {
		verdict := "met"
		if !t.Met {
			verdict = "NOT MET"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Name, t.Want, t.Measured, verdict)
	}
	tw.Flush()
}

func mib(b uint64) string {
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(b)/(1<<20)), ".0") + " MiB"
}

// EventsReport is the events round: what the application was told when N
// clients connected and then left.
type EventsReport struct {
	Connects    int  `json:"connects"`
	Disconnects int  `json:"disconnects"`
	ExactlyOnce bool `json:"exactly_once"` // every id told connected once and disconnected once
	// DelayMs: from an event happening to the application receiving it.
	DelayMs        Quantiles `json:"delay_ms"`
	Requests       int       `json:"requests"`
	RequestsPerSec float64   `json:"requests_per_s"` // batches a second the application took
}

// quantiles of values (sorted in place); zero for none.
func quantiles(v []float64) Quantiles {
	if len(v) == 0 {
		return Quantiles{}
	}
	slices.Sort(v)
	at := func(q float64) float64 { return v[min(len(v)-1, int(q*float64(len(v))))] }
	return Quantiles{P50: at(0.5), P99: at(0.99), Max: v[len(v)-1]}
}
