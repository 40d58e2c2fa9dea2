package megatest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// A fleet is the processes that hold the connections: this one's own
// engine, or the children.
type fleet interface {
	stop()                 // finish: stop publishing, drain, send final snapshots
	done() <-chan struct{} // closed when every process has finished or exited
	kill()                 // after stop did not finish in time
	startChat()            // -chat: every connection is answered, talk
}

// stallAfter: if every connection was tried and none more opened for this
// long, the ramp is over anyway (the hold starts; what failed keeps
// retrying).
var stallAfter = 10 * time.Second

// settleMax bounds the wait, before the hold and the broadcast rounds, for
// the server to answer every open connection.
const settleMax = 2 * time.Minute

// runner is the top of a run in the parent: it starts the fleet, prints
// progress, runs the broadcast rounds, and writes the summary.
type runner struct {
	o      *Options
	out    io.Writer
	agg    *aggregator
	procs  int
	split  bool // children hold the connections, not this process
	start  time.Time
	rampAt time.Time // when the ramp was over

	ping     pinger
	mu       sync.Mutex
	expected []int64 // per broadcast round; -1: the publish failed
	prevTag  hist    // tagged histogram at the previous progress line
}

// run is megatest's parent role. It returns the exit code.
func run(o *Options, out io.Writer) int {
	dsts, err := resolveTargets(o.Host, o.Port)
	if err != nil {
		logger().Error(err.Error())
		return 1
	}
	var srcs []netip.Addr
	if o.Src != "" {
		if srcs, err = parseSources(o.Src); err != nil {
			logger().Error(err.Error())
			return 2
		}
	} else if srcs = autoSources(dsts[0].Addr(), o.N); len(srcs) > 0 {
		logger().Info("loopback target: picked source addresses", "src", formatSources(srcs))
	} else if !dsts[0].Addr().IsLoopback() && o.N > portRange()-2000 {
		logger().Warn("one source address has ports for about "+strconv.Itoa(portRange())+" connections to one server port; add IP aliases and name them with -src (docs/C1M.md)", "n", o.N)
	}
	if o.Run == "" {
		o.Run = strconv.FormatUint(rand.Uint64()&(1<<40-1), 36)
	}
	perProc := nofileCapacity()
	if o.TLS {
		perProc /= tlsFDs
	}
	procs := o.Procs
	if procs == 0 {
		procs = (o.N + perProc - 1) / perProc
	}
	procs = min(procs, o.N)
	r := &runner{o: o, out: out, agg: newAggregator(procs), procs: procs, start: time.Now()}

	var f fleet
	if procs == 1 && o.Procs == 0 {
		f, err = startLocal(o, dsts, srcs, r.agg)
	} else {
		logger().Info("splitting over child processes", "procs", procs, "per_process_limit", perProc)
		r.split = true
		f, err = startChildren(o, procs, formatSources(srcs), r.agg)
	}
	if err != nil {
		logger().Error(err.Error())
		return 1
	}
	return r.loop(f)
}

func (r *runner) loop(f fleet) int {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	tick := time.NewTicker(r.o.Report)
	defer tick.Stop()
	check := time.NewTicker(50 * time.Millisecond)
	defer check.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var holdC <-chan time.Time
	var settled chan struct{}   // closed once the server has answered every connection
	var bcastDone chan struct{} // closed when the broadcast rounds are over
	bcastOver := r.o.Broadcast == 0
	holdOver := false
	rampDone := false
wait:
	for {
		select {
		case <-tick.C:
			r.progress(false)
		case <-check.C:
			if !rampDone && r.agg.rampDone(stallAfter) {
				rampDone, r.rampAt = true, time.Now()
				settled = make(chan struct{})
				go func() {
					defer close(settled)
					r.settle(ctx)
				}()
			}
		case <-settled:
			// The hold, the pings and the broadcasts measure what the
			// server holds: they start once it has answered every
			// connection, however long a slow server takes to.
			settled = nil
			if r.o.Hold > 0 {
				holdC = time.After(r.o.Hold)
			}
			if r.o.Ping > 0 {
				go r.ping.run(ctx, "http://"+r.o.target()+"/ping", r.o.Ping)
			}
			if r.o.Chat > 0 {
				f.startChat()
			}
			if r.o.Broadcast > 0 {
				bcastDone = make(chan struct{})
				go func() {
					defer close(bcastDone)
					r.broadcasts(ctx)
				}()
			}
		case <-holdC:
			holdOver = true
			if bcastOver {
				break wait
			} // else the broadcast rounds finish first
		case <-bcastDone:
			bcastDone, bcastOver = nil, true
			if holdOver {
				break wait
			}
		case s := <-sig:
			logger().Info("stopping", "signal", s.String())
			break wait
		case <-f.done():
			logger().Error("every megatest process has exited")
			break wait
		}
	}
	cancel()
	f.stop()
	select {
	case <-f.done():
	case <-time.After(r.o.Grace + 30*time.Second):
		logger().Error("processes did not finish; killing them")
		f.kill()
		<-f.done()
	case <-sig:
		f.kill()
		<-f.done()
	}
	if r.rampAt.IsZero() {
		r.rampAt = time.Now()
	}
	r.progress(true)
	return r.summary()
}

// progress prints one progress line:
// t= active= opened= closed= failed= msgs= hb= p50= p99=
// p50/p99 are over the messages of this run (-pub and broadcasts) that
// arrived since the previous line.
func (r *runner) progress(final bool) {
	if r.o.Quiet && !final {
		return
	}
	t := r.agg.total(true)
	var iv hist
	iv.sub(&t.tagged, &r.prevTag)
	r.prevTag = t.tagged
	p50, p99 := "-", "-"
	if iv.n > 0 {
		p50, p99 = fmtMs(iv.quantile(0.50)), fmtMs(iv.quantile(0.99))
	}
	secs := time.Since(r.start).Seconds()
	fmt.Fprintf(r.out, "t=%ss active=%d opened=%d closed=%d failed=%d msgs=%d hb=%d p50=%s p99=%s gaps=%d\n",
		strconv.FormatFloat(float64(int64(secs*10))/10, 'f', -1, 64),
		t.Active, t.Opened, t.Closed, t.Failed, t.Msgs, t.HB, p50, p99, t.Gaps)
}

// settle waits, after the ramp, until the server has answered every open
// connection, or settleMax passes. A connection it has not answered yet
// may not be registered and could rightly miss a broadcast, and a server
// still working through its accept queues would make a hold, a ping or the
// first round measure that instead of what it holds.
func (r *runner) settle(ctx context.Context) {
	deadline := time.Now().Add(settleMax)
	for logged := time.Now(); ; {
		t := r.agg.total(false)
		if t.Ready >= t.Active {
			return
		}
		if time.Now().After(deadline) {
			logger().Warn("holding although the server has not answered every connection", "ready", t.Ready, "active", t.Active, "waited", settleMax)
			return
		}
		if time.Since(logged) >= 10*time.Second {
			logger().Info("waiting for the server to answer every connection", "ready", t.Ready, "active", t.Active)
			logged = time.Now()
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return
		}
	}
}

// broadcasts runs the -broadcast rounds once the server has answered every
// connection: publish, wait until every held connection has it (or
// -round-wait passes), next - no sooner than -round-every after the last.
func (r *runner) broadcasts(ctx context.Context) {
	api, _ := newAPIClient(r.o.API, r.o.Token)
	var started time.Time
	for round := 1; round <= r.o.Broadcast; round++ {
		if wait := time.Until(started.Add(r.o.RoundEvery)); round > 1 && wait > 0 && !sleepCtx(ctx, wait) {
			return
		}
		started = time.Now()
		expected := r.agg.total(false).Ready
		var err error
		if r.o.Channels > 0 {
			_, err = api.publish(channelRoundBody(r.o, round, time.Now().UnixNano()), true)
		} else {
			_, err = api.publish(broadcastBody(round, r.o.Run, time.Now().UnixNano()), false)
		}
		if err != nil {
			logger().Warn("broadcast failed", "round", round, "err", err)
			expected = -1
		}
		r.mu.Lock()
		r.expected = append(r.expected, expected)
		r.mu.Unlock()
		deadline := time.Now().Add(r.o.RoundWait)
		for err == nil && time.Now().Before(deadline) {
			if got := r.received(round); got >= expected {
				break
			}
			if !sleepCtx(ctx, 20*time.Millisecond) {
				return
			}
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return
		}
	}
}

func (r *runner) received(round int) int64 {
	t := r.agg.total(false)
	if round > len(t.rounds) {
		return 0
	}
	return t.rounds[round-1].recv
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// Summary is the JSON written at the end. The fields up to BroadcastMs are
// the contract (../shared/CONTRACT.md); the rest are additions.
type Summary struct {
	Letter           string        `json:"letter"`
	Target           string        `json:"target"`
	Transport        string        `json:"transport"`
	Connections      int           `json:"connections"`
	PeakActive       int64         `json:"peak_active"`
	ConnectFailed    int64         `json:"connect_failed"`
	ClosedUnexpected int64         `json:"closed_unexpected"`
	Reconnects       int64         `json:"reconnects"`
	TokensExpired    int64         `json:"tokens_expired"`  // of the reconnects, the server's for an expired token
	Disconnected     int64         `json:"disconnected"`    // connections the server ended for POST /disconnect (reconnect false: not reopened)
	ChannelNotices   int64         `json:"channel_notices"` // notices of new channels (POST /subscribe, /unsubscribe)
	Gaps             int64         `json:"gaps"`            // gap announcements: ranges the server says may be missing
	Messages         int64         `json:"messages"`
	Lost             int64         `json:"lost"`
	Duplicates       int64         `json:"duplicates"`
	Heartbeats       int64         `json:"heartbeats"`
	ConnectRate      float64       `json:"connect_rate"`
	LatencyMs        LatencyMs     `json:"latency_ms"`
	BroadcastMs      []BroadcastMs `json:"broadcast_ms"`

	Active          int64   `json:"active"` // held at the end
	Ready           int64   `json:"ready"`  // of those, answered by the server
	Opened          int64   `json:"opened"`
	Closed          int64   `json:"closed"`
	ProtocolErrors  int64   `json:"protocol_errors"`
	HTTPErrors      int64   `json:"http_errors"`
	Published       int64   `json:"published"`
	PublishErrors   int64   `json:"publish_errors"`
	PublishDeferred int64   `json:"publish_deferred"` // answered 503 with Retry-After, then sent again
	PublishSkipped  int64   `json:"publish_skipped"`
	Unacked         int64   `json:"unacked"`
	Processes       int     `json:"processes"`
	RampS           float64 `json:"ramp_s"`
	DurationS       float64 `json:"duration_s"`
	RSSBytes        int64   `json:"rss_bytes"` // every megatest process at the end, the parent too
	RSSPerConn      float64 `json:"rss_per_conn"`
	PSSBytes        int64   `json:"pss_bytes"` // the same, shared pages (the binary) counted once
	PSSPerConn      float64 `json:"pss_per_conn"`

	// With -chat: client publishes and their fan-out to every member.
	Chat *ChatSummary `json:"chat,omitempty"`

	// With -ping: GET /ping round trips while the connections were held.
	PingMs     *LatencyMs `json:"ping_ms,omitempty"`
	Pings      int64      `json:"pings,omitempty"`
	PingErrors int64      `json:"ping_errors,omitempty"`

	// With -heartbeat (default 15s; not for long-poll): how much longer than
	// the interval connections went without a heartbeat (heartbeat.go).
	HeartbeatLatenessMs *HeartbeatLatenessMs `json:"heartbeat_lateness_ms,omitempty"`
}

type LatencyMs struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// HeartbeatLatenessMs is {"p50","p99","max","samples"}.
type HeartbeatLatenessMs struct {
	LatencyMs
	Samples int64 `json:"samples"`
}

type BroadcastMs struct {
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	Max      float64 `json:"max"`
	Received int64   `json:"received"`
	Expected int64   `json:"expected"`
}

// ChatSummary is -chat's part of the summary (chat.go): deliveries owed
// is acked publishes times their channel's members; lost, owed less
// delivered.
type ChatSummary struct {
	Sent       int64     `json:"sent"`
	Acked      int64     `json:"acked"`
	Refused    int64     `json:"refused"`
	Owed       int64     `json:"owed"`
	Deliveries int64     `json:"deliveries"`
	Lost       int64     `json:"lost"`
	LatencyMs  LatencyMs `json:"latency_ms"` // send → each member
}

func latencyOf(h *hist) LatencyMs {
	return LatencyMs{usToMs(h.quantile(0.50)), usToMs(h.quantile(0.99)), usToMs(h.max)}
}

// summary prints the summary JSON as the last line of output and writes
// it to -json. The exit code is 0 when the run completed, 1 when
// processes failed or the file could not be written.
func (r *runner) summary() int {
	t := r.agg.total(true)
	s := Summary{
		Letter: r.o.Letter, Target: r.o.targets(), Transport: r.o.Transport,
		Connections: r.o.N, PeakActive: t.peak,
		ConnectFailed: t.Failed, ClosedUnexpected: t.Unexpected, Reconnects: t.Reconnects, TokensExpired: t.Expired, Disconnected: t.Disconnected, ChannelNotices: t.ChannelNotices, Gaps: t.Gaps,
		Messages: t.Msgs, Lost: t.Lost, Duplicates: t.Dups, Heartbeats: t.HB,
		LatencyMs:   latencyOf(&t.lat),
		BroadcastMs: []BroadcastMs{},
		Active:      t.Active, Ready: t.Ready, Opened: t.Opened, Closed: t.Closed,
		ProtocolErrors: t.ProtoErrs, HTTPErrors: t.HTTPErrs,
		Published: t.Published, PublishErrors: t.PubErrors, PublishDeferred: t.PubDeferred, PublishSkipped: t.PubSkipped, Unacked: t.Unacked,
		Processes: r.procs, DurationS: time.Since(r.start).Seconds(),
		RSSBytes: t.RSS, PSSBytes: t.PSS,
	}
	if r.o.measuresHeartbeat() {
		s.HeartbeatLatenessMs = &HeartbeatLatenessMs{latencyOf(&t.hbLate), int64(t.hbLate.n)}
	}
	if r.o.Chat > 0 {
		s.Chat = &ChatSummary{Sent: t.ChatSent, Acked: t.ChatAcked, Refused: t.ChatRefused, Owed: t.ChatOwed,
			Deliveries: t.ChatRecv, Lost: max(t.ChatOwed-t.ChatRecv, 0), LatencyMs: latencyOf(&t.chat)}
	}
	if r.o.Ping > 0 {
		lat, n, errs := r.ping.latency()
		s.PingMs, s.Pings, s.PingErrors = &lat, n, errs
	}
	if r.split {
		rss, pss := memory()
		s.RSSBytes += rss
		s.PSSBytes += pss
	}
	if t.RampStart != 0 {
		end := time.Unix(0, t.RampEnd)
		opened := t.N
		if t.RampEnd == 0 {
			end, opened = r.rampAt, int(t.FirstOpened)
		}
		if d := end.Sub(time.Unix(0, t.RampStart)).Seconds(); d > 0 {
			s.RampS = d
			s.ConnectRate = float64(opened) / d
		}
	}
	if t.Active > 0 {
		s.RSSPerConn = float64(s.RSSBytes) / float64(t.Active)
		s.PSSPerConn = float64(s.PSSBytes) / float64(t.Active)
	}
	r.mu.Lock()
	for i, exp := range r.expected {
		b := BroadcastMs{Expected: max(exp, 0)}
		if i < len(t.rounds) {
			rt := &t.rounds[i]
			b.Received = rt.recv
			b.P50, b.P99, b.Max = usToMs(rt.h.quantile(0.50)), usToMs(rt.h.quantile(0.99)), usToMs(rt.h.max)
		}
		s.BroadcastMs = append(s.BroadcastMs, b)
	}
	r.mu.Unlock()

	code := 0
	if t.finals < r.procs {
		code = 1
	}
	js, _ := json.Marshal(&s)
	fmt.Fprintf(r.out, "%s\n", js)
	if r.o.JSON != "" {
		pretty, _ := json.MarshalIndent(&s, "", "  ")
		if err := os.WriteFile(r.o.JSON, append(pretty, '\n'), 0o644); err != nil {
			logger().Error("write summary", "err", err)
			code = 1
		}
	}
	return code
}
