package manager

import (
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// usableCPUs lists the CPUs this process may run on (a cpuset or taskset
// may allow fewer than the machine has).
func usableCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		cpus := make([]int, runtime.NumCPU())
		for i := range cpus {
			cpus[i] = i
		}
		return cpus
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// startPinned starts cmd already bound to cpu (cpu < 0: unpinned). Setting
// the affinity of a running Go process afterwards would miss threads it has
// already made, so the affinity is set on a locked OS thread that then
// forks: the child inherits the mask from its first instruction. The thread
// is never unlocked, so it exits with the goroutine and its mask dies with it.
func startPinned(cmd *exec.Cmd, cpu int) error {
	if cpu < 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- err
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
