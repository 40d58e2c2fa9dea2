//go:build linux

package megatest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/megacomet/megacomet/auth"
	"golang.org/x/sys/unix"
)

// Why a loop of our own on golang.org/x/sys/unix and not gnet's client:
// measured holding 19,000 SSE connections, gnet v2.9.7 costs 891 bytes of
// RSS per connection on a 7.3 MB base per process; at a million connections
// over 51 processes that is ~1.3 GB, over megatest's 1 GB budget. Its
// client also dials with a blocking net.Dial through Go's poller and then
// dups the descriptor, so every connect costs a goroutine, two descriptors
// and extra syscalls. This loop keeps a 48-byte conn per connection (no
// buffer while idle), connects without blocking and binds source addresses
// itself: measured ~55 bytes of RSS per held connection (docs/C1M.md).

// The engine is one process's share of the connections: one goroutine, one
// epoll set, edge-triggered. Connections live in one slice and are named
// by their index, which is also what epoll hands back; ids are
// LETTER<first+index>.
//
// Ways in from other goroutines (there is no wake-up: the loop never
// sleeps longer than maxWait and looks at them every turn):
//   - stop(): an atomic flag;
//   - the publisher's acknowledgements go to the ledger (its own mutex);
//   - publisher.ch carries target batches from the loop to the publisher
//     (the loop only offers, never blocks: a full channel drops the batch
//     and counts it in publish_skipped).
type engine struct {
	o      *Options
	first  int
	conns  []conn
	tr     transport
	dsts   []unix.Sockaddr  // the hosts, round-robin (target)
	srcs   []unix.Sockaddr  // round-robin by global index; nil = kernel's choice
	hexBuf [16]byte         // sseChunked: a chunk size
	tls    *tls.Config      // -tls: connections go through TLS (tlspipe.go)
	srcIPs []netip.Addr     // srcs, for -tls
	dstIPs []netip.AddrPort // dsts, for -tls
	family int
	tag    []byte // our run tag, matched in message data
	report func(*Snapshot)
	log    *slog.Logger

	ep      int
	events  []unix.EpollEvent
	rbuf    []byte // one read buffer for every connection
	wbuf    []byte // requests are built here
	scratch []byte // multi-line SSE data
	reqTail []byte // " HTTP/1.1\r\nHost: …\r\n…\r\n"
	path    []byte // "/sse/LETTER"
	wsKey   []byte
	wsAcc   []byte

	t0         time.Time
	rate       float64 // new connections per second, this process
	allow      float64 // ramp token bucket
	lastTurn   int64
	nextNew    int // next index to open for the first time
	waiting    reopenHeap
	retryHint  int64 // ms, from the server's SSE retry field
	retryAfter int64 // ms, from the Retry-After of the 503 being handled
	rng        uint64

	stopFlag atomic.Bool
	stopping bool
	stopAt   int64

	pub       *publisher
	ledger    *ledger
	chatRate  float64     // -chat, this process's share
	chatOn    atomic.Bool // every connection of the run is answered: talk (SIGUSR1 in a child)
	chatAllow float64
	chatSeq   uint64
	chatBuf   []byte
	chatLat   hist
	chatLatV  uint64
	sentChatV uint64
	pubAllow  float64
	pubCursor int

	st         stats
	lat        hist // publish → delivery, our -pub messages
	tagged     hist // every message of this run: -pub and broadcasts
	rounds     []round
	latV       uint64 // bumped when lat changes, so a snapshot sends it only then
	taggedV    uint64
	sentLatV   uint64
	sentTagV   uint64
	lastSnap   int64
	failLogAt  int64 // when a connect failure was last logged
	closeLogAt int64 // when an unexpected close was last logged
	httpLogAt  int64 // when an unexpected answer was last logged
	status     int   // the status of the answer being parsed, for that log line
	memAt      int64 // when memory was last read
	rss, pss   int64
	rampStart  int64 // unix ns of the first connect
	rampEnd    int64 // unix ns when the last connection first opened

	// Heartbeat lateness (heartbeat.go).
	hbMs        int64  // -heartbeat in ms; 0 = not measured
	readAt      uint32 // ms since t0 of the read being parsed
	arrived     bool   // the read being parsed carried a heartbeat (or, streams, a message)
	hbLate      hist
	hbLateV     uint64
	sentHBLateV uint64
}

type round struct {
	recv  int64
	h     *hist
	v, sv uint64 // version, version sent
}

// stats are the loop's counters, copied into every snapshot.
type stats struct {
	active, ready, peak, connecting     int64
	attempted, opened, firstOpened      int64
	closed, failed, unexpected, recon   int64
	msgs, hb, dups, protoErrs, httpErrs int64
	writeErrs, expired                  int64
	disconnected                        int64 // closes the server announced for POST /disconnect
	channelNotices                      int64 // notices of new channels (POST /subscribe)
	gaps                                int64 // gap announcements: messages the server says may be missing
	// -chat: publishes sent, acked, refused; deliveries owed to members
	// (acked × its channel's members) and received.
	chatSent, chatAcked, chatRefused, chatOwed, chatRecv int64
}

// conn is one connection's state: 48 bytes, and no buffer unless a unit
// (event, chunk, answer, frame) arrived split across reads. heardAt sits
// in what was padding after fails: one byte of it is left.
type conn struct {
	in      []byte // unparsed input; nil almost always
	lastID  uint64 // cursor: the last message id seen
	fd      int32
	round   uint32 // highest broadcast round received
	heardAt uint32 // ms since t0 of the last arrival, when fHeard (heartbeat.go)
	state   connState
	flags   uint8
	fails   uint8 // consecutive failures, for backoff
}

type connState uint8

const (
	stIdle       connState = iota // not opened yet
	stWaiting                     // closed, waiting to reopen
	stConnecting                  // connect in progress
	stHead                        // request sent, waiting for the response head (lp: the answer)
	stBody                        // streaming
)

const (
	fOpenedOnce = 1 << iota // has been connected at least once
	fReady                  // the server has answered: it knows this client
	fCursor                 // reopen with since=lastID
	fAnnounced              // the server announced it is closing
	fHeard                  // heardAt is set: a heartbeat (or message) came since the open
	fChunked                // an SSE stream in a chunked body (through a proxy): sseChunked
	fGone                   // the server disconnected it for good (POST /disconnect, reconnect false): not reopened
)

type transport uint8

const (
	trSSE transport = iota
	trStream
	trLP
	trWS
)

func parseTransport(s string) transport {
	switch s {
	case "stream":
		return trStream
	case "lp":
		return trLP
	case "ws":
		return trWS
	}
	return trSSE
}

const (
	// Connects in flight per process. More only lets a process that is
	// short of CPU fall behind the handshakes the kernel completes for it:
	// at 4096, a million on 2 cores left requests unsent for over 30 s,
	// and the server closed those connections as silent.
	maxConnecting = 1024
	// Longest epoll wait, so also how late a stop is noticed. Each wait
	// that times out wakes the process's threads: 51 processes holding
	// idle connections took 14,000 context switches/s (6 % of two CPUs) at 20 ms.
	maxWait     = 100 * time.Millisecond
	snapEvery   = 500 * time.Millisecond
	backoffBase = 100 * time.Millisecond
	backoffMax  = 5 * time.Second
	maxRounds   = 1 << 16
	logEvery    = 10 * time.Second
	memEvery    = 5 * time.Second
)

// why a connection is closed
type closeWhy uint8

const (
	whyAnnounced  closeWhy = iota // the server said so: a reconnect
	whyUnexpected                 // the server closed without notice
	whyProtocol                   // we closed: broken framing or JSON
	whyHTTP                       // we closed: an unexpected status
	whyRetryAfter                 // the server said 503, come back after Retry-After: a reconnect
	whyStop                       // the run is over
)

// newEngine prepares the share of n connections from global index first.
func newEngine(o *Options, first, n int, dsts []netip.AddrPort, srcs []netip.Addr, rate, pubRate float64, report func(*Snapshot), log *slog.Logger) (*engine, error) {
	e := &engine{
		o: o, first: first, conns: make([]conn, n),
		tr: parseTransport(o.Transport), tag: []byte(o.Run),
		report: report, log: log, rate: rate,
		events: make([]unix.EpollEvent, 1024),
		rbuf:   make([]byte, 64<<10),
		wbuf:   make([]byte, 0, 512),
		rng:    uint64(time.Now().UnixNano()) | 1,
		ledger: newLedger(),
	}
	if o.measuresHeartbeat() {
		e.hbMs = o.Heartbeat.Milliseconds()
	}
	e.tls, e.srcIPs, e.dstIPs = o.tlsConfig(), srcs, dsts
	for _, d := range dsts {
		sa, family := sockaddr(d.Addr(), int(d.Port()))
		e.dsts, e.family = append(e.dsts, sa), family
	}
	for _, a := range srcs {
		if a.Is4() != dsts[0].Addr().Is4() {
			return nil, fmt.Errorf("megatest: source %s and target %s are not the same IP version", a, dsts[0].Addr())
		}
		sa, _ := sockaddr(a, 0)
		e.srcs = append(e.srcs, sa)
	}
	prefix := map[transport]string{trSSE: "/sse/", trStream: "/stream/", trLP: "/lp/", trWS: "/ws/"}[e.tr]
	e.path = []byte(prefix + o.Letter)
	tail := " HTTP/1.1\r\nHost: " + o.target() + "\r\n"
	switch e.tr {
	case trSSE:
		tail += "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
	case trWS:
		e.wsKey, e.wsAcc = wsKeyPair(e.rng)
		tail += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + string(e.wsKey) + "\r\n"
	}
	e.reqTail = []byte(tail + "\r\n")
	if pubRate > 0 {
		api, err := newAPIClient(o.API, o.Token)
		if err != nil {
			return nil, err
		}
		e.pub = newPublisher(api, o.Letter, first, o.Run, pubRate, e.ledger)
	}
	if o.Chat > 0 {
		e.chatRate = o.Chat
	}
	return e, nil
}

func sockaddr(a netip.Addr, port int) (unix.Sockaddr, int) {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: port}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: port}, unix.AF_INET6
}

// stop asks the loop to finish: stop publishing, wait up to -grace for
// published messages still in flight, send the final snapshot, return.
func (e *engine) stop() { e.stopFlag.Store(true) }

func (e *engine) mono() int64 { return int64(time.Since(e.t0)) }

// run is the loop. It returns after the final snapshot.
func (e *engine) run() error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("megatest: epoll: %w", err)
	}
	e.ep = ep
	defer func() {
		for i := range e.conns {
			if c := &e.conns[i]; c.state >= stConnecting {
				unix.Close(int(c.fd))
			}
		}
		unix.Close(ep)
	}()
	e.t0 = time.Now()
	if e.pub != nil {
		e.pub.start()
	}
	for {
		now := e.mono()
		if e.stopFlag.Load() && !e.stopping {
			e.stopping, e.stopAt = true, now
			if e.pub != nil {
				e.pub.stop()
			}
		}
		if e.stopping && e.drained(now) {
			e.snapshot(true)
			return nil
		}
		if !e.stopping {
			e.ramp(now)
			if e.pub != nil {
				e.pubTurn(now)
			}
			if e.chatRate > 0 {
				e.chatTurn(now)
			}
		}
		e.reopenDue(now)
		if now-e.lastSnap >= int64(snapEvery) {
			e.lastSnap = now
			e.snapshot(false)
		}
		e.lastTurn = now

		n, err := unix.EpollWait(ep, e.events, e.waitMs(now))
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("megatest: epoll_wait: %w", err)
		}
		for _, ev := range e.events[:max(n, 0)] {
			idx := ev.Fd
			c := &e.conns[idx]
			switch c.state {
			case stConnecting:
				e.connected(idx, c, ev.Events)
				if c.state >= stHead && ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
					e.readable(idx, c, ev.Events)
				}
			case stHead, stBody:
				if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
					e.readable(idx, c, ev.Events)
				}
			}
		}
	}
}

// waitMs is how long epoll may sleep: short while ramping or publishing,
// never past the next reopen, at most maxWait.
func (e *engine) waitMs(now int64) int {
	d := int64(maxWait)
	if (e.nextNew < len(e.conns) && !e.stopping) || e.pub != nil || e.chatRate > 0 {
		d = int64(5 * time.Millisecond)
	}
	if len(e.waiting) > 0 {
		d = min(d, e.waiting[0].due-now)
	}
	return int(max(d, 0) / int64(time.Millisecond))
}

// drained: publishing stopped and every published message arrived, or
// -grace passed.
func (e *engine) drained(now int64) bool {
	if e.chatRate > 0 {
		// What other processes' members owe is not known here.
		return now-e.stopAt >= int64(e.o.Grace)
	}
	if e.pub == nil {
		return true
	}
	if now-e.stopAt >= int64(e.o.Grace) {
		return true
	}
	if !e.pub.idle() {
		return false
	}
	pending, _, _ := e.ledger.counts()
	return pending == 0
}

// ramp opens new connections at -rate.
func (e *engine) ramp(now int64) {
	if e.nextNew >= len(e.conns) {
		return
	}
	budget := len(e.conns) - e.nextNew
	if e.rate > 0 {
		dt := float64(now-e.lastTurn) / 1e9
		// Tokens for up to 500 ms: a turn slowed by a burst of events
		// must not lower the average rate.
		e.allow = min(e.allow+e.rate*dt, max(e.rate/2, 1))
		budget = min(budget, int(e.allow))
	}
	budget = min(budget, maxConnecting-int(e.st.connecting))
	for ; budget > 0; budget-- {
		idx := int32(e.nextNew)
		e.nextNew++
		e.allow--
		e.st.attempted++
		e.open(idx, &e.conns[idx])
	}
}

// reopenDue reopens the connections whose wait is over.
func (e *engine) reopenDue(now int64) {
	for len(e.waiting) > 0 && e.st.connecting < maxConnecting && e.waiting[0].due <= now {
		idx := e.waiting.pop().idx
		e.open(idx, &e.conns[idx])
	}
}

// open starts a non-blocking connect.
func (e *engine) open(idx int32, c *conn) {
	if e.rampStart == 0 {
		e.rampStart = time.Now().UnixNano()
	}
	if e.tls != nil {
		var src netip.Addr
		if len(e.srcIPs) > 0 {
			src = e.srcIPs[(e.first+int(idx))%len(e.srcIPs)]
		}
		fd, err := openTLS(e.tls, src, e.dstIPs[(e.first+int(idx)+int(c.fails))%len(e.dstIPs)])
		if err != nil {
			e.connectFailed(idx, c, "tls", err)
			return
		}
		e.watchConnect(idx, c, fd)
		return
	}
	fd, err := unix.Socket(e.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		e.connectFailed(idx, c, "socket", err)
		return
	}
	if len(e.srcs) > 0 {
		// The port is picked at connect time from the whole 4-tuple.
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, e.srcs[(e.first+int(idx))%len(e.srcs)]); err != nil {
			unix.Close(fd)
			e.connectFailed(idx, c, "bind", err)
			return
		}
	}
	// Give up on a SYN after 1+2+4+8 s, without a timer of our own.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, 3)
	if err := unix.Connect(fd, e.target(idx, c)); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		e.connectFailed(idx, c, "connect", err)
		return
	}
	e.watchConnect(idx, c, fd)
}

// watchConnect adds a connecting descriptor to the epoll set.
func (e *engine) watchConnect(idx int32, c *conn, fd int) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: idx}
	if err := unix.EpollCtl(e.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		e.connectFailed(idx, c, "epoll_ctl", err)
		return
	}
	c.fd, c.state = int32(fd), stConnecting
	e.st.connecting++
}

// target is where connection idx goes: its share of the hosts, spread
// round-robin, and the next host after each failure in a row, so clients
// of a node that is gone move to another as behind a load balancer.
func (e *engine) target(idx int32, c *conn) unix.Sockaddr {
	return e.dsts[(e.first+int(idx)+int(c.fails))%len(e.dsts)]
}

// connected finishes a connect and sends the request.
func (e *engine) connected(idx int32, c *conn, events uint32) {
	if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	e.st.connecting--
	soErr, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soErr != 0 {
		err = unix.Errno(soErr)
	}
	if err == nil && events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		err = unix.ECONNRESET
	}
	if err != nil {
		unix.Close(int(c.fd))
		e.connectFailed(idx, c, "connect", err)
		return
	}
	c.state = stHead
	e.st.active++
	e.st.opened++
	e.st.peak = max(e.st.peak, e.st.active)
	if c.flags&fOpenedOnce == 0 {
		c.flags |= fOpenedOnce
		e.st.firstOpened++
		if e.st.firstOpened == int64(len(e.conns)) {
			e.rampEnd = time.Now().UnixNano()
		}
	}
	e.sendRequest(idx, c)
}

func (e *engine) sendRequest(idx int32, c *conn) bool {
	b := append(e.wbuf[:0], "GET "...)
	b = append(b, e.path...)
	b = strconv.AppendInt(b, int64(e.first)+int64(idx), 10)
	sep := byte('?')
	if e.o.Channels > 0 {
		b = e.o.appendChannel(append(b, "?channels="...), e.first+int(idx))
		sep = '&'
	}
	if c.flags&fCursor != 0 {
		b = append(b, sep)
		b = append(b, "since="...)
		b = strconv.AppendUint(b, c.lastID, 10)
		sep = '&'
	}
	if e.o.TokenSecret != "" {
		// A fresh token for every request, as a page would fetch one
		// before it reconnects: the last may have expired.
		id := e.o.Letter + strconv.Itoa(e.first+int(idx))
		var claims auth.Claims
		if e.o.Channels > 0 {
			// Its own channels; without a claim it could join none.
			claims.Channels = []string{e.o.Letter + "-c*"}
		}
		if e.o.Chat > 0 {
			claims.Publish = claims.Channels
		}
		if tok, err := auth.MintClaims([]byte(e.o.TokenSecret), id, claims, e.o.TokenTTL, time.Now()); err == nil {
			b = append(append(append(b, sep), "token="...), tok...)
		}
	}
	b = append(b, e.reqTail...)
	e.wbuf = b
	return e.write(idx, c, b)
}

// write sends b whole. Requests and pongs are tiny and the socket's send
// buffer is empty in this client, so a short write means the connection
// is broken.
func (e *engine) write(idx int32, c *conn, b []byte) bool {
	n, err := unix.Write(int(c.fd), b)
	if err != nil || n != len(b) {
		e.st.writeErrs++
		if err == nil {
			err = unix.EAGAIN // short: the send buffer is full
		}
		e.closeUnexpected(idx, c, "write", err)
		return false
	}
	return true
}

func (e *engine) connectFailed(idx int32, c *conn, op string, err error) {
	e.st.failed++
	if e.logDue(&e.failLogAt, e.st.failed == 1) {
		e.log.Warn("connect failed", "op", op, "err", err, "failures", e.st.failed)
	}
	e.backoff(idx, c)
}

// logDue says whether a kind of event last logged at *at is to be logged
// now: the first one, then at most one per logEvery.
func (e *engine) logDue(at *int64, first bool) bool {
	now := e.mono()
	if !first && now-*at < int64(logEvery) {
		return false
	}
	*at = now
	return true
}

// backoff schedules a reopen after an exponential, jittered wait.
func (e *engine) backoff(idx int32, c *conn) {
	if c.fails < 16 {
		c.fails++
	}
	d := min(int64(backoffBase)<<(c.fails-1), int64(backoffMax))
	e.schedule(idx, c, d/2+int64(e.rand()%uint64(d)))
}

func (e *engine) schedule(idx int32, c *conn, delay int64) {
	c.state = stWaiting
	e.waiting.push(reopen{due: e.mono() + delay, idx: idx})
}

// errEOF is the server's FIN where no close was announced.
var errEOF = errors.New("EOF")

// closeUnexpected closes a connection the server ended without notice
// (unless it was announced after all) and says so: one line for the first,
// then at most one per logEvery, with what was being done, the error, and
// whether the server had answered the connection yet.
func (e *engine) closeUnexpected(idx int32, c *conn, op string, err error) {
	if c.flags&fAnnounced == 0 && e.logDue(&e.closeLogAt, e.st.unexpected == 0) {
		e.log.Warn("connection closed unexpectedly", "op", op, "err", err,
			"answered", c.flags&fReady != 0, "path", string(e.path)+strconv.Itoa(e.first+int(idx)), "unexpected", e.st.unexpected+1)
	}
	e.closeConn(idx, c, whyUnexpected)
}

// closeConn closes an open connection and schedules its reopen, like a
// browser's EventSource: at once (or after the server's retry hint) when
// the server announced the close, with backoff otherwise.
func (e *engine) closeConn(idx int32, c *conn, why closeWhy) {
	unix.Close(int(c.fd)) // also leaves the epoll set
	e.st.active--
	e.st.closed++
	if c.flags&fReady != 0 {
		e.st.ready--
	}
	if c.flags&fAnnounced != 0 && why == whyUnexpected {
		why = whyAnnounced
	}
	gone := c.flags&fGone != 0
	c.flags &^= fReady | fAnnounced | fHeard | fGone
	c.in = nil
	if gone {
		return // told not to come back: it stays closed
	}
	switch why {
	case whyAnnounced, whyRetryAfter:
		e.st.recon++
		c.fails = 0
		d := e.retryHint * int64(time.Millisecond)
		if why == whyRetryAfter {
			d = e.retryAfter * int64(time.Millisecond)
		}
		e.schedule(idx, c, d+int64(e.rand()%uint64(d/10+int64(50*time.Millisecond))))
	case whyUnexpected:
		e.st.unexpected++
		e.backoff(idx, c)
	case whyProtocol:
		e.st.protoErrs++
		e.backoff(idx, c)
	case whyHTTP:
		e.st.httpErrs++
		e.st.failed++
		if e.logDue(&e.httpLogAt, e.st.httpErrs == 1) {
			e.log.Warn("unexpected answer", "status", e.status, "path", string(e.path)+strconv.Itoa(e.first+int(idx)), "http_errors", e.st.httpErrs)
		}
		e.backoff(idx, c)
	}
}

// readable reads what the socket holds and hands it to the transport.
// Edge-triggered: every arrival of data raises a new event, so a short
// read means the socket is drained and the read that would return EAGAIN
// is saved (half the syscalls per message). Only when the event reports
// the peer's FIN or an error is the socket read to the end.
func (e *engine) readable(idx int32, c *conn, events uint32) {
	toEnd := events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	for {
		n, err := unix.Read(int(c.fd), e.rbuf)
		if n > 0 {
			t := time.Now()
			e.readAt = uint32(t.Sub(e.t0) / time.Millisecond) // monotonic
			if !e.input(idx, c, e.rbuf[:n], t.UnixNano()) {
				return // closed
			}
			if n < len(e.rbuf) && !toEnd {
				return
			}
			continue
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err == nil: // EOF
			// A long-poll connection closed between answers (nothing of
			// the next one received) is an ordinary keep-alive close: the
			// last answer was complete, and the poll goes on elsewhere.
			if e.tr == trLP && c.flags&fReady != 0 && len(c.in) == 0 {
				c.flags |= fAnnounced
			}
			e.closeUnexpected(idx, c, "read", errEOF) // announced, if it was
			return
		default:
			e.closeUnexpected(idx, c, "read", err)
			return
		}
	}
}

// input parses b (after what was left over from the previous read) and
// keeps what is left. It returns false when the connection was closed.
func (e *engine) input(idx int32, c *conn, b []byte, now int64) bool {
	buf := b
	if len(c.in) > 0 {
		c.in = append(c.in, b...)
		buf = c.in
	}
	e.arrived = false
	n, err := e.consume(idx, c, buf, now)
	if err != nil {
		switch err {
		case errEnd:
			e.closeConn(idx, c, whyAnnounced)
		case errRetryAfter:
			e.closeConn(idx, c, whyRetryAfter)
		case errClosed:
		case errStatus, errType, errUpgrade:
			e.closeConn(idx, c, whyHTTP)
		case errWSClosed:
			e.closeUnexpected(idx, c, "read", err)
		default:
			e.closeConn(idx, c, whyProtocol)
		}
		return false
	}
	if e.arrived && e.hbMs > 0 {
		e.heard(c)
	}
	rest := buf[n:]
	switch {
	case len(rest) == 0:
		c.in = nil
	case len(c.in) > 0:
		c.in = append(c.in[:0], rest...)
	default:
		c.in = append([]byte(nil), rest...) // a unit split across reads: rare
	}
	return true
}

var (
	errEnd    = errors.New("megatest: the server ended the response") // announced
	errClosed = errors.New("megatest: connection closed")
)

// rand is xorshift64: jitter only, no need for crypto or locks.
func (e *engine) rand() uint64 {
	e.rng ^= e.rng << 13
	e.rng ^= e.rng >> 7
	e.rng ^= e.rng << 17
	return e.rng
}

// reopenHeap is a min-heap of connections waiting to reopen, by due time.
type reopenHeap []reopen

type reopen struct {
	due int64 // ns since t0
	idx int32
}

func (h *reopenHeap) push(r reopen) {
	*h = append(*h, r)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p].due <= a[i].due {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func (h *reopenHeap) pop() reopen {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	for i := 0; ; {
		l, s := 2*i+1, i
		if l < len(a) && a[l].due < a[s].due {
			s = l
		}
		if r := l + 1; r < len(a) && a[r].due < a[s].due {
			s = r
		}
		if s == i {
			break
		}
		a[i], a[s] = a[s], a[i]
		i = s
	}
	*h = a
	return top
}
