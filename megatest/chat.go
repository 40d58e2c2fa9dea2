package megatest

import (
	"strconv"
	"time"
)

// -chat R: every held WebSocket connection is in one channel (LETTER-c0,
// or with -channels N connection i is in LETTER-c<i mod N>), and R
// messages a second in all are published by random held clients over
// their own connection ({"publish":CHANNEL,"data":…}: the server must
// allow it, comet.client_publish or a token with a publish claim). Every
// member of the channel should get each one: the server's ack says the
// message was taken, and its channel's member count (from -n and
// -channels: every connection of the run, in every process) is what it
// owes; deliveries are counted at each member, where a repeat or an id out
// of order is a duplicate. Lost is owed less delivered, over every
// process, after -grace. Latency is from the send to each member.

// chatTurn sends this turn's share of -chat.
func (e *engine) chatTurn(now int64) {
	dt := float64(now-e.lastTurn) / 1e9
	e.chatAllow = min(e.chatAllow+e.chatRate*dt, max(e.chatRate/5, 1))
	// Only once the whole run is answered: a member that is not there
	// yet would not be owed the message.
	if e.st.ready == 0 || !e.chatOn.Load() {
		e.chatAllow = 0
		return
	}
	for tries := 0; e.chatAllow >= 1 && tries < 64; tries++ {
		idx := int32(e.rand() % uint64(len(e.conns)))
		c := &e.conns[idx]
		if c.state != stBody || c.flags&fReady == 0 {
			continue
		}
		e.chatAllow--
		e.chatSeq++
		b := append(e.chatBuf[:0], `{"publish":"`...)
		b = e.o.appendChannel(b, e.first+int(idx))
		b = append(b, `","data":{"t":`...)
		b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
		b = append(b, `,"c":`...)
		b = strconv.AppendUint(b, e.chatSeq, 10)
		b = append(append(append(b, `,"r":"`...), e.tag...), `"}}`...)
		e.chatBuf = b
		e.wbuf = appendWSFrame(e.wbuf[:0], wsText, b, uint32(e.rand()))
		if e.write(idx, c, e.wbuf) {
			e.st.chatSent++
		}
	}
}

// chatAnswer counts the server's answer to one of our publishes.
func (e *engine) chatAnswer(idx int32, m *msgInfo) {
	if m.refused {
		e.st.chatRefused++
		return
	}
	e.st.chatAcked++
	e.st.chatOwed += int64(e.o.members(e.first + int(idx)))
}

// members is how many connections of the run share connection i's
// channel.
func (o *Options) members(i int) int {
	ch, total := max(o.Channels, 1), o.total()
	c := i % ch
	return total/ch + btoi(c < total%ch)
}

// total is every process's connections: the parent's -n.
func (o *Options) total() int {
	if o.Total > 0 {
		return o.Total
	}
	return o.N
}
