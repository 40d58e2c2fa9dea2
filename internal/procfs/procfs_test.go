package procfs

import (
	"os"
	"os/exec"
	"testing"
)

func TestOwnFigures(t *testing.T) {
	pid := os.Getpid()
	if rss, pss := RSS(pid), PSS(pid); rss < 1<<20 || pss == 0 {
		t.Errorf("rss %d pss %d", rss, pss)
	}
	if SlabBytes() == 0 {
		t.Errorf("no slab")
	}
	if CPUTicks(pid) < 0 {
		t.Errorf("no CPU time")
	}
	if CPUTicks(1<<30) != -1 {
		t.Errorf("CPU time of a process that does not exist")
	}
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	found := false
	for _, c := range Children(pid) {
		found = found || c == cmd.Process.Pid
	}
	if !found {
		t.Errorf("child %d not among %v", cmd.Process.Pid, Children(pid))
	}
}
