// Package worker is the worker role: one process, one evio event loop on the
// shared client port (SO_REUSEPORT), pinned to a CPU by the manager.
//
// Data flows like this. Clients' bytes arrive in Data, are parsed by
// parseRequest (http.go) and routed by route.go: /ping is answered at once;
// a comet request (/lp, /ID.js, /stream, /sse, /ws via ws.go) subscribes the
// connection (subs.go): the id goes into an index (idindex.go), and a Join
// with the client's cursor goes to the manager, whose replay comes back
// before any live message (deliver.go). Deliver frames reach the loop
// through the control connection (bridge.go); each message is rendered once
// per transport and written from the loop straight to every socket it
// targets. What a slow socket does not take is queued per connection
// (bounded by comet.max_pending) and handed to evio only while evio's own
// buffer is empty (evio issue #72, evioconn.go). A timing wheel (wheel.go)
// drives request and poll timeouts, heartbeats spread over the interval, and
// lingering closes; drains hand clients over with a reconnect hint.
//
// The package owns client sockets and the loop's state. It may not block the
// loop, log per event, or allocate per event on the hot path (tests prove it
// with testing.AllocsPerRun). It knows the manager only through ipc frames.
package worker
