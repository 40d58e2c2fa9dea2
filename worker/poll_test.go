package worker

import (
	"testing"
	"time"
)

// pollUntil polls fn until it returns nil or wait passes, then fails the
// test with fn's last error (the worker package cannot import
// internal/testutil: that imports the manager, which imports worker).
func pollUntil(t testing.TB, wait time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", wait, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
