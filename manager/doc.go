// Package manager is the manager role: the process `systemctl start
// megacomet` runs. It reserves the client port, starts one worker process
// per slot (re-executing its own binary), pins each to a CPU, restarts the
// ones that die within a restart budget, and serves the stats socket and
// the HTTP API.
//
// Data flows like this. Each worker has one IPC socket (a socketpair made at
// spawn, fd 3 in the worker). readLink parses the worker's frames (Hello,
// Counts, Presence, Fatal) into proc fields under Manager.mu; frames to a
// worker are appended to its ipc.Outbox and written by the outbox's own
// goroutine, so nothing here blocks on a slow worker. The sampler reads
// /proc once a second, so Snapshot - and the stats socket - never do.
//
// Locks: Manager.mu guards slots and process fields; sampler.mu the latest
// samples. Neither is held while taking the other, nor across I/O (an
// Outbox's lock only guards appending to its buffer).
//
// The manager never touches a client socket: those belong to workers.
package manager
