package test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// waitConnections polls stats until the workers hold n connections.
func waitConnections(t *testing.T, s *testutil.Server, n uint64, wait time.Duration) manager.Stats {
	t.Helper()
	var st manager.Stats
	testutil.CheckFor(t, wait, func() error {
		var err error
		if st, err = s.Stats(); err != nil {
			return err
		}
		if st.Connections != n {
			return fmt.Errorf("%d of %d connections", st.Connections, n)
		}
		return nil
	})
	return st
}

// checkHandedOver waits for a megatest run that held n connections across
// a reload: none failed or closed without notice, every one was handed
// over, and every published message arrived exactly once.
func checkHandedOver(t *testing.T, load *megatestRun, n int64) {
	t.Helper()
	_, sum := load.wait(t, 60*time.Second)
	t.Logf("megatest: %+v", sum)
	if sum.ConnectFailed != 0 || sum.ClosedUnexpected != 0 || sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 {
		t.Errorf("connect_failed %d, closed_unexpected %d, lost %d, duplicates %d, publish_errors %d: all must be 0",
			sum.ConnectFailed, sum.ClosedUnexpected, sum.Lost, sum.Duplicates, sum.PublishErrors)
	}
	if sum.Published == 0 || sum.Reconnects < n {
		t.Errorf("published %d, reconnects %d: every connection should have been handed over", sum.Published, sum.Reconnects)
	}
}

// The check: megatest holds 10,000 SSE connections and publishes
// continuously; two SIGHUPs in a row; no connect fails, every published id
// reaches its client exactly once, the old processes are gone.
func TestMegatestAcrossTwoReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 connections")
	}
	restore := enableMigrateReq(t)
	defer restore()
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"2s\""})
	const n = 10000
	load := runMegatest(t, s, "h", "-n", "10000", "-rate", "20000", "-pub", "300", "-hold", "12s")
	first := waitConnections(t, s, n, 30*time.Second)

	s.Signal(syscall.SIGHUP)
	second := waitGeneration(t, s, 2, 0, 0, 20*time.Second)
	syscall.Kill(second.Manager.PID, syscall.SIGHUP) // during the first drain
	waitGeneration(t, s, 3, 2, n, 30*time.Second)
	checkHandedOver(t, load, n)
	waitGone(t, first, second)
	if st := statsCLI(t, s); st.Generation != 3 || st.Manager.PID != s.ManagerPID() {
		t.Errorf("stats: generation %d, manager %d; pid file %d", st.Generation, st.Manager.PID, s.ManagerPID())
	}
}

// The same with SIGKILL to a worker: its clients see their connections die
// without notice (closed_unexpected), reconnect, and lose nothing.
func TestMegatestAcrossWorkerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 connections")
	}
	restore := enableMigrateReq(t)
	defer restore()
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	const n = 10000
	load := runMegatest(t, s, "k", "-n", "10000", "-rate", "20000", "-pub", "300", "-hold", "8s")
	st := waitConnections(t, s, n, 30*time.Second)
	victim := st.Workers[0]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	testutil.CheckFor(t, 20*time.Second, func() error {
		now, err := s.Stats()
		if err != nil {
			return err
		}
		if w := now.Workers[0]; w.PID == victim.PID || w.State != "ready" || now.Connections != n {
			return fmt.Errorf("slot 0 pid %d %s, %d connections", w.PID, w.State, now.Connections)
		}
		return nil
	})
	_, sum := load.wait(t, 60*time.Second)
	t.Logf("megatest: %+v", sum)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.ConnectFailed != 0 {
		t.Errorf("lost %d, duplicates %d, connect_failed %d: all must be 0", sum.Lost, sum.Duplicates, sum.ConnectFailed)
	}
	if sum.ClosedUnexpected != int64(victim.Connections) {
		t.Errorf("closed_unexpected %d, want the %d connections of the killed worker", sum.ClosedUnexpected, victim.Connections)
	}
}

// A reload to a binary whose IPC protocol differs (the old manager claims
// another version through a test hook): the new manager routes nothing to
// the old workers and only drains them; their clients come back to the new
// workers with their cursors and lose nothing.
func TestReloadAcrossIPCVersions(t *testing.T) {
	restore := enableMigrateReq(t)
	defer restore()
	t.Setenv("MEGACOMET_TEST_HANDOVER_IPC", "99")
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1s\""})
	const n = 2000
	load := runMegatest(t, s, "v", "-n", fmt.Sprint(n), "-pub", "300", "-hold", "6s")
	first := waitConnections(t, s, n, 30*time.Second)
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, n, 30*time.Second)
	checkHandedOver(t, load, n)
	if log := s.Log.String(); !strings.Contains(log, "the previous workers speak another IPC version") || !strings.Contains(log, "their_version=99") {
		t.Errorf("the new manager did not say it met another IPC version:\n%s", log)
	}
	waitGone(t, first)
}
