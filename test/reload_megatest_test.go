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

// migrateKernel is a default kernel with the one setting
// etc/sysctl.d/60-megacomet.conf asks for reloads: connections queued on a
// worker that leaves the port move to another instead of being reset.
var migrateKernel = map[string]string{"net.ipv4.tcp_migrate_req": "1"}

// checkHandedOver stops a megatest run that held n connections across a
// reload, once the server holds them all again: none failed or closed
// without notice, every one was handed over, and every published message
// arrived exactly once.
func checkHandedOver(t *testing.T, s *testutil.Server, load *megatestRun, n int) {
	t.Helper()
	waitHeld(t, s, n, 3*time.Minute)
	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest: %+v", sum)
	if sum.ConnectFailed != 0 || sum.ClosedUnexpected != 0 || sum.Lost != 0 || sum.Duplicates != 0 || sum.PublishErrors != 0 {
		t.Errorf("connect_failed %d, closed_unexpected %d, lost %d, duplicates %d, publish_errors %d: all must be 0",
			sum.ConnectFailed, sum.ClosedUnexpected, sum.Lost, sum.Duplicates, sum.PublishErrors)
	}
	if sum.Published == 0 || sum.Reconnects < int64(n) {
		t.Errorf("published %d, reconnects %d: every connection should have been handed over", sum.Published, sum.Reconnects)
	}
}

// The check: megatest holds 2,000 SSE connections and publishes
// continuously; two SIGHUPs in a row; no connect fails, every published id
// reaches its client exactly once, the old processes are gone.
func TestMegatestAcrossTwoReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 connections")
	}
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"2s\""})
	const n = 2000
	load := runMegatest(t, s, "h", "-n", fmt.Sprint(n), "-pub", "300")
	first := waitHeld(t, s, n, 3*time.Minute)
	load.waitMessages(t, 300)

	s.Signal(syscall.SIGHUP)
	second := waitGeneration(t, s, 2, 0, 0, 2*time.Minute)
	syscall.Kill(second.Manager.PID, syscall.SIGHUP) // during the first drain
	waitGeneration(t, s, 3, 2, n, 3*time.Minute)
	checkHandedOver(t, s, load, n)
	waitGone(t, first, second)
	if st := statsCLI(t, s); st.Generation != 3 || st.Manager.PID != s.ManagerPID() {
		t.Errorf("stats: generation %d, manager %d; pid file %d", st.Generation, st.Manager.PID, s.ManagerPID())
	}
}

// The same with SIGKILL to a worker: its clients see their connections die
// without notice (closed_unexpected), reconnect, and lose nothing.
func TestMegatestAcrossWorkerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 connections")
	}
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	s := testutil.Start(t, map[string]string{"server": "workers = 2"})
	const n = 2000
	load := runMegatest(t, s, "k", "-n", fmt.Sprint(n), "-pub", "300")
	st := waitHeld(t, s, n, 3*time.Minute)
	load.waitMessages(t, 300)
	victim := st.Workers[0]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	waitReplaced(t, s, victim, n)
	waitHeld(t, s, n, 3*time.Minute)
	_, sum := load.stop(t, 2*time.Minute)
	t.Logf("megatest: %+v", sum)
	if sum.Lost != 0 || sum.Duplicates != 0 || sum.ConnectFailed != 0 || sum.PublishErrors != 0 || sum.Published == 0 {
		t.Errorf("lost %d, duplicates %d, connect_failed %d, publish_errors %d: all must be 0; published %d",
			sum.Lost, sum.Duplicates, sum.ConnectFailed, sum.PublishErrors, sum.Published)
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
	testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
	t.Setenv("MEGACOMET_TEST_HANDOVER_IPC", "99")
	s := testutil.Start(t, map[string]string{"server": "workers = 2\ndrain = \"1s\""})
	const n = 2000
	load := runMegatest(t, s, "v", "-n", fmt.Sprint(n), "-pub", "300")
	first := waitHeld(t, s, n, 3*time.Minute)
	load.waitMessages(t, 300)
	s.Signal(syscall.SIGHUP)
	waitGeneration(t, s, 2, 2, n, 3*time.Minute)
	checkHandedOver(t, s, load, n)
	if log := s.Log.String(); !strings.Contains(log, "the previous workers speak another IPC version") || !strings.Contains(log, "their_version=99") {
		t.Errorf("the new manager did not say it met another IPC version:\n%s", log)
	}
	waitGone(t, first)
}

// waitReplaced waits until slot 0's killed worker (victim) is replaced
// and the server holds n connections again.
func waitReplaced(t *testing.T, s *testutil.Server, victim manager.WorkerStats, n uint64) {
	t.Helper()
	s.WaitStats(t, time.Minute, func(now manager.Stats) error {
		if w := now.Workers[0]; w.PID == victim.PID || w.State != "ready" || now.Connections != n {
			return fmt.Errorf("slot 0 pid %d %s, %d connections", w.PID, w.State, now.Connections)
		}
		return nil
	})
}
