// Package megatest is the load generator run from each load box as
// `megatest LETTER HOST [flags]`. It is a placeholder until its own issue.
package megatest

import (
	"fmt"
	"os"
)

// Main runs megatest and returns the exit code.
func Main(args []string) int {
	fmt.Fprintln(os.Stderr, "megatest: not implemented yet")
	return 2
}
