// Package worker is the worker role: one process, one evio event loop on the
// shared client port (SO_REUSEPORT), pinned to a CPU by the manager.
//
// Data flows like this. Clients' bytes arrive in Data, are parsed by
// parseRequest (http.go) and answered from conn.go; every write goes from
// the loop straight to the socket, and what a slow socket does not take is
// queued per connection (bounded by comet.max_pending) and handed to evio
// only while evio's own buffer is empty (evio issue #72, see evioconn.go).
// Frames from the manager reach the loop through the control connection
// (bridge.go); frames to the manager are written by the loop to the IPC
// socket without blocking, batched per tick.
//
// The package owns client sockets and the loop's state. It may not block the
// loop, log per event, or allocate per event on the hot path. It knows the
// manager only through ipc frames.
package worker
