package manager

import (
	"testing"
	"time"
)

func TestRestartBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	var crashes []time.Time
	var delays []time.Duration
	for i := 0; i < 12; i++ {
		var d time.Duration
		crashes, d = restartDelay(crashes, now)
		delays = append(delays, d)
		now = now.Add(time.Second)
	}
	want := []time.Duration{0, 0, 0, 0, 0, 1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("crash %d: delay %s, want %s (all: %v)", i+1, delays[i], want[i], delays)
		}
	}
	// A quiet minute restores the budget.
	crashes, d := restartDelay(crashes, now.Add(2*crashWindow))
	if d != 0 || len(crashes) != 1 {
		t.Errorf("after a quiet window: delay %s, %d crashes remembered", d, len(crashes))
	}
}
