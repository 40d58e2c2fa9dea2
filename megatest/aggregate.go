package megatest

import (
	"sync"
	"time"
)

// The aggregator holds the latest snapshot of every process (the engine
// in this process, or each child) and adds them up. Engines and child
// readers call update from their own goroutines; everything else reads
// through the methods, under mu.
type aggregator struct {
	mu      sync.Mutex
	procs   []procState
	peak    int64 // highest sum of active seen
	lastSum int64 // first-opened total at the last change, for stall detection
	lastAt  time.Time
}

type procState struct {
	s      Snapshot // counters; histograms are kept apart below
	lat    sparse
	chat   sparse
	tagged sparse
	hbLate sparse
	rounds []RoundSnap
	seen   bool
	final  bool
	exited bool
}

func newAggregator(procs int) *aggregator {
	return &aggregator{procs: make([]procState, procs), lastAt: time.Now()}
}

func (a *aggregator) update(p int, s *Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := &a.procs[p]
	if s.Lat != nil {
		ps.lat = s.Lat
	}
	if s.ChatLat != nil {
		ps.chat = s.ChatLat
	}
	if s.Tagged != nil {
		ps.tagged = s.Tagged
	}
	if s.HBLate != nil {
		ps.hbLate = s.HBLate
	}
	for len(ps.rounds) < len(s.Rounds) {
		ps.rounds = append(ps.rounds, RoundSnap{})
	}
	for i, r := range s.Rounds {
		ps.rounds[i].Recv = r.Recv
		if r.Hist != nil {
			ps.rounds[i].Hist = r.Hist
		}
	}
	ps.s = *s
	ps.s.Lat, ps.s.Tagged, ps.s.HBLate, ps.s.Rounds, ps.s.ChatLat = nil, nil, nil, nil, nil
	ps.seen = true
	ps.final = ps.final || s.Final
	var active, opened int64
	for i := range a.procs {
		active += a.procs[i].s.Active
		opened += a.procs[i].s.FirstOpened
	}
	a.peak = max(a.peak, active)
	if opened != a.lastSum {
		a.lastSum, a.lastAt = opened, time.Now()
	}
}

// exited marks process p gone (a child that ended).
func (a *aggregator) exited(p int) {
	a.mu.Lock()
	a.procs[p].exited = true
	a.mu.Unlock()
}

// totals is every process added up.
type totals struct {
	Snapshot
	peak   int64
	lat    hist
	chat   hist
	tagged hist
	hbLate hist
	rounds []roundTotal
	finals int
}

type roundTotal struct {
	recv int64
	h    hist
}

func (a *aggregator) total(withHists bool) *totals {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := &totals{peak: a.peak}
	var h hist
	for i := range a.procs {
		ps := &a.procs[i]
		s := &ps.s
		t.N += s.N
		t.Active += s.Active
		t.Ready += s.Ready
		t.Attempted += s.Attempted
		t.FirstOpened += s.FirstOpened
		t.Opened += s.Opened
		t.Closed += s.Closed
		t.Failed += s.Failed
		t.Unexpected += s.Unexpected
		t.Reconnects += s.Reconnects
		t.Expired += s.Expired
		t.Disconnected += s.Disconnected
		t.ChannelNotices += s.ChannelNotices
		t.Gaps += s.Gaps
		t.Msgs += s.Msgs
		t.HB += s.HB
		t.Dups += s.Dups
		t.ProtoErrs += s.ProtoErrs
		t.HTTPErrs += s.HTTPErrs
		t.WriteErrs += s.WriteErrs
		t.Published += s.Published
		t.PubErrors += s.PubErrors
		t.PubDeferred += s.PubDeferred
		t.PubSkipped += s.PubSkipped
		t.Pending += s.Pending
		t.Unacked += s.Unacked
		t.ChatSent += s.ChatSent
		t.ChatAcked += s.ChatAcked
		t.ChatRefused += s.ChatRefused
		t.ChatOwed += s.ChatOwed
		t.ChatRecv += s.ChatRecv
		if ps.final {
			t.Lost += s.Lost
			t.finals++
		} else {
			t.Lost += s.Pending // it never finished: what it still owed is lost
		}
		t.RSS += s.RSS
		t.PSS += s.PSS
		if s.RampStart != 0 && (t.RampStart == 0 || s.RampStart < t.RampStart) {
			t.RampStart = s.RampStart
		}
		t.RampEnd = max(t.RampEnd, s.RampEnd)
		for len(t.rounds) < len(ps.rounds) {
			t.rounds = append(t.rounds, roundTotal{})
		}
		for r, rs := range ps.rounds {
			t.rounds[r].recv += rs.Recv
			if withHists {
				h.fromSparse(rs.Hist)
				t.rounds[r].h.merge(&h)
			}
		}
		if withHists {
			h.fromSparse(ps.lat)
			t.lat.merge(&h)
			h.fromSparse(ps.chat)
			t.chat.merge(&h)
			h.fromSparse(ps.tagged)
			t.tagged.merge(&h)
			h.fromSparse(ps.hbLate)
			t.hbLate.merge(&h)
		}
	}
	for i := range a.procs {
		if a.procs[i].s.RampEnd == 0 {
			t.RampEnd = 0 // not every process has opened all of its share
		}
	}
	return t
}

// rampDone reports whether every connection has opened once, or every one
// was tried and none more opened for stall.
func (a *aggregator) rampDone(stall time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n, attempted, opened int64
	for i := range a.procs {
		ps := &a.procs[i]
		if !ps.seen && !ps.exited {
			return false
		}
		n += int64(ps.s.N)
		attempted += ps.s.Attempted
		opened += ps.s.FirstOpened
	}
	return opened == n || attempted == n && time.Since(a.lastAt) >= stall
}

// allFinal reports whether every process has sent its final snapshot or
// is gone.
func (a *aggregator) allFinal() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.procs {
		if !a.procs[i].final && !a.procs[i].exited {
			return false
		}
	}
	return true
}
