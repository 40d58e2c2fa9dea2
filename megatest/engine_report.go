//go:build linux

package megatest

import "golang.org/x/sys/unix"

// pubTurn picks this turn's -pub targets among the connections the server
// knows, round-robin, and hands them to the publisher. A long-poll client
// the server has answered once is known between its polls too: it polls
// again from its cursor, and history gives it what came meanwhile (its
// polls may all end at its token's expiry, before any message).
func (e *engine) pubTurn(now int64) {
	dt := float64(now-e.lastTurn) / 1e9
	e.pubAllow = min(e.pubAllow+e.pub.rate*dt, max(e.pub.rate/5, 1))
	if e.st.ready == 0 && e.tr != trLP {
		e.pubAllow = 0
		return
	}
	k := int(e.pubAllow)
	if k <= 0 {
		return
	}
	targets := make([]uint32, 0, k)
	for steps := 0; len(targets) < k && steps < len(e.conns); steps++ {
		i := e.pubCursor
		if e.pubCursor++; e.pubCursor == len(e.conns) {
			e.pubCursor = 0
		}
		if f := e.conns[i].flags; f&fReady != 0 || e.tr == trLP && f&fCursor != 0 {
			targets = append(targets, uint32(i))
		}
	}
	e.pubAllow -= float64(len(targets))
	if len(targets) > 0 {
		e.pub.offer(targets)
	}
}

// snapshot reports the loop's state (see Snapshot).
func (e *engine) snapshot(final bool) {
	st := &e.st
	s := &Snapshot{
		Final: final, N: len(e.conns),
		Active: st.active, Ready: st.ready, Peak: st.peak,
		Attempted: st.attempted, FirstOpened: st.firstOpened,
		Opened: st.opened, Closed: st.closed, Failed: st.failed,
		Unexpected: st.unexpected, Reconnects: st.recon, Expired: st.expired, Disconnected: st.disconnected, ChannelNotices: st.channelNotices, Gaps: st.gaps,
		Msgs: st.msgs, HB: st.hb, Dups: st.dups,
		ProtoErrs: st.protoErrs, HTTPErrs: st.httpErrs, WriteErrs: st.writeErrs,
		RampStart: e.rampStart, RampEnd: e.rampEnd,
	}
	// smaps_rollup walks the page tables: every 5 s is enough.
	if final || e.memAt == 0 || e.lastSnap-e.memAt >= int64(memEvery) {
		e.rss, e.pss = memory()
		e.memAt = max(e.lastSnap, 1)
	}
	s.RSS, s.PSS = e.rss, e.pss
	if e.pub != nil {
		s.Published, s.PubErrors, s.PubSkipped = e.pub.published.Load(), e.pub.errors.Load(), e.pub.skipped.Load()
		s.PubDeferred = int64(e.pub.api.deferred.Load())
		s.Pending, s.Unacked, _ = e.ledger.counts()
		if final {
			s.Lost = s.Pending
		}
	}
	s.ChatSent, s.ChatAcked, s.ChatRefused, s.ChatOwed, s.ChatRecv = st.chatSent, st.chatAcked, st.chatRefused, st.chatOwed, st.chatRecv
	if e.chatLatV != e.sentChatV {
		s.ChatLat, e.sentChatV = e.chatLat.sparse(), e.chatLatV
	}
	if e.latV != e.sentLatV {
		s.Lat, e.sentLatV = e.lat.sparse(), e.latV
	}
	if e.taggedV != e.sentTagV {
		s.Tagged, e.sentTagV = e.tagged.sparse(), e.taggedV
	}
	if e.hbLateV != e.sentHBLateV {
		s.HBLate, e.sentHBLateV = e.hbLate.sparse(), e.hbLateV
	}
	if len(e.rounds) > 0 {
		s.Rounds = make([]RoundSnap, len(e.rounds))
		for i := range e.rounds {
			r := &e.rounds[i]
			s.Rounds[i].Recv = r.recv
			if r.v != r.sv {
				s.Rounds[i].Hist, r.sv = r.h.sparse(), r.v
			}
		}
	}
	e.report(s)
}

func unixWriteIgnore(fd int32, b []byte) { unix.Write(int(fd), b) }
