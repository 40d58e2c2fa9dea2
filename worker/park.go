package worker

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/hooks"
	"github.com/megacomet/megacomet/ipc"
	"golang.org/x/sys/unix"
)

// The application's hooks on the worker's side (hooks/ makes the calls).
// A comet request that needs the application's word is parked: its
// admission (what its answer and subscription need) is copied out of the
// request, the connection waits in stParked with its number in conn.token,
// and the loop goes on. A hooks.Caller goroutine asks the application and
// hands the verdict to hookAnswered, which queues it and wakes the loop
// through the control connection (a TypeHooksAnswered frame, made here);
// the loop then admits, refuses (403) or fails (503, Retry-After) the
// connection, in the order the answers came. A client that leaves while
// parked is forgotten: its answer finds no one. A parked connection's
// timer is a backstop past hooks.timeout (the Caller answers by then), and
// a drain hands it over like any request not yet answered.

// parked is a connection waiting for the application: a connect (with
// its admission), or a WebSocket command (a subscribe or publish call)
// that holds the connection's later input until it is answered.
type parked struct {
	cc   *conn
	call hooks.Call // what the application is asked; read by the Caller
	a    admission  // its slices its own (the call's strings), not the request's
}

// hookResult is one answer on its way to the loop.
type hookResult struct {
	seq uint32
	v   hooks.Verdict
}

// mustAsk reports whether admitting a needs the application: no token
// admitted it and there is a connect hook, or it asks for a channel its
// token does not grant and there is a subscribe hook.
func (w *Worker) mustAsk(a *admission) bool {
	h := w.hooks
	if h == nil {
		return false
	}
	if !a.grant.admitted {
		return h.On(hooks.Connect)
	}
	if h.On(hooks.Subscribe) {
		for _, ch := range a.channels {
			if !auth.Allows(a.grant.allowed, string(ch)) {
				return true
			}
		}
	}
	return false
}

// park hands a's admission to the application and leaves cc waiting.
func (w *Worker) park(cc *conn, r *request, a *admission) {
	seq := w.nextPark()
	p := &parked{cc: cc, a: *a, call: hooks.Call{
		Kind: hooks.Connect, ID: string(a.id), Transport: transportNames[a.tr],
		Addr: w.clientAddr(cc).String(), Headers: w.forwardHeaders(r, a.tr),
		Granted: a.grant.allowed, Admitted: a.grant.admitted,
	}}
	p.a.id = stringBytes(p.call.ID) // read only, as every slice here
	p.a.origin = bytes.Clone(a.origin)
	p.a.callback = bytes.Clone(a.callback)
	p.a.ws101 = bytes.Clone(a.ws101)
	if len(a.channels) > 0 {
		p.call.Channels = make([]string, len(a.channels))
		p.a.channels = make([][]byte, len(a.channels))
		for i, ch := range a.channels {
			p.call.Channels[i] = string(ch)
			p.a.channels[i] = stringBytes(p.call.Channels[i])
		}
	}
	w.parked[seq] = p
	cc.state, cc.token = stParked, seq
	w.schedule(cc, w.tick+w.parkTicks)
	if v, queued := w.hooks.Ask(&p.call, func(v hooks.Verdict) { w.hookAnswered(seq, v) }); !queued {
		w.resumeParked(seq, v)
	}
}

// unpark forgets a parked connection that is leaving: its answer, when
// it comes, finds no one.
func (w *Worker) unpark(cc *conn) {
	if p := w.parked[cc.token]; p != nil && p.cc == cc {
		delete(w.parked, cc.token)
	}
	cc.state = stReading
}

// hookAnswered runs on a Caller goroutine: it queues the verdict and
// wakes the loop, once for however many answers wait.
func (w *Worker) hookAnswered(seq uint32, v hooks.Verdict) {
	w.hookMu.Lock()
	w.hookDone = append(w.hookDone, hookResult{seq, v})
	first := len(w.hookDone) == 1
	w.hookMu.Unlock()
	if first {
		w.bridge.inject(hooksAnsweredFrame)
	}
}

var hooksAnsweredFrame = ipc.AppendFrame(nil, ipc.TypeHooksAnswered, nil)

// hooksAnswered is the loop's side: every answer that waits is applied.
func (w *Worker) hooksAnswered() {
	w.hookMu.Lock()
	done := w.hookDone
	w.hookDone = w.hookSpare[:0]
	w.hookMu.Unlock()
	for _, r := range done {
		w.resumeParked(r.seq, r.v)
	}
	clear(done)
	w.hookSpare = done
}

// ask hands a WebSocket command to the application; the connection's
// input waits behind it (wsData) until resumeParked applies the answer.
func (w *Worker) ask(cc *conn, kind hooks.Kind, channel string, data []byte) {
	seq := w.nextPark()
	p := &parked{cc: cc, call: hooks.Call{Kind: kind, ID: cc.id, Transport: transportNames[trWS], Channels: []string{channel},
		Addr: w.clientAddr(cc).String(), Data: bytes.Clone(data)}}
	w.parked[seq] = p
	cc.extra().asking = seq
	if v, queued := w.hooks.Ask(&p.call, func(v hooks.Verdict) { w.hookAnswered(seq, v) }); !queued {
		w.resumeParked(seq, v)
	}
}

// nextPark numbers a new parked call.
func (w *Worker) nextPark() uint32 {
	w.parkSeq++
	for w.parkSeq == 0 || w.parked[w.parkSeq] != nil {
		w.parkSeq++
	}
	return w.parkSeq
}

// answered applies the answer to a WebSocket command, then reads what
// came behind it.
func (w *Worker) answered(seq uint32, p *parked, v hooks.Verdict) {
	cc := p.cc
	if cc.state != stStreaming || cc.x == nil || cc.x.asking != seq {
		return // it left meanwhile
	}
	cc.x.asking = 0
	channel := p.call.Channels[0]
	switch {
	case v.Status == 503:
		w.counts.HookFailed++
		w.wsError(cc, v.Reason, channel)
	case v.Status != 0:
		w.counts.AuthRefused++
		w.wsError(cc, v.Reason, channel)
	case p.call.Kind == hooks.Subscribe:
		cc.x.allowed = append(slices.Clip(cc.x.allowed), channel) // asked once; the grant may be shared
		w.resubscribe(cc, cc.cursor, stringBytes(channel), nil)
	default:
		data := []byte(p.call.Data)
		if len(v.Data) > 0 {
			data = v.Data // the application rewrote it
		}
		w.sendPublish(cc, channel, data)
	}
	if cc.state == stStreaming && cc.x != nil && len(cc.x.in) > 0 && cc.x.asking == 0 {
		in := cc.x.in
		cc.x.in = nil
		w.wsData(cc, in)
	}
}

// resumeParked answers parked connection seq with the application's verdict.
func (w *Worker) resumeParked(seq uint32, v hooks.Verdict) {
	p := w.parked[seq]
	if p == nil {
		return // it left meanwhile
	}
	delete(w.parked, seq)
	if p.call.Kind != hooks.Connect {
		w.answered(seq, p, v)
		return
	}
	cc, a := p.cc, &p.a
	cc.state = stReading
	w.unschedule(cc)
	switch {
	case v.Status == 503:
		w.counts.HookFailed++
		w.answerRefusal(cc, a.origin, &auth.Refusal{Status: 503, Reason: v.Reason}, 0)
		w.linger(cc)
		return
	case v.Status != 0:
		w.refuse(cc, a.origin, &auth.Refusal{Status: 403, Reason: v.Reason}, 0)
		return
	case v.ExpireAt != 0 && !time.Unix(v.ExpireAt, 0).After(time.Now()):
		w.refuse(cc, a.origin, &auth.Refusal{Status: 403, Reason: "the application's expire_at has passed"}, 0)
		return
	}
	a.grant.allowed = v.Channels
	if v.ExpireAt != 0 {
		a.grant.exp = w.expiryTick(time.Unix(v.ExpireAt, 0))
	}
	var in []byte
	if cc.x != nil {
		in, cc.x.in = cc.x.in, nil // what came while it was parked
	}
	w.admit(cc, a)
	switch {
	case len(in) == 0 || cc.state == stDead || cc.state == stLingering:
	case cc.tr == trWS && cc.state == stStreaming:
		w.wsData(cc, in)
	case cc.state == stPolling:
		cc.extra().in = in // pipelined behind the poll
	}
}

// parkedTimedOut is the backstop: the application's answer did not come
// back in time (the Caller bounds each call by hooks.timeout).
func (w *Worker) parkedTimedOut(cc *conn) {
	p := w.parked[cc.token]
	var origin []byte
	if p != nil && p.cc == cc {
		origin = p.a.origin
	}
	w.unpark(cc)
	w.counts.HookFailed++
	w.answerRefusal(cc, origin, &auth.Refusal{Status: 503, Reason: "the application's hook did not answer in time: retry"}, 0)
	w.linger(cc)
}

// clientAddr is the client's address: the one a PROXY header or a trusted
// proxy named, else its peer's.
func (w *Worker) clientAddr(cc *conn) netip.Addr {
	if a, ok := w.realIP[cc]; ok {
		return a
	}
	if a := peerIP(cc.ec); a.IsValid() {
		return a
	}
	if sa, err := unix.Getpeername(evioFD(cc.ec)); err == nil {
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			return netip.AddrFrom4(sa.Addr)
		case *unix.SockaddrInet6:
			return netip.AddrFrom16(sa.Addr).Unmap()
		}
	}
	return netip.Addr{}
}

// forwardHeaders picks hooks.forward_headers out of the request head.
// Cookie is the browser's own credential, sent whatever page started the
// request, so it goes only where a page of ours started it - the rule the
// auth cookie follows (authz.go), and with server.allowed_origins = ["*"]
// no Origin is one of ours.
func (w *Worker) forwardHeaders(r *request, tr transport) hooks.Headers {
	var h hooks.Headers
	for _, name := range w.opts.Hooks.ForwardHeaders {
		if name == "Cookie" && w.ambientRefusal(r, &w.q, tr) != nil {
			continue
		}
		if v := headerValue(w.head, name); v != "" {
			h = append(h, name, v)
		}
	}
	return h
}

// headerValue is the value of header name in a request head, repeated
// fields joined (Cookie with "; ", others with ", ").
func headerValue(head []byte, name string) string {
	sep := ", "
	if name == "Cookie" {
		sep = "; "
	}
	var out []string
	lower := []byte(strings.ToLower(name))
	for len(head) > 0 {
		var line []byte
		line, head = cutByte(head, '\n')
		k, v, ok := bytes.Cut(line, []byte{':'})
		if ok && asciiEqualFold(k, lower) {
			out = append(out, string(trimOWS(bytes.TrimSuffix(v, []byte{'\r'}))))
		}
	}
	return strings.Join(out, sep)
}
