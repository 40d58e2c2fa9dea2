package manager

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/megacomet/megacomet/hooks"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics exposes the stats snapshot in Prometheus' text format. It is a
// collector over Snapshot, so a scrape costs what a stats request costs and
// the figures are the ones `megacomet stats` shows.
type metrics struct {
	m    *Manager
	desc map[string]*prometheus.Desc
}

var metricHelp = []struct{ name, help string }{
	{"connections", "Client connections held by all workers."},
	{"capacity", "Connections all ready workers accept before refusing."},
	{"refused_total", "Connections refused because workers were full."},
	{"published_total", "Messages published."},
	{"retained_messages", "Messages kept for replay."},
	{"history_bytes", "Bytes of message bodies kept for replay."},
	{"history_evicted_total", "Messages evicted from history before their TTL for comet.history_max_bytes."},
	{"publish_refused_total", "Publishes answered 503 because a worker was behind on its IPC."},
	{"history_reads_total", "GET /history answers."},
	{"disconnects_total", "POST /disconnect answers."},
	{"channel_reads_total", "GET /channels answers."},
	{"channel_changes_total", "POST /subscribe and /unsubscribe answers."},
	{"revokes_total", "POST /revoke answers."},
	{"worker_revoked_total", "Client connections a worker ended because POST /revoke revoked their id's tokens."},
	{"worker_disconnected_total", "Client connections a worker ended for POST /disconnect."},
	{"worker_channels_full_total", "Client connections POST /subscribe could not add a channel to: they had 16."},
	{"workers_killed_total", "Workers killed for not reading their IPC."},
	{"replays_cut_total", "Joins that asked for more than comet.max_replay messages and got the newest, with a gap announced."},
	{"joins_total", "Subscriptions answered with a replay or deferred: one per connection, one per WebSocket command that changed what it follows."},
	{"replays_partial_total", "Joins whose replay stopped at half of comet.max_pending; the client gets the rest from its cursor."},
	{"joins_deferred_total", "Joins answered later because their worker's IPC queue held more than 16 MiB."},
	{"presence_announced_total", "Presence messages published for comet.presence_events channels."},
	{"presence_held_total", "Due presence announcements that waited a window: that window had published its most."},
	{"ids", "Client ids the workers hold."},
	{"channels", "Channels with a subscriber."},
	{"manager_rss_bytes", "Resident memory of the manager."},
	{"manager_pss_bytes", "Proportional set size of the manager."},
	{"host_load1", "One-minute load average."},
	{"host_memory_used_bytes", "Memory in use on the host."},
	{"worker_connections", "Connections held by a worker."},
	{"worker_rss_bytes", "Resident memory of a worker."},
	{"worker_pss_bytes", "Proportional set size of a worker."},
	{"worker_cpu_percent", "CPU use of a worker."},
	{"worker_restarts_total", "Restarts of a worker slot."},
	{"worker_messages_out_total", "Messages a worker wrote to clients (deliveries; heartbeats are counted apart)."},
	{"worker_heartbeats_total", "Heartbeats a worker wrote."},
	{"worker_slow_consumers_total", "Clients a worker dropped for not reading."},
	{"worker_bad_requests_total", "Requests a worker rejected."},
	{"worker_silent_closed_total", "WebSocket clients a worker closed for not answering its pings."},
	{"worker_loop_lag_seconds", "The worst lateness of a worker's event loop in the last second."},
	{"worker_ticks_over_budget_total", "Ticks of a worker that left due heartbeats for the next one, to serve other events first."},
	{"worker_fan_out_pauses_total", "Broadcasts a worker paused to serve new connections, requests and timers first."},
	{"worker_auth_refused_total", "Requests and subscribes a worker refused for their client token."},
	{"worker_tokens_expired_total", "Connections a worker ended because their client token expired."},
	{"worker_replays_paced_total", "Replays and long-poll answers a worker cut at comet.max_pending; the client gets the rest from its cursor."},
	{"worker_gaps_announced_total", "Gap announcements a worker sent: a replay that left older messages out."},
	{"worker_headers_too_large_total", "Request heads a worker answered 431: over server.max_header_bytes."},
	{"worker_header_timeouts_total", "Requests a worker answered 408: the head did not arrive within server.header_timeout."},
	{"worker_per_ip_refused_total", "Connections a worker refused with 429: past server.max_conns_per_ip for their address."},
	{"worker_proxy_rejected_total", "Connections a worker refused for their PROXY protocol header: malformed, or sent with server.proxy_protocol off."},
	{"worker_keepalive_closed_total", "Connections a worker closed because TCP keepalive probes went unanswered."},
	{"worker_ws_control_limited_total", "WebSocket clients a worker closed (1008) for sending pings or pongs too fast."},
	{"worker_hook_failed_total", "Client connections a worker answered 503 because the application's hook failed, timed out or answered other than documented."},
	{"worker_ws_fragment_closed_total", "WebSocket clients a worker closed (1008) for a fragmented message unfinished past comet.ws_fragment_timeout, or over the worker's bound on such bytes."},
	{"worker_refused_total", "Connections a worker refused because it was full."},
	{"ping_p50_seconds", "Median time of a GET /ping to the client port over the last 10 s, measured by the manager every second."},
	{"ping_p99_seconds", "99th percentile time of a GET /ping to the client port over the last 10 s, measured by the manager every second."},
	{"cluster_connected", "1 while this node's NATS connection is up and the cluster stream is known."},
	{"cluster_last_id", "The newest message id the cluster stream is known to hold."},
	{"cluster_delivered_id", "The newest message id this node has read from the cluster stream and handed to its workers."},
	{"cluster_lag_messages", "Messages in the cluster stream this node has not read yet."},
	{"cluster_published_total", "Messages this node published into the cluster stream."},
	{"cluster_publish_errors_total", "Publishes this node answered 503 because JetStream did not take them."},
	{"cluster_disconnects_total", "Times this node lost its NATS connection."},
	{"cluster_peers", "Other megacomet nodes heard from in the last 3 s: the answers an operator's action waits for."},
	{"hook_calls_total", "Calls to the application's hook, answers from hooks.cache included."},
	{"hook_allowed_total", "Hook answers that allowed."},
	{"hook_denied_total", "Hook answers that refused: the client got 403 (or an error frame)."},
	{"hook_failed_total", "Hook calls that failed (timeout, unreachable, not 200, garbage): the client got 503 (or an error frame)."},
	{"hook_cache_hits_total", "Hook calls answered from hooks.cache."},
	{"hook_latency_seconds", "How long the application took to answer a hook call."},
	{"hook_waiting", "Connections and WebSocket commands waiting for a hook's answer."},
	{"events_queued", "Events waiting to be sent to hooks.events."},
	{"events_sent_total", "Events the application acknowledged."},
	{"events_batches_total", "Event batches the application acknowledged."},
	{"events_failed_total", "Event batch requests that failed (each retry counted)."},
	{"events_dropped_total", "Events dropped for a full hooks.events_queue."},
	{"events_delay_seconds", "From an event happening to the application acknowledging it."},
}

func newMetrics(m *Manager) *metrics {
	mt := &metrics{m: m, desc: make(map[string]*prometheus.Desc)}
	for _, h := range metricHelp {
		var labels []string
		switch {
		case strings.HasPrefix(h.name, "worker_"):
			labels = []string{"slot", "state"}
		case strings.HasPrefix(h.name, "hook_") && h.name != "hook_waiting":
			labels = []string{"hook"}
		}
		mt.desc[h.name] = prometheus.NewDesc("megacomet_"+h.name, h.help, labels, nil)
	}
	return mt
}

func (mt *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range mt.desc {
		ch <- d
	}
}

func (mt *metrics) Collect(ch chan<- prometheus.Metric) {
	st := mt.m.Snapshot()
	put := func(name string, v float64, labels ...string) {
		kind := prometheus.GaugeValue
		if strings.HasSuffix(name, "_total") {
			kind = prometheus.CounterValue
		}
		ch <- prometheus.MustNewConstMetric(mt.desc[name], kind, v, labels...)
	}
	put("connections", float64(st.Connections))
	put("capacity", float64(st.Capacity))
	put("refused_total", float64(st.Refused))
	put("published_total", float64(st.Manager.Published))
	put("retained_messages", float64(st.Manager.Retained))
	put("replays_cut_total", float64(st.Manager.ReplaysCut))
	put("joins_total", float64(st.Manager.Joins))
	put("replays_partial_total", float64(st.Manager.ReplaysPartial))
	put("joins_deferred_total", float64(st.Manager.JoinsDeferred))
	put("presence_announced_total", float64(st.Manager.PresenceAnnounced))
	put("presence_held_total", float64(st.Manager.PresenceHeld))
	put("history_bytes", float64(st.Manager.HistoryBytes))
	put("history_evicted_total", float64(st.Manager.HistoryEvicted))
	put("publish_refused_total", float64(st.Manager.PublishRefused))
	put("history_reads_total", float64(st.Manager.HistoryReads))
	put("disconnects_total", float64(st.Manager.Disconnects))
	put("channel_reads_total", float64(st.Manager.ChannelReads))
	put("channel_changes_total", float64(st.Manager.ChannelChanges))
	put("revokes_total", float64(st.Manager.Revokes))
	put("workers_killed_total", float64(st.Manager.WorkersKilled))
	put("ids", float64(st.IDs))
	put("channels", float64(st.Channels))
	put("manager_rss_bytes", float64(st.Manager.RSSBytes))
	put("manager_pss_bytes", float64(st.Manager.PSSBytes))
	put("host_load1", st.Host.Load1)
	put("host_memory_used_bytes", float64(st.Host.MemUsedBytes))
	mt.m.status.scraped()
	if p, ok := mt.m.status.latest(); ok && p.PingP99Ms > 0 {
		put("ping_p50_seconds", p.PingP50Ms/1000)
		put("ping_p99_seconds", p.PingP99Ms/1000)
	}
	if c := st.Cluster; c != nil {
		up := 0.0
		if c.State == "connected" && c.StreamReady {
			up = 1
		}
		put("cluster_connected", up)
		put("cluster_last_id", float64(c.LastID))
		put("cluster_delivered_id", float64(c.DeliveredID))
		put("cluster_lag_messages", float64(c.Lag))
		put("cluster_published_total", float64(c.Published))
		put("cluster_publish_errors_total", float64(c.PublishErrors))
		put("cluster_disconnects_total", float64(c.Disconnects))
		put("cluster_peers", float64(c.Peers))
	}
	if st.Hooks != nil {
		put("hook_waiting", float64(st.HookWaiting))
	}
	if e := st.Events; e != nil {
		put("events_queued", float64(e.Queued))
		put("events_sent_total", float64(e.Sent))
		put("events_batches_total", float64(e.Batches))
		put("events_failed_total", float64(e.Failed))
		put("events_dropped_total", float64(e.Dropped))
		n, buckets := latencyBuckets(e.Delay)
		ch <- prometheus.MustNewConstHistogram(mt.desc["events_delay_seconds"], n, 0, buckets)
	}
	for name, h := range st.Hooks {
		put("hook_calls_total", float64(h.Calls), name)
		put("hook_allowed_total", float64(h.Allowed), name)
		put("hook_denied_total", float64(h.Denied), name)
		put("hook_failed_total", float64(h.Failed), name)
		put("hook_cache_hits_total", float64(h.CacheHits), name)
		n, buckets := latencyBuckets(h.Latency)
		ch <- prometheus.MustNewConstHistogram(mt.desc["hook_latency_seconds"], n, 0, buckets, name)
	}
	for _, w := range st.Workers {
		l := []string{strconv.Itoa(w.Slot), w.State}
		put("worker_connections", float64(w.Connections), l...)
		put("worker_rss_bytes", float64(w.RSSBytes), l...)
		put("worker_pss_bytes", float64(w.PSSBytes), l...)
		put("worker_cpu_percent", w.CPUPercent, l...)
		put("worker_restarts_total", float64(w.Restarts), l...)
		put("worker_messages_out_total", float64(w.MessagesOut), l...)
		put("worker_heartbeats_total", float64(w.Heartbeats), l...)
		put("worker_slow_consumers_total", float64(w.SlowConsumers), l...)
		put("worker_bad_requests_total", float64(w.BadRequests), l...)
		put("worker_silent_closed_total", float64(w.SilentClosed), l...)
		put("worker_loop_lag_seconds", float64(w.LoopLagMs)/1000, l...)
		put("worker_ticks_over_budget_total", float64(w.TicksOverBudget), l...)
		put("worker_fan_out_pauses_total", float64(w.FanOutPauses), l...)
		put("worker_auth_refused_total", float64(w.AuthRefused), l...)
		put("worker_tokens_expired_total", float64(w.TokensExpired), l...)
		put("worker_replays_paced_total", float64(w.ReplaysPaced), l...)
		put("worker_gaps_announced_total", float64(w.GapsAnnounced), l...)
		put("worker_headers_too_large_total", float64(w.HeadersTooLarge), l...)
		put("worker_header_timeouts_total", float64(w.HeaderTimeouts), l...)
		put("worker_per_ip_refused_total", float64(w.PerIPRefused), l...)
		put("worker_proxy_rejected_total", float64(w.ProxyRejected), l...)
		put("worker_keepalive_closed_total", float64(w.KeepaliveClosed), l...)
		put("worker_ws_control_limited_total", float64(w.WSControlLimited), l...)
		put("worker_ws_fragment_closed_total", float64(w.WSFragmentClosed), l...)
		put("worker_hook_failed_total", float64(w.HookFailed), l...)
		put("worker_disconnected_total", float64(w.Disconnected), l...)
		put("worker_channels_full_total", float64(w.ChannelsFull), l...)
		put("worker_revoked_total", float64(w.Revoked), l...)
		put("worker_refused_total", float64(w.Refused), l...)
	}
}

// metricsHandler serves /metrics: megacomet's collector plus the manager's
// own Go runtime and process metrics.
func (m *Manager) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMetrics(m), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// latencyBuckets is a histogram's count and cumulative buckets from counts
// per hooks.LatencyBounds bucket. The sum is not kept: the buckets carry
// the quantiles.
func latencyBuckets(counts [len(hooks.LatencyBounds) + 1]uint64) (uint64, map[float64]uint64) {
	buckets := make(map[float64]uint64, len(hooks.LatencyBounds))
	var n uint64
	for i, b := range hooks.LatencyBounds {
		n += counts[i]
		buckets[b.Seconds()] = n
	}
	return n + counts[len(hooks.LatencyBounds)], buckets
}
