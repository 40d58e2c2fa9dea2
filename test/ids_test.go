package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// crashAndRestart SIGKILLs a manager together with its workers, as a
// power cut or the OOM killer would, then starts another on the same
// manager.state_dir with its clock an hour back (MEGACOMET_CLOCK_SKEW),
// and checks what clients that come back with their cursors get.
// keepState false deletes the state first: the contrast.
func crashAndRestart(t *testing.T, keepState bool) (delivered, published int, firstID, lastCursor uint64) {
	t.Setenv("MEGACOMET_CLOCK_SKEW", "") // the first manager's clock is right
	state := filepath.Join(testutil.ShortTempDir(t), "state")
	cfg := map[string]string{"manager": fmt.Sprintf("state_dir = %q", state)}
	a := testutil.Start(t, cfg)
	const n = 6
	var cursors [n]uint64
	for i := range n {
		c := openStream(t, a.Listen, fmt.Sprintf("/sse/crash%d", i))
		cursors[i] = waitLive(t, a.API, c, fmt.Sprintf("crash%d", i))
		c.close()
	}
	lastCursor = slices.Max(cursors[:])
	st := a.MustStats()
	for _, w := range st.Workers {
		syscall.Kill(w.PID, syscall.SIGKILL)
	}
	syscall.Kill(a.ManagerPID(), syscall.SIGKILL)
	<-a.Exited()
	if !keepState {
		if err := os.RemoveAll(state); err != nil {
			t.Fatal(err)
		}
	}

	t.Setenv("MEGACOMET_CLOCK_SKEW", "-1h")
	b := testutil.Start(t, cfg)
	var clients []*streamClient
	for i := range n {
		clients = append(clients, openStream(t, b.Listen, fmt.Sprintf("/sse/crash%d?since=%d", i, cursors[i])))
	}
	fresh := openStream(t, b.Listen, "/sse/fresh") // no cursor: from now on
	b.WaitStats(t, 30*time.Second, func(st manager.Stats) error {
		if st.IDs != n+1 {
			return fmt.Errorf("%d ids subscribed, want %d", st.IDs, n+1)
		}
		return nil
	})
	var ids []uint64
	for i := range 10 {
		ids = append(ids, publish(t, b.API, fmt.Sprintf(`{"broadcast":true,"data":%d}`, i))[0])
	}
	firstID, published = ids[0], len(ids)
	wait := 30 * time.Second
	if !keepState {
		wait = time.Second // the contrast: only logged
	}
	for i, c := range append(clients, fresh) {
		gaps := 0
		for _, want := range ids {
			m, ok := c.tryNext(wait)
			if ok && m.Gap != nil {
				// After a crash what the old manager issued past a cursor
				// may be gone: said once, before the new messages.
				if gaps++; i == n || gaps > 1 || m.Gap.After != cursors[i] || m.Gap.Before != ids[0] {
					t.Errorf("client %d: gap %+v (%d), want one {after %d, before %d} for a cursor, none for the fresh one", i, m.Gap, gaps, cursors[i], ids[0])
				}
				m, ok = c.tryNext(wait)
			}
			if !ok {
				break
			}
			if m.ID != want {
				t.Errorf("got message %d, want %d", m.ID, want)
				break
			}
			delivered++
		}
		if keepState && i < n && gaps != 1 {
			t.Errorf("client %d came back after a crash and was told of %d gaps, want 1", i, gaps)
		}
	}
	return delivered, published * (n + 1), firstID, lastCursor
}

// Ids only grow across a crash: the new manager starts above the
// high-water mark in manager.state_dir though its clock is an hour behind,
// so clients that come back with their cursors, and a fresh one, get every
// message published after the restart - the ones with a cursor after one
// gap announcement, for what the crashed manager may have issued past it. Without the state file the same
// restart issues ids below the cursors, and the clients get none of it.
func TestIDsGrowAcrossACrash(t *testing.T) {
	delivered, want, first, cursor := crashAndRestart(t, true)
	if delivered != want || first <= cursor {
		t.Errorf("with the state file: %d of %d delivered; the first id after the restart %d, the clients' cursor %d", delivered, want, first, cursor)
	}
	t.Run("without the state file", func(t *testing.T) {
		delivered, want, first, cursor := crashAndRestart(t, false)
		t.Logf("without the state file (the failure this prevents): %d of %d delivered; the first id after the restart %d, %s below the clients' cursor %d",
			delivered, want, first, time.Duration(cursor-min(first, cursor))*time.Microsecond, cursor)
		if first > cursor {
			t.Errorf("ids grew without the state file too (%d > %d): the contrast shows nothing", first, cursor)
		}
	})
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// megatest across a full restart - the manager stopped (SIGTERM: its
// workers tell their clients to come back), then a new one started on the
// same ports and state_dir, no hand-over - with -pub throughout: the new
// manager starts with the history the old one kept, so the clients that
// come back with their cursors lose nothing, get nothing twice, and no gap
// is announced (none of what they missed is gone).
func TestMegatestAcrossAFullRestart(t *testing.T) {
	state := filepath.Join(testutil.ShortTempDir(t), "state")
	cfg := map[string]string{
		"server":  fmt.Sprintf("listen = %q", freeAddr(t)),
		"api":     fmt.Sprintf("listen = %q", freeAddr(t)),
		"manager": fmt.Sprintf("state_dir = %q", state),
	}
	a := testutil.Start(t, cfg)
	r := runMegatest(t, a, "rs", "-transport", "sse", "-n", "1000", "-pub", "200")
	waitHeld(t, a, 1000, 3*time.Minute)
	r.waitMessages(t, 500)
	a.Stop()
	b := testutil.Start(t, cfg)
	if !strings.Contains(b.Log.String(), "history restored from the last stop") {
		t.Errorf("the new manager did not restore the history:\n%s", b.Log.String())
	}
	waitHeld(t, b, 1000, 3*time.Minute)
	r.waitMessages(t, r.progress("msgs")+500)
	_, sum := r.stop(t, 2*time.Minute)
	t.Logf("%d published, %d messages, %d reconnects, %d gaps, %d lost, %d duplicates", sum.Published, sum.Messages, sum.Reconnects, sum.Gaps, sum.Lost, sum.Duplicates)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.Gaps != 0 || sum.Reconnects < 1000 {
		t.Errorf("lost %d, duplicates %d, gaps %d, reconnects %d", sum.Lost, sum.Duplicates, sum.Gaps, sum.Reconnects)
	}
}
