//go:build !race

package testutil

// Race reports whether tests run with the race detector; the binaries they
// start are then built with it too.
const Race = false
