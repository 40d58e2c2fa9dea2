package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// Replay amplification. Every join (a connection with since=, a WebSocket
// {"since":N}) costs the manager a copy of what it replays, queued to the
// worker until it reads it. Before joins were bounded, 3 anonymous
// WebSocket clients sending {"since":1} 32 times each against 100
// retained broadcasts of 200 KB took the manager from 40 MiB to 991 MiB
// and had the worker killed, seven times. Now a join copies at most half
// of comet.max_pending, a connection has one join on its way at most (the
// others are coalesced), and past 16 MiB queued to a worker joins wait
// their turn: the manager's memory stays bounded, no worker is killed,
// and the worker's other clients notice nothing.

// stormGrowth is what the manager's RSS may grow by during a storm here
// (a race-built manager, one worker): at most 16 MiB of joins queued to
// the worker and one join's replay (512 KiB) in the making, and what the
// race detector and the garbage collector keep beside them. Measured:
// see the test log ("manager RSS").
const stormGrowth = 160 << 20

// stormServer is one worker (every client on it) with 100 broadcasts of
// size bytes retained, and 200 megatest clients on it publishing to
// themselves: the bystanders.
func stormServer(t *testing.T, size int) (*testutil.Server, *megatestRun) {
	t.Helper()
	s := testutil.Start(t, map[string]string{"server": "workers = 1", "comet": "history_size = 100"})
	publishMany(t, s.API, `"broadcast":true`, 100, size)
	by := runMegatest(t, s, "by", "-n", "200", "-pub", "50")
	waitHeld(t, s, 200, 3*time.Minute)
	by.waitMessages(t, 50)
	return s, by
}

// peakRSS samples the manager's RSS until stop is called, and returns the
// highest it saw.
func peakRSS(t *testing.T, s *testutil.Server) (stop func() uint64) {
	var mu sync.Mutex
	peak := s.MustStats().Manager.RSSBytes
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if st, err := s.Stats(); err == nil {
				mu.Lock()
				peak = max(peak, st.Manager.RSSBytes)
				mu.Unlock()
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-ended
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// checkStorm: the manager grew by less than stormGrowth, no worker was
// killed or restarted, and the bystanders lost nothing, got nothing twice
// and were never closed or handed over.
func checkStorm(t *testing.T, s *testutil.Server, by *megatestRun, base manager.Stats, peak uint64) manager.Stats {
	t.Helper()
	st := s.MustStats()
	grew := int64(peak) - int64(base.Manager.RSSBytes)
	t.Logf("manager RSS %d MiB before, peak %d MiB (+%d MiB); joins %d, replays partial %d, joins deferred %d",
		base.Manager.RSSBytes>>20, peak>>20, grew>>20, st.Manager.Joins-base.Manager.Joins,
		st.Manager.ReplaysPartial-base.Manager.ReplaysPartial, st.Manager.JoinsDeferred-base.Manager.JoinsDeferred)
	if grew > stormGrowth {
		t.Errorf("the manager grew by %d MiB during the storm, bound %d MiB", grew>>20, stormGrowth>>20)
	}
	if st.Manager.WorkersKilled != 0 || st.Workers[0].Restarts != 0 {
		t.Errorf("workers_killed %d, restarts %d: the storm had the worker killed", st.Manager.WorkersKilled, st.Workers[0].Restarts)
	}
	_, sum := by.stop(t, 2*time.Minute)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.ClosedUnexpected != 0 || sum.Reconnects != 0 || sum.ConnectFailed != 0 || sum.Published == 0 {
		t.Errorf("bystanders: lost %d, duplicates %d, closed_unexpected %d, reconnects %d, connect_failed %d (published %d)",
			sum.Lost, sum.Duplicates, sum.ClosedUnexpected, sum.Reconnects, sum.ConnectFailed, sum.Published)
	}
	return st
}

// wsSince opens an anonymous WebSocket, sends {"since":1} commands times
// at once, and reads what comes until the server closes it (a replay past
// what it may send ends with its reconnect hint).
func wsSince(s *testutil.Server, id string, commands int) error {
	c, _, _, err := ws.Dial(context.Background(), "ws://"+s.Listen+"/ws/"+id)
	if err != nil {
		return err
	}
	defer c.Close()
	var frames []byte
	for range commands {
		f := ws.MaskFrameInPlace(ws.NewTextFrame([]byte(`{"since":1}`)))
		b, _ := ws.CompileFrame(f)
		frames = append(frames, b...)
	}
	if _, err := c.Write(frames); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for {
		f, err := ws.ReadFrame(c)
		switch {
		case err == io.EOF || err == nil && f.Header.OpCode == ws.OpClose:
			return nil
		case err != nil:
			return fmt.Errorf("%s: %v", id, err)
		}
	}
}

// The review's two reproductions: WebSocket clients sending {"since":1}
// 32 times at once, three rounds each.
func TestReplayAmplificationWS(t *testing.T) {
	for _, tc := range []struct {
		name         string
		size, conns  int
		rounds, cmds int
	}{
		{"3 clients, 100 broadcasts of 200 KB", 200 << 10, 3, 3, 32},
		{"30 clients, 100 broadcasts of 8 KB", 8 << 10, 30, 3, 32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, by := stormServer(t, tc.size)
			base := s.MustStats()
			stop := peakRSS(t, s)
			parallel(t, tc.conns, func(i int) error {
				for r := range tc.rounds {
					if err := wsSince(s, fmt.Sprintf("atk%d-%d", i, r), tc.cmds); err != nil {
						return err
					}
				}
				return nil
			})
			st := checkStorm(t, s, by, base, stop())
			// One join per connection, and of its 32 commands at most two
			// more: the one that went, and the coalesced rest.
			if joins, most := st.Manager.Joins-base.Manager.Joins, uint64(3*tc.conns*tc.rounds); joins > most {
				t.Errorf("%d joins for %d connections of %d commands: want at most %d", joins, tc.conns*tc.rounds, tc.cmds, most)
			}
			if st.Manager.ReplaysPartial == base.Manager.ReplaysPartial {
				t.Errorf("replays_partial did not move: no replay was bounded")
			}
		})
	}
}

// A reconnect storm on every transport: clients that come back with
// since=1 again and again, reading a little of each answer and leaving.
func TestReplayAmplificationReconnects(t *testing.T) {
	s, by := stormServer(t, 200<<10)
	base := s.MustStats()
	stop := peakRSS(t, s)
	const perTransport, rounds = 10, 10
	transports := []string{"sse", "stream", "lp", "ws"}
	parallel(t, perTransport*len(transports), func(i int) error {
		tr := transports[i%len(transports)]
		for r := range rounds {
			c, err := net.Dial("tcp", s.Listen)
			if err != nil {
				return err
			}
			req := fmt.Sprintf("GET /%s/rc%d-%d?since=1 HTTP/1.1\r\nHost: x\r\n", tr, i, r)
			if tr == "ws" {
				req += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
			}
			io.WriteString(c, req+"\r\n")
			// 40 storming clients share one worker with 200 bystanders:
			// a slow machine's answer can take minutes.
			c.SetReadDeadline(time.Now().Add(5 * time.Minute))
			_, err = io.CopyN(io.Discard, c, 64<<10) // some of it, then gone
			c.Close()
			if err != nil && err != io.EOF {
				return fmt.Errorf("%s round %d: %v", tr, r, err)
			}
		}
		return nil
	})
	st := checkStorm(t, s, by, base, stop())
	if st.Manager.ReplaysPartial == base.Manager.ReplaysPartial {
		t.Errorf("replays_partial did not move: no replay was bounded")
	}
}
