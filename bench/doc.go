// Package bench runs megacomet and megatest together on this machine and
// reports what a million connections (make c1m), a hundred thousand (make
// bench) or a long hold (make soak) cost, as ratios against what the same
// run measured of the machine itself.
//
// Data flows like this. Run measures the kernel's loopback floor first
// (internal/loopback: CPU per connection of a bare write and read, over
// 5,000 connections), starts a manager with enough workers for N under the
// open-file limit, reads the server's memory and the kernel's slab with no
// client, then runs megatest as a child and samples the stats socket while
// it holds N: server memory at N, process RSS every -sample for a soak.
// When megatest has written its summary, Run stops the manager and makes a
// Report: megatest's figures (answered, unexpected closes, connect rate,
// broadcast rounds, /ping, heartbeat lateness) beside the server's and the
// floor, each target with its verdict. The report is JSON for machines and
// a table for people.
//
// The package owns no server code; it drives the binaries the way a user
// would, through their flags, the stats socket and megatest's summary.
// Timings here are measurements, never pass/fail checks of a test.
package bench
