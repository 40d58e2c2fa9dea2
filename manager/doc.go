// Package manager is the manager role: the process `systemctl start
// megacomet` runs. It reserves the client port, starts one worker process
// per slot (re-executing its own binary), pins each to a CPU, restarts the
// ones that die within a restart budget, serves the stats socket and the
// HTTP API, and on SIGHUP hands everything over to its successor
// (handover.go).
//
// Data flows like this. Each worker has one IPC socket (a socketpair made at
// spawn, fd 3 in the worker). readLink parses the worker's frames (Hello,
// Counts, Presence, Fatal); frames to a worker are appended to its
// ipc.Outbox and written by the outbox's own goroutine, so nothing here
// blocks on a slow worker. Publishes go to the hub (hub.go), which numbers
// them, keeps them for replay (history.go) and routes each to the workers
// holding its targets (presence.go), one Deliver frame per worker per batch;
// presence frames from workers update the routing and get their replays
// from the same hub. On a cluster ([cluster] nats, cluster.go) a publish
// goes to the shared JetStream stream instead, and the hub takes every
// message, id assigned, from the node's reading of the stream
// (deliverStream): history, routing and replays are the same path. The sampler reads /proc once a second, so Snapshot -
// and the stats socket - never do.
//
// Lock order: Manager.mu (slots and process fields), then hub.mu (routing,
// history, ids), then an Outbox's lock (appending to its buffer only). The
// sampler's lock is never held with another. No lock is held across I/O.
//
// The manager never touches a client socket: those belong to workers.
package manager
