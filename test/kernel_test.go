package test

import (
	"strings"
	"testing"

	"github.com/megacomet/megacomet/internal/testutil"
)

// On a default kernel (tcp_migrate_req 0) the manager says at start that a
// draining worker's queued connections would be reset, and what to set;
// with the setting etc/sysctl.d asks for it says nothing.
func TestManagerWarnsOnADefaultKernel(t *testing.T) {
	const warning = "net.ipv4.tcp_migrate_req is 0"
	t.Run("default", func(t *testing.T) {
		testutil.Sysctl(t, testutil.DefaultKernel)
		s := testutil.Start(t, map[string]string{"server": "workers = 1"})
		if log := s.Log.String(); !strings.Contains(log, warning) || !strings.Contains(log, "60-megacomet.conf") {
			t.Errorf("no warning about tcp_migrate_req in:\n%s", log)
		}
	})
	t.Run("tuned", func(t *testing.T) {
		testutil.Sysctl(t, testutil.DefaultKernel, migrateKernel)
		s := testutil.Start(t, map[string]string{"server": "workers = 1"})
		if log := s.Log.String(); strings.Contains(log, warning) {
			t.Errorf("warned although tcp_migrate_req is 1:\n%s", log)
		}
	})
}
