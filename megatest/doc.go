// Package megatest is the load generator, run on each load box as
// `megatest LETTER HOST [flags]` (flags and output: ../shared/CONTRACT.md;
// a step-by-step million-connection run: docs/C1M.md).
//
// Process model. The parent plans the run (target, source addresses, how
// many processes the open-file limit needs) and either runs one engine
// itself or re-executes its own binary as children, each with a contiguous
// range of ids and its share of -rate and -pub (fleet.go). Children report
// cumulative Snapshots as JSON lines; the aggregator adds them up; the
// runner prints progress, runs the broadcast rounds and writes the summary
// (run.go).
//
// Data flow in an engine (engine.go): one goroutine, one edge-triggered
// epoll set, every connection a 48-byte conn in one slice, named by its
// index. Connects are non-blocking, bound to a source address with
// IP_BIND_ADDRESS_NO_PORT. Bytes read go into one shared buffer and
// through the transport's incremental parser (httphead.go, sse.go,
// chunked.go, lp.go, ws.go: each parse(buf) (n, err) with errNeedMore);
// only a unit split across reads is kept per connection. Each message is
// read in place (msgjson.go): its id advances the connection's cursor,
// an id not above the cursor is a duplicate, and messages carrying this
// run's tag give a latency and are checked off at the ledger (ledger.go),
// which the publisher (publish.go) fills from the API's answers. Closed
// connections are reopened with since=<cursor>: at once when the server
// announced the close, with jittered exponential backoff otherwise. Each
// read that carries a heartbeat (on streams, also a message) is an arrival:
// the gap since the connection's previous one, less -heartbeat, is a
// heartbeat lateness sample (heartbeat.go).
//
// The package owns its processes and sockets. Nothing on the per-message
// path allocates or logs.
package megatest
