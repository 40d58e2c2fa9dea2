package megatest

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
)

// Main runs megatest with args (without the program name) and returns the
// exit code: 0 done, 1 failed, 2 bad usage.
func Main(args []string) int {
	// Heap-profile sampling keeps stacks of sampled allocations: about a
	// megabyte in each of megatest's many processes, never read.
	runtime.MemProfileRate = 0
	o, err := parseArgs(args, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if o.Child {
		setLogger(slog.Int("child_first", o.First))
		return runChild(o)
	}
	return run(o, os.Stdout)
}

var (
	logMu sync.Mutex
	log   = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("role", "megatest", "pid", os.Getpid())
)

func logger() *slog.Logger {
	logMu.Lock()
	defer logMu.Unlock()
	return log
}

func setLogger(attrs ...any) {
	logMu.Lock()
	log = log.With(attrs...)
	logMu.Unlock()
}
