// Package check is the tests' poll: wait for a state, never for a time.
// It imports nothing of megacomet, so every package's tests can use it
// (internal/testutil imports the manager, which imports the worker).
package check

import (
	"testing"
	"time"
)

// For polls fn until it returns nil or wait passes, then fails the test
// with fn's last error.
func For(t testing.TB, wait time.Duration, fn func() error) {
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
