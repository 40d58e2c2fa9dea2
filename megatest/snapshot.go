package megatest

import (
	"os"
	"strconv"
	"strings"
)

// Snapshot is one process's state, cumulative since its start. Children
// send one as a JSON line on stdout every half second and a final one
// when they stop; the parent adds them up. A histogram left out (nil) is
// unchanged since the previous snapshot, so idle ones cost nothing.
type Snapshot struct {
	Proc  int  `json:"proc"`
	Final bool `json:"final,omitempty"`
	N     int  `json:"n"` // connections this process holds when all are open

	Active      int64 `json:"active"`
	Ready       int64 `json:"ready"` // the server has answered them
	Peak        int64 `json:"peak"`
	Attempted   int64 `json:"attempted"`    // first opens started
	FirstOpened int64 `json:"first_opened"` // connections opened at least once
	Opened      int64 `json:"opened"`
	Closed      int64 `json:"closed"`
	Failed      int64 `json:"failed"`
	Unexpected  int64 `json:"unexpected"`
	Reconnects  int64 `json:"reconnects"`
	Expired     int64 `json:"expired"` // the server ended a connection because its token expired
	// Disconnected: connections the server ended for POST /disconnect
	// (announced, never unexpected).
	Disconnected int64 `json:"disconnected"`
	// ChannelNotices: notices of a connection's new channels (POST
	// /subscribe, /unsubscribe).
	ChannelNotices int64 `json:"channel_notices"`
	Gaps           int64 `json:"gaps"` // the server announced messages that may be missing
	Msgs           int64 `json:"msgs"`
	HB             int64 `json:"hb"`
	Dups           int64 `json:"dups"`
	ProtoErrs      int64 `json:"proto_errs"`
	HTTPErrs       int64 `json:"http_errs"`
	WriteErrs      int64 `json:"write_errs"`

	Published   int64 `json:"published"`
	PubErrors   int64 `json:"pub_errors"`
	PubDeferred int64 `json:"pub_deferred"` // publishes the server deferred (503, Retry-After) and that were sent again
	PubSkipped  int64 `json:"pub_skipped"`
	Pending     int64 `json:"pending"` // published, not delivered yet
	Unacked     int64 `json:"unacked"` // delivered, but the publish answer failed
	Lost        int64 `json:"lost"`    // final: pending when the run ended

	RampStart int64 `json:"ramp_start"` // unix ns of the first connect
	RampEnd   int64 `json:"ramp_end"`   // unix ns when every connection had opened
	RSS       int64 `json:"rss"`
	PSS       int64 `json:"pss"` // RSS with shared pages split among their users

	// -chat (chat.go).
	ChatSent    int64  `json:"chat_sent,omitempty"`
	ChatAcked   int64  `json:"chat_acked,omitempty"`
	ChatRefused int64  `json:"chat_refused,omitempty"`
	ChatOwed    int64  `json:"chat_owed,omitempty"`
	ChatRecv    int64  `json:"chat_recv,omitempty"`
	ChatLat     sparse `json:"chat_lat,omitempty"` // send → each member, µs

	Lat    sparse      `json:"lat,omitempty"`     // -pub latency, µs
	Tagged sparse      `json:"tagged,omitempty"`  // every message of ours, µs
	HBLate sparse      `json:"hb_late,omitempty"` // heartbeat lateness, µs
	Rounds []RoundSnap `json:"rounds,omitempty"`  // broadcast round r at [r-1]
}

// RoundSnap is one broadcast round as one process saw it.
type RoundSnap struct {
	Recv int64  `json:"recv"`
	Hist sparse `json:"hist,omitempty"`
}

// memory is this process's resident set and proportional set size in
// bytes (one read of /proc/self/smaps_rollup; RSS from status when that
// file is missing).
func memory() (rss, pss int64) {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		b, _ = os.ReadFile("/proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		key, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseInt(f[0], 10, 64)
		switch key {
		case "Rss", "VmRSS":
			rss = kb * 1024
		case "Pss":
			pss = kb * 1024
		}
	}
	if pss == 0 {
		pss = rss
	}
	return rss, pss
}
