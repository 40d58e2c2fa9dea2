// Package procfs reads the few /proc figures megacomet reports about
// processes and the kernel: memory (RSS, PSS), CPU time, children, slab.
package procfs

import (
	"os"
	"strconv"
	"strings"
)

// PSS is a process's proportional set size in bytes (0 if unknown): its
// resident memory with pages shared between processes (the binary's text)
// divided among them, so that it adds up over processes.
func PSS(pid int) uint64 { return kB(file(pid, "smaps_rollup"), "Pss:") }

// RSS is a process's resident set size in bytes (0 if unknown).
func RSS(pid int) uint64 { return kB(file(pid, "status"), "VmRSS:") }

// SlabBytes is the kernel's slab memory (Slab in /proc/meminfo): where its
// per-socket structures live.
func SlabBytes() uint64 {
	b, _ := os.ReadFile("/proc/meminfo")
	return kB(string(b), "Slab:")
}

// MemTotal is the machine's memory (MemTotal in /proc/meminfo).
func MemTotal() uint64 {
	b, _ := os.ReadFile("/proc/meminfo")
	return kB(string(b), "MemTotal:")
}

// CPUTicks is a process's user plus system time in clock ticks
// (USER_HZ, 100 a second on Linux), or -1 if it is gone.
func CPUTicks(pid int) int64 {
	f := statFields(pid)
	if len(f) < 15 {
		return -1
	}
	u, _ := strconv.ParseInt(f[13], 10, 64)
	s, _ := strconv.ParseInt(f[14], 10, 64)
	return u + s
}

// TicksPerSecond is USER_HZ, fixed at 100 on every Linux architecture.
const TicksPerSecond = 100

// Children lists the processes whose parent is pid.
func Children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(p); len(f) > 3 && f[3] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// statFields splits /proc/pid/stat into its fields, numbered as in
// proc(5) less one; the command name (which may hold spaces) is field 1.
func statFields(pid int) []string {
	s := file(pid, "stat")
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return append([]string{"", ""}, strings.Fields(s[i+1:])...)
}

func file(pid int, name string) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + name)
	return string(b)
}

// kB finds "key   123 kB" in s and returns the bytes.
func kB(s, key string) uint64 {
	for line := range strings.Lines(s) {
		if rest, ok := strings.CutPrefix(line, key); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}
